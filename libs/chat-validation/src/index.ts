import type { ChatMessage, ChatRequest, SamplingParams, ToolDefinition } from "@vlinders/proto";
import { ServerError, Status } from "nice-grpc-common";

/** The roles OpenAI-compatible workers accept. */
export const chatRoles = ["system", "user", "assistant", "tool"] as const;
export type ChatRole = (typeof chatRoles)[number];

export function isChatRole(role: string): role is ChatRole {
  return (chatRoles as readonly string[]).includes(role);
}

/** OpenAI's rule for function names; vLLM's tool parsers rely on it too. */
const toolNamePattern = /^[A-Za-z0-9_-]{1,64}$/;

function invalid(field: string, problem: string): ServerError {
  return new ServerError(Status.INVALID_ARGUMENT, `${field}: ${problem}`);
}

function describe(value: string): string {
  return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
}

/**
 * Checks the messages of a conversation. `field` is the name the caller used for them
 * ("messages" in a ChatRequest, "history" in a RunAgentRequest).
 */
export function validateMessages(messages: readonly ChatMessage[], field = "messages"): void {
  messages.forEach((message, index) => {
    const at = `${field}[${index}]`;
    if (!isChatRole(message.role)) {
      throw invalid(`${at}.role`, `must be one of ${chatRoles.join(", ")} (got ${describe(message.role)})`);
    }
    if (message.role === "tool" && message.toolCallId === "") {
      throw invalid(`${at}.tool_call_id`, `is required for role "tool"`);
    }
    if (message.role !== "assistant" && message.toolCalls.length > 0) {
      throw invalid(`${at}.tool_calls`, `only assistant messages carry tool calls (role is "${message.role}")`);
    }
    message.toolCalls.forEach((call, callIndex) => {
      if (call.id === "") throw invalid(`${at}.tool_calls[${callIndex}].id`, "must not be empty");
      if (!toolNamePattern.test(call.name)) {
        throw invalid(`${at}.tool_calls[${callIndex}].name`, `must match ${toolNamePattern.source} (got ${describe(call.name)})`);
      }
    });
  });
}

export function validateTools(tools: readonly ToolDefinition[], field = "tools"): void {
  const seen = new Set<string>();
  tools.forEach((tool, index) => {
    const at = `${field}[${index}]`;
    if (!toolNamePattern.test(tool.name)) {
      throw invalid(`${at}.name`, `must match ${toolNamePattern.source} (got ${describe(tool.name)})`);
    }
    if (seen.has(tool.name)) throw invalid(`${at}.name`, `duplicates another tool named "${tool.name}"`);
    seen.add(tool.name);
    if (tool.parametersJsonSchema !== "") {
      let schema: unknown;
      try {
        schema = JSON.parse(tool.parametersJsonSchema);
      } catch {
        throw invalid(`${at}.parameters_json_schema`, "is not valid JSON");
      }
      if (typeof schema !== "object" || schema === null || Array.isArray(schema)) {
        throw invalid(`${at}.parameters_json_schema`, "must be a JSON object (a JSON schema)");
      }
    }
  });
}

export function validateSampling(sampling: SamplingParams | undefined, field = "sampling"): void {
  if (!sampling) return;
  const { maxTokens, temperature, topP, stop } = sampling;
  if (maxTokens !== undefined && maxTokens < 1) throw invalid(`${field}.max_tokens`, "must be at least 1 when set");
  if (temperature !== undefined && !(temperature >= 0 && temperature <= 2)) {
    throw invalid(`${field}.temperature`, `must be between 0 and 2 (got ${temperature})`);
  }
  if (topP !== undefined && !(topP > 0 && topP <= 1)) throw invalid(`${field}.top_p`, `must be in (0, 1] (got ${topP})`);
  if (stop.length > 16) throw invalid(`${field}.stop`, `at most 16 stop sequences (got ${stop.length})`);
  stop.forEach((sequence, index) => {
    if (sequence === "") throw invalid(`${field}.stop[${index}]`, "must not be empty");
  });
}

/** Throws INVALID_ARGUMENT naming the first offending field of a ChatRequest. */
export function validateChatRequest(request: ChatRequest): void {
  if (request.messages.length === 0) throw invalid("messages", "must not be empty");
  validateMessages(request.messages);
  validateTools(request.tools);
  validateSampling(request.sampling);
}
