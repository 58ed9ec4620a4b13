import { FinishReason, InferenceServiceDefinition, type ChatEvent } from "@vlinders/proto";
import { createChannel, createClient, Metadata, Status, type Channel } from "nice-grpc";
import { readChat, userSays } from "./support/chat";
import { meshSecret, startInProcessMesh, type InProcessMesh } from "./support/in-process-mesh";

/**
 * Byte-for-byte streams in the shapes vLLM's OpenAI server sends, replayed by the simulator and
 * read through the whole mesh (gateway -> orchestrator -> broker) by a gRPC client.
 */
const id = "chatcmpl-9f1c2e7a4b8d4e06a1d3c5b7e9f0a2c4";
const head = `"id":"${id}","object":"chat.completion.chunk","created":1732612345,"model":"vlinders-sim-chat"`;
const chunk = (delta: string, finish: string | null = null) =>
  `{${head},"choices":[{"index":0,"delta":${delta},"logprobs":null,"finish_reason":${finish === null ? "null" : `"${finish}","stop_reason":null`}}]}`;
const usage = (prompt: number, completion: number, cached: number) =>
  `{${head},"choices":[],"usage":{"prompt_tokens":${prompt},"total_tokens":${prompt + completion},"completion_tokens":${completion},"prompt_tokens_details":{"cached_tokens":${cached}}}}`;

/** Current vLLM: continuation chunks carry only the index and the argument fragment. */
const parallelToolCallsCurrent = [
  chunk(`{"role":"assistant","content":""}`),
  chunk(`{"tool_calls":[{"id":"chatcmpl-tool-5a1e","type":"function","index":0,"function":{"name":"get_weather"}}]}`),
  chunk(`{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\": \\""}}]}`),
  chunk(`{"tool_calls":[{"index":0,"function":{"arguments":"Paris\\", \\"unit\\": \\"celsius\\"}"}}]}`),
  chunk(`{"tool_calls":[{"id":"chatcmpl-tool-77b2","type":"function","index":1,"function":{"name":"get_time"}}]}`),
  chunk(`{"tool_calls":[{"index":1,"function":{"arguments":"{\\"tz\\": "}}]}`),
  chunk(`{"tool_calls":[{"index":1,"function":{"arguments":"\\"Europe/Paris\\"}"}}]}`),
  chunk(`{"content":""}`, "tool_calls"),
  usage(312, 37, 256),
  "[DONE]",
];

/** Older vLLM: continuation chunks repeat "id":null,"type":"function" and a null name. */
const parallelToolCallsLegacy = [
  chunk(`{"role":"assistant"}`),
  chunk(`{"tool_calls":[{"index":0,"id":"chatcmpl-tool-5a1e","type":"function","function":{"name":"get_weather","arguments":""}}]}`),
  chunk(`{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"{\\"city\\": \\"Paris\\", "}}]}`),
  chunk(`{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"\\"unit\\": \\"celsius\\"}"}}]}`),
  chunk(`{"tool_calls":[{"index":1,"id":"chatcmpl-tool-77b2","type":"function","function":{"name":"get_time","arguments":""}}]}`),
  chunk(`{"tool_calls":[{"index":1,"id":null,"type":"function","function":{"name":null,"arguments":"{\\"tz\\": \\"Europe/Paris\\"}"}}]}`),
  chunk(`{}`, "tool_calls"),
  usage(298, 41, 0),
  "[DONE]",
];

const midStreamError = [
  chunk(`{"role":"assistant","content":""}`),
  chunk(`{"content":"Partial"}`),
  chunk(`{"content":" answer"}`),
  `{"error":{"object":"error","message":"CUDA out of memory while decoding","type":"InternalServerError","param":null,"code":500}}`,
  "[DONE]",
];

const slowText = [chunk(`{"role":"assistant","content":""}`), ...["Slow", " and", " steady", " tokens"].map((token) => chunk(`{"content":"${token}"}`)), chunk(`{"content":""}`, "length"), usage(12, 4, 0), "[DONE]"];

function toolCalls(events: ChatEvent[]): Array<{ id: string; name: string; arguments: unknown }> {
  const calls = new Map<number, { id: string; name: string; arguments: string }>();
  for (const event of events) {
    if (event.event?.$case !== "toolCallDelta") continue;
    const delta = event.event.value;
    const call = calls.get(delta.index) ?? { id: "", name: "", arguments: "" };
    call.id ||= delta.id;
    call.name ||= delta.name;
    call.arguments += delta.argumentsJsonDelta;
    calls.set(delta.index, call);
  }
  return [...calls.entries()].sort(([a], [b]) => a - b).map(([, call]) => ({ ...call, arguments: JSON.parse(call.arguments) as unknown }));
}

describe("real vLLM streams through the whole mesh", () => {
  let mesh: InProcessMesh;
  let channel: Channel;
  const client = () => createClient(InferenceServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": meshSecret }) } });
  const tools = [
    { name: "get_weather", description: "", parametersJsonSchema: '{"type":"object"}' },
    { name: "get_time", description: "", parametersJsonSchema: '{"type":"object"}' },
  ];

  beforeAll(async () => {
    mesh = await startInProcessMesh({ simulator: { timeToFirstTokenMs: 5, interTokenLatencyMs: 2 } });
    channel = createChannel(mesh.gatewayAddress);
  });

  afterAll(async () => {
    channel.close();
    await mesh.stop();
  });

  it.each([
    ["current", parallelToolCallsCurrent, { promptTokens: 312, completionTokens: 37, totalTokens: 349, cachedPromptTokens: 256 }],
    ["legacy", parallelToolCallsLegacy, { promptTokens: 298, completionTokens: 41, totalTokens: 339, cachedPromptTokens: 0 }],
  ] as const)("assembles parallel tool calls by index (%s vLLM style), with finish reason and usage", async (_style, script, expectedUsage) => {
    mesh.simulator.configure({ script });
    const outcome = await readChat(client().chat(userSays("weather and time in Paris?", { tools })));
    expect(outcome.error).toBeUndefined();
    expect(toolCalls(outcome.events)).toEqual([
      { id: "chatcmpl-tool-5a1e", name: "get_weather", arguments: { city: "Paris", unit: "celsius" } },
      { id: "chatcmpl-tool-77b2", name: "get_time", arguments: { tz: "Europe/Paris" } },
    ]);
    // Each call's id and name arrive once, with its first fragment.
    const deltas = outcome.events.flatMap((event) => (event.event?.$case === "toolCallDelta" ? [event.event.value] : []));
    expect(deltas.filter((delta) => delta.name !== "").map((delta) => delta.name)).toEqual(["get_weather", "get_time"]);
    expect(outcome.events.at(-2)?.event).toEqual({ $case: "finishReason", value: FinishReason.FINISH_REASON_TOOL_CALLS });
    expect(outcome.events.at(-1)?.event).toEqual({ $case: "usage", value: expectedUsage });
  });

  it("ends with INTERNAL carrying the worker's message after the text sent before a mid-stream error", async () => {
    mesh.simulator.configure({ script: midStreamError });
    const outcome = await readChat(client().chat(userSays("anything")));
    expect(outcome.text).toBe("Partial answer");
    expect(outcome.error).toEqual({ code: Status.INTERNAL, details: expect.stringContaining("CUDA out of memory while decoding") });
  });

  it("relays a slow stream token by token as it comes", async () => {
    mesh.simulator.configure({ script: slowText, interTokenLatencyMs: 80 });
    const arrivals: number[] = [];
    const outcome = await readChat(
      (async function* () {
        for await (const event of client().chat(userSays("slowly"))) {
          if (event.event?.$case === "contentDelta") arrivals.push(performance.now());
          yield event;
        }
      })(),
    );
    expect(outcome.text).toBe("Slow and steady tokens");
    expect(outcome.contentMessages).toBe(4);
    expect(outcome.events.find((event) => event.event?.$case === "finishReason")?.event).toEqual({
      $case: "finishReason",
      value: FinishReason.FINISH_REASON_LENGTH,
    });
    // Four tokens 80 ms apart arrive spread out, not in one burst at the end.
    expect((arrivals.at(-1) ?? 0) - (arrivals[0] ?? 0)).toBeGreaterThan(120);
  });
});
