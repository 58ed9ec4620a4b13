import { FinishReason, type ChatEvent, type ChatResponse, type ToolCallDelta } from "@vlinders/proto";
import { assembleChatResponse, chatResponseToEvents, replayAsStream } from "./replay";
import { isCacheableResponse } from "./response-cache";

const model = "qwen-coder";
const content = (value: string): ChatEvent => ({ event: { $case: "contentDelta", value }, model });
const tool = (value: ToolCallDelta): ChatEvent => ({ event: { $case: "toolCallDelta", value }, model });
const finish = (value: FinishReason): ChatEvent => ({ event: { $case: "finishReason", value }, model });
const usage: ChatEvent = { event: { $case: "usage", value: { promptTokens: 120, completionTokens: 31, totalTokens: 151, cachedPromptTokens: 64 } }, model };

/** Two parallel tool calls whose fragments interleave, as vLLM streams them, after some text. */
function parallelToolCalls(): ChatEvent[] {
  return [
    content("Checking"),
    content(" both."),
    tool({ index: 0, id: "call_weather", name: "get_weather", argumentsJsonDelta: "" }),
    tool({ index: 1, id: "call_time", name: "get_time", argumentsJsonDelta: '{"tz":' }),
    tool({ index: 0, id: "", name: "", argumentsJsonDelta: '{"city":' }),
    tool({ index: 1, id: "", name: "", argumentsJsonDelta: '"Europe/Brussels"}' }),
    tool({ index: 0, id: "", name: "", argumentsJsonDelta: '"Ghent"}' }),
    finish(FinishReason.FINISH_REASON_TOOL_CALLS),
    usage,
  ];
}

async function collect(stream: AsyncIterable<ChatEvent>): Promise<ChatEvent[]> {
  const out: ChatEvent[] = [];
  for await (const event of stream) out.push(event);
  return out;
}

describe("replayAsStream", () => {
  it("yields the stored events in their order and chunks", async () => {
    expect(await collect(replayAsStream(parallelToolCalls()))).toEqual(parallelToolCalls());
  });

  it("stops when the reader stops", async () => {
    const seen: ChatEvent[] = [];
    for await (const event of replayAsStream(parallelToolCalls())) {
      seen.push(event);
      if (seen.length === 2) break;
    }
    expect(seen).toEqual(parallelToolCalls().slice(0, 2));
  });
});

describe("assembleChatResponse", () => {
  it("joins the content and assembles parallel tool calls by index", () => {
    expect(assembleChatResponse(parallelToolCalls(), model)).toEqual<ChatResponse>({
      model,
      message: {
        role: "assistant",
        content: "Checking both.",
        toolCalls: [
          { id: "call_weather", name: "get_weather", argumentsJson: '{"city":"Ghent"}' },
          { id: "call_time", name: "get_time", argumentsJson: '{"tz":"Europe/Brussels"}' },
        ],
        toolCallId: "",
        name: "",
      },
      finishReason: FinishReason.FINISH_REASON_TOOL_CALLS,
      usage: { promptTokens: 120, completionTokens: 31, totalTokens: 151, cachedPromptTokens: 64 },
    });
  });

  it("orders tool calls by index, not by arrival, and keeps the first id and name of each", () => {
    const response = assembleChatResponse(
      [
        tool({ index: 1, id: "call_b", name: "b", argumentsJsonDelta: "{}" }),
        tool({ index: 0, id: "call_a", name: "a", argumentsJsonDelta: "{" }),
        // A worker that repeats id and name on a continuation fragment.
        tool({ index: 0, id: "call_a", name: "a", argumentsJsonDelta: "}" }),
        finish(FinishReason.FINISH_REASON_TOOL_CALLS),
      ],
      model,
    );
    expect(response.message?.toolCalls).toEqual([
      { id: "call_a", name: "a", argumentsJson: "{}" },
      { id: "call_b", name: "b", argumentsJson: "{}" },
    ]);
    expect(response.message?.content).toBe("");
  });

  it("gives zero usage when the stream had none, like a Complete whose worker reported none", () => {
    const response = assembleChatResponse([content("hi"), finish(FinishReason.FINISH_REASON_STOP)], "other-model");
    expect(response).toMatchObject({ model: "other-model", finishReason: FinishReason.FINISH_REASON_STOP });
    expect(response.usage).toEqual({ promptTokens: 0, completionTokens: 0, totalTokens: 0, cachedPromptTokens: 0 });
  });
});

describe("chatResponseToEvents", () => {
  it("turns a Complete answer into a cacheable stream that assembles back to the same answer", () => {
    const response = assembleChatResponse(parallelToolCalls(), model);
    const events = chatResponseToEvents(response);
    expect(isCacheableResponse(events)).toBe(true);
    expect(assembleChatResponse(events, model)).toEqual(response);
    expect(events.map((event) => event.event?.$case)).toEqual(["contentDelta", "toolCallDelta", "toolCallDelta", "finishReason", "usage"]);
  });

  it("leaves out the content delta of an answer that only calls tools", () => {
    const events = chatResponseToEvents({
      model,
      message: { role: "assistant", content: "", toolCalls: [{ id: "c", name: "f", argumentsJson: "{}" }], toolCallId: "", name: "" },
      finishReason: FinishReason.FINISH_REASON_TOOL_CALLS,
      usage: undefined,
    });
    expect(events).toEqual([tool({ index: 0, id: "c", name: "f", argumentsJsonDelta: "{}" }), finish(FinishReason.FINISH_REASON_TOOL_CALLS)]);
  });
});
