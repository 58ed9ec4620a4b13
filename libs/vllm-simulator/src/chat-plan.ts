import { HttpError } from "./http";
import type { SimulatedModel, VllmSimulatorOptions } from "./options";
import { messagePrefixKeys } from "./prefix-cache";
import { answerFromToolResults, parseAgentScript, scriptStepIndex, type AgentStep, type ScriptMessage } from "./agent-script";
import { newToolCallId, toolCallDeltas, type EmittedToolCall } from "./tool-calls";
import { countTokens, splitIntoTokens } from "./tokens";

/** Everything a chat completion will send, decided when the request arrives. */
export interface ChatPlan {
  readonly model: SimulatedModel;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  /**
   * What each piece is: `text` pieces are tokens of content, `tool` pieces are `delta` objects as
   * JSON, `script` pieces are raw SSE payloads sent verbatim.
   */
  readonly kind: "text" | "tool" | "script";
  /** One piece per generated token (one chunk each). */
  readonly pieces: readonly string[];
  readonly toolCalls: readonly EmittedToolCall[];
  /** How it ends when nothing goes wrong. */
  readonly finishReason: "stop" | "length" | "tool_calls";
  readonly promptTokens: number;
  /** prefixTokens[k]: prompt tokens of messages 0..k. */
  readonly prefixTokens: readonly number[];
  /** prefixKeys[k]: the prefix cache's key for messages 0..k. */
  readonly prefixKeys: readonly string[];
}

export interface ChatCompletionBody {
  model?: unknown;
  messages?: unknown;
  stream?: unknown;
  stream_options?: { include_usage?: unknown } | null;
  max_tokens?: unknown;
  max_completion_tokens?: unknown;
  tools?: unknown;
}

interface ChatMessageBody extends ScriptMessage {
  content?: unknown;
}

/** The text of a message: a string, or the text parts of a list of content parts. */
function messageText(message: ChatMessageBody): string {
  if (typeof message.content === "string") return message.content;
  if (!Array.isArray(message.content)) return "";
  return message.content
    .map((part: unknown) => (typeof part === "object" && part !== null && typeof (part as { text?: unknown }).text === "string" ? (part as { text: string }).text : ""))
    .join("\n");
}

/** Reads and checks a chat completion request and decides the answer: echo, tool calls or script. */
export function planChatCompletion(body: ChatCompletionBody, model: SimulatedModel, options: VllmSimulatorOptions): ChatPlan {
  if (!Array.isArray(body.messages) || body.messages.length === 0) {
    throw new HttpError(400, "messages must be a non-empty list", "BadRequestError");
  }
  const messages = body.messages as ChatMessageBody[];
  const prefixTokens: number[] = [];
  let promptTokens = 0;
  for (const message of messages) {
    promptTokens += countTokens(messageText(message));
    prefixTokens.push(promptTokens);
  }
  const rawMaxTokens = body.max_tokens ?? body.max_completion_tokens;
  const maxTokens = typeof rawMaxTokens === "number" ? rawMaxTokens : undefined;
  if (promptTokens + (maxTokens ?? 0) > model.maxModelLen) {
    throw new HttpError(
      400,
      `This model's maximum context length is ${model.maxModelLen} tokens. However, you requested ${promptTokens + (maxTokens ?? 0)} tokens ` +
        `(${promptTokens} in the messages, ${maxTokens ?? 0} in the completion). Please reduce the length of the messages or completion.`,
      "BadRequestError",
    );
  }

  const common = {
    model,
    stream: body.stream === true,
    includeUsage: body.stream_options?.include_usage === true,
    promptTokens,
    prefixTokens,
    prefixKeys: messagePrefixKeys(messages),
  };
  if (options.script !== undefined) {
    return { ...common, stream: true, kind: "script", pieces: options.script, toolCalls: [], finishReason: "stop" };
  }

  const lastUserIndex = messages.findLastIndex((message) => message.role === "user");
  const lastUserText = lastUserIndex === -1 ? "" : messageText(messages[lastUserIndex] as ChatMessageBody);
  const afterInstruction = messages.slice(lastUserIndex + 1);
  // Without tools a real model cannot call any, so scripts only play when the request offers some.
  const script = Array.isArray(body.tools) && body.tools.length > 0 ? parseAgentScript(lastUserText) : undefined;
  const step = script === undefined ? undefined : scriptStep(script, afterInstruction);
  if (step?.kind === "call") {
    const toolCalls = step.calls.map((instruction) => ({ ...instruction, id: newToolCallId() }));
    const pieces = toolCallDeltas(toolCalls, options.toolCallStyle, options.interleaveToolCalls);
    return { ...common, kind: "tool", pieces, toolCalls, finishReason: "tool_calls" };
  }
  const answer = step === undefined ? lastUserText : (step.text ?? answerFromToolResults(afterInstruction, messageText));
  // Answers go through the same tokens, max_tokens and pacing as the echo: only the text differs.
  const tokens = splitIntoTokens(answer);
  const pieces = maxTokens === undefined ? tokens : tokens.slice(0, maxTokens);
  return { ...common, kind: "text", pieces, toolCalls: [], finishReason: pieces.length < tokens.length ? "length" : "stop" };
}

/**
 * The step to play: one per assistant tool-call turn already sent back. Past the last step, the
 * model answers from the results; an agent loop must always end, even when it runs more turns than
 * the script foresaw.
 */
function scriptStep(script: readonly AgentStep[], afterInstruction: readonly ChatMessageBody[]): AgentStep {
  return script[scriptStepIndex(afterInstruction)] ?? { kind: "answer", text: undefined };
}
