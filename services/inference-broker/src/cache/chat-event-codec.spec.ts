import { FinishReason, type ChatEvent } from "@vlinders/proto";
import { decodeChatEvents, encodeChatEvents } from "./chat-event-codec";

function streamOf(model: string, tokens: number): ChatEvent[] {
  const events: ChatEvent[] = [];
  for (let i = 0; i < tokens; i += 1) events.push({ event: { $case: "contentDelta", value: ` word${i}` }, model });
  events.push({ event: { $case: "toolCallDelta", value: { index: 0, id: "call_1", name: "read_file", argumentsJsonDelta: '{"path":' } }, model });
  events.push({ event: { $case: "toolCallDelta", value: { index: 0, id: "", name: "", argumentsJsonDelta: '"a.ts"}' } }, model });
  events.push({ event: { $case: "finishReason", value: FinishReason.FINISH_REASON_TOOL_CALLS }, model });
  events.push({ event: { $case: "usage", value: { promptTokens: 10, completionTokens: tokens, totalTokens: 10 + tokens, cachedPromptTokens: 4 } }, model });
  return events;
}

describe("encodeChatEvents / decodeChatEvents", () => {
  it("gives back the events, in order, with their model", () => {
    const events = streamOf("Qwen/Qwen2.5-Coder-7B-Instruct", 5);
    expect(decodeChatEvents(encodeChatEvents(events))).toEqual(events);
  });

  it("keeps each event's own model when they differ, and an empty stream", () => {
    const events = [...streamOf("a", 1), ...streamOf("", 1), ...streamOf("b", 1)];
    expect(decodeChatEvents(encodeChatEvents(events))).toEqual(events);
    expect(decodeChatEvents(encodeChatEvents([]))).toEqual([]);
  });

  it("keeps text that is not ASCII and long deltas (multi-byte lengths)", () => {
    const events: ChatEvent[] = [
      { event: { $case: "contentDelta", value: "vlinders 🦋 — ".repeat(2000) }, model: "m" },
      { event: { $case: "finishReason", value: FinishReason.FINISH_REASON_STOP }, model: "m" },
    ];
    expect(decodeChatEvents(encodeChatEvents(events))).toEqual(events);
  });

  it("is several times smaller than JSON for a streamed answer", () => {
    const events = streamOf("Qwen/Qwen2.5-Coder-7B-Instruct", 200);
    const bytes = encodeChatEvents(events);
    expect(bytes.length * 3).toBeLessThan(Buffer.byteLength(JSON.stringify(events)));
    // The model is written once, not once per event.
    expect(Buffer.from(bytes).toString("latin1").split("Qwen2.5-Coder").length - 1).toBe(1);
  });

  it.each<[string, Uint8Array]>([
    ["an unknown format byte", Uint8Array.from([9, 0])],
    ["a length past the end", Uint8Array.from([1, 0, 50, 1, 2])],
    ["a length that never ends", Uint8Array.from([1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
    ["no bytes at all", new Uint8Array()],
  ])("refuses %s", (_, bytes) => {
    expect(() => decodeChatEvents(bytes)).toThrow(/cached response/);
  });
});
