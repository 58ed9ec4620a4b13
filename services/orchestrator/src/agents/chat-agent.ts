import { validateMessages, validateSampling, validateTools } from "@vlinders/chat-validation";
import {
  AgentEvent,
  AgentStatus,
  ChatEvent,
  modelAgentEventEncoder,
  FinishReason,
  InferenceServiceDefinition,
  withEncodedResponses,
  type ChatMessage,
  type RunAgentRequest,
  type Usage,
} from "@vlinders/proto";
import type { Client } from "nice-grpc";
import { linkSignals } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import type { AgentType } from "./agent-types";

/** The broker's InferenceService with Chat events left encoded: the agent relays them as they are. */
export const RelayInferenceServiceDefinition = withEncodedResponses(InferenceServiceDefinition, "chat");

export interface ChatAgentDependencies {
  inference: Client<typeof RelayInferenceServiceDefinition>;
}

const stopReasons: Record<FinishReason, string> = {
  [FinishReason.FINISH_REASON_UNSPECIFIED]: "completed",
  [FinishReason.FINISH_REASON_STOP]: "completed",
  [FinishReason.FINISH_REASON_LENGTH]: "max_tokens",
  [FinishReason.FINISH_REASON_TOOL_CALLS]: "tool_calls",
  [FinishReason.FINISH_REASON_ABORT]: "aborted_by_worker",
  [FinishReason.FINISH_REASON_CONTENT_FILTER]: "content_filter",
  [FinishReason.UNRECOGNIZED]: "completed",
};

/**
 * The `chat` agent: one model call over the conversation, streamed back as it is generated. Tools
 * named in the request belong to the caller: when the model calls them, the run ends with stop
 * reason "tool_calls" and the caller executes them. Events are yielded encoded: the model's events
 * go out framed as they came from the broker, never encoded again.
 */
export async function* runChatAgent(
  request: RunAgentRequest,
  runId: string,
  deps: ChatAgentDependencies,
  callSignal: AbortSignal,
  chatType: Pick<AgentType, "model" | "systemPrompt" | "budgets">,
): AsyncGenerator<Uint8Array, void, undefined> {
  validateMessages(request.history, "history");
  validateTools(request.tools);
  validateSampling(request.sampling);
  // The chat type of agents.yaml applies here too: its model, system prompt and timeout (an
  // override may lower the timeout, as for any run).
  const overrides = request.overrides;
  const model = request.model || chatType.model;
  const systemPrompt = overrides?.systemPrompt || chatType.systemPrompt;
  const timeoutMs = overrides?.timeoutMs ? Math.min(overrides.timeoutMs, chatType.budgets.timeoutMs) : chatType.budgets.timeoutMs;
  const messages: ChatMessage[] = systemPrompt === "" ? [...request.history] : [{ role: "system", content: systemPrompt, toolCalls: [], toolCallId: "", name: "" }, ...request.history];
  if (request.instruction !== "") {
    messages.push({ role: "user", content: request.instruction, toolCalls: [], toolCallId: "", name: "" });
  }
  if (request.history.length === 0 && request.instruction === "") {
    throw new ServerError(Status.INVALID_ARGUMENT, "history: a chat needs at least one message in history or an instruction");
  }
  // A timer cleared when the chat ends, not AbortSignal.timeout: that one's timer stays until it
  // fires, and a relay holding thousands of streams would keep thousands of them.
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), timeoutMs);
  const { signal, dispose } = linkSignals(callSignal, timeout.signal);
  // One generator, the relay inline: a generator more would be one more hop for every token.
  try {
    yield AgentEvent.encode({ runId, event: { $case: "runStarted", value: { agentType: "chat", model, parentRunId: "" } } }).finish();
    let response = "";
    let finishReason = FinishReason.FINISH_REASON_UNSPECIFIED;
    let usage: Usage | undefined;
    const events = deps.inference.chat(
      {
        model,
        messages,
        tools: request.tools,
        sampling: request.sampling,
        userId: request.userId,
        sessionId: request.sessionId,
        bypassCache: request.bypassCache,
      },
      { signal },
    );
    const encodeModelEvent = modelAgentEventEncoder(runId);
    for await (const encoded of events) {
      // Read for the run's own record (answer, finish reason, usage); relayed as it came.
      const event = ChatEvent.decode(encoded);
      switch (event.event?.$case) {
        case "contentDelta":
          response += event.event.value;
          break;
        case "finishReason":
          finishReason = event.event.value;
          break;
        case "usage":
          usage = event.event.value;
          break;
        default:
          break;
      }
      yield encodeModelEvent(encoded);
    }
    yield AgentEvent.encode({
      runId,
      event: {
        $case: "runFinished",
        value: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: stopReasons[finishReason], response, iterations: 1, usage },
      },
    }).finish();
  } catch (error: unknown) {
    if (timeout.signal.aborted && !callSignal.aborted) {
      throw new ServerError(Status.DEADLINE_EXCEEDED, `the chat reached its timeout of ${timeoutMs} ms (budgets.timeout_ms of agent type chat)`);
    }
    throw error;
  } finally {
    clearTimeout(timer);
    dispose();
  }
}
