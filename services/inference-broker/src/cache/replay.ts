import { FinishReason, type ChatEvent, type ChatResponse, type ToolCall, type Usage } from "@vlinders/proto";

/**
 * A cached response as the stream a worker would have produced: the same events in the same
 * chunks. Nothing to wait for between events; a caller that stops reading just stops the loop.
 */
export async function* replayAsStream(events: readonly ChatEvent[]): AsyncGenerator<ChatEvent, void, undefined> {
  yield* events;
}

/**
 * The non-streaming answer (Complete) that a sequence of events amounts to: content deltas joined,
 * tool calls assembled by their index (in index order, ids and names from the fragments that carry
 * them, argument fragments appended), the finish reason, and the usage. A stream without a usage
 * event gives zero counts, as a Complete whose worker reported none does.
 */
export function assembleChatResponse(events: readonly ChatEvent[], model: string): ChatResponse {
  let content = "";
  const toolCalls = new Map<number, ToolCall>();
  let finishReason = FinishReason.FINISH_REASON_UNSPECIFIED;
  let usage: Usage = { promptTokens: 0, completionTokens: 0, totalTokens: 0, cachedPromptTokens: 0 };
  for (const { event } of events) {
    switch (event?.$case) {
      case "contentDelta":
        content += event.value;
        break;
      case "toolCallDelta": {
        const delta = event.value;
        let call = toolCalls.get(delta.index);
        if (!call) {
          call = { id: "", name: "", argumentsJson: "" };
          toolCalls.set(delta.index, call);
        }
        if (delta.id !== "" && call.id === "") call.id = delta.id;
        if (delta.name !== "" && call.name === "") call.name = delta.name;
        call.argumentsJson += delta.argumentsJsonDelta;
        break;
      }
      case "finishReason":
        finishReason = event.value;
        break;
      case "usage":
        usage = { ...event.value };
        break;
      default:
        break;
    }
  }
  return {
    model,
    message: {
      role: "assistant",
      content,
      toolCalls: [...toolCalls.entries()].sort(([a], [b]) => a - b).map(([, call]) => call),
      toolCallId: "",
      name: "",
    },
    finishReason,
    usage,
  };
}

/**
 * The events a ChatResponse amounts to, so that an answer to Complete can fill the cache too: the
 * content as one delta, each tool call as one whole fragment, the finish reason, the usage. A
 * stream replayed from it therefore comes in one chunk rather than the worker's.
 */
export function chatResponseToEvents(response: ChatResponse): ChatEvent[] {
  const model = response.model;
  const events: ChatEvent[] = [];
  const message = response.message;
  if (message && message.content !== "") events.push({ event: { $case: "contentDelta", value: message.content }, model });
  message?.toolCalls.forEach((call, index) => {
    events.push({ event: { $case: "toolCallDelta", value: { index, id: call.id, name: call.name, argumentsJsonDelta: call.argumentsJson } }, model });
  });
  events.push({ event: { $case: "finishReason", value: response.finishReason }, model });
  if (response.usage) events.push({ event: { $case: "usage", value: response.usage }, model });
  return events;
}
