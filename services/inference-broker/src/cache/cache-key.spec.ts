import { ChatRequest, type ChatMessage, type SamplingParams } from "@vlinders/proto";
import { canonicalFloat32, canonicalRequest, isDeterministicRequest, responseCacheKey } from "./cache-key";

function message(role: string, content: string, extra: Partial<ChatMessage> = {}): ChatMessage {
  return { role, content, toolCalls: [], toolCallId: "", name: "", ...extra };
}

function sampling(extra: Partial<SamplingParams> = {}): SamplingParams {
  return { maxTokens: 256, temperature: 0, topP: undefined, stop: ["\n\n"], seed: undefined, ...extra };
}

/** A conversation with every part the key covers: system prompt, tool call, tool answer, tools, sampling. */
function baseRequest(): ChatRequest {
  return {
    model: "coder",
    messages: [
      message("system", "You are terse."),
      message("user", "Weather in Ghent?", { name: "ann" }),
      message("assistant", "", { toolCalls: [{ id: "call_1", name: "get_weather", argumentsJson: '{"city":"Ghent"}' }] }),
      message("tool", '{"temperature_c":14}', { toolCallId: "call_1" }),
    ],
    tools: [{ name: "get_weather", description: "Current weather", parametersJsonSchema: '{"type":"object","properties":{"city":{"type":"string"}}}' }],
    sampling: sampling(),
    userId: "user-1",
    sessionId: "session-1",
    bypassCache: false,
  };
}

function keyOf(change: (request: ChatRequest) => void, modelId = "qwen-coder-7b"): string | undefined {
  const request = baseRequest();
  change(request);
  return responseCacheKey(request, modelId);
}

const baseKey = keyOf(() => undefined);

describe("responseCacheKey", () => {
  it("is inference: followed by a sha256 in hex, the same for the same request every time", () => {
    expect(baseKey).toMatch(/^inference:[0-9a-f]{64}$/);
    expect(keyOf(() => undefined)).toBe(baseKey);
  });

  it.each<[string, (request: ChatRequest) => void]>([
    ["another user", (request) => (request.userId = "user-2")],
    ["another session", (request) => (request.sessionId = "session-2")],
    ["no user and no session", (request) => Object.assign(request, { userId: "", sessionId: "" })],
    ["another alias of the same model", (request) => (request.model = "qwen-coder-7b")],
    // Built field by field in another order, as another client or decoder might.
    [
      "the same fields in another property order",
      (request) => {
        const reordered = baseRequest();
        request.sampling = { seed: undefined, stop: ["\n\n"], topP: undefined, temperature: 0, maxTokens: 256 };
        request.messages = reordered.messages.map((m) => ({ name: m.name, toolCallId: m.toolCallId, toolCalls: m.toolCalls, content: m.content, role: m.role }));
      },
    ],
  ])("stays the same for %s", (_, change) => {
    expect(keyOf(change)).toBe(baseKey);
  });

  const semanticChanges: Array<[string, (request: ChatRequest) => void, string?]> = [
    ["the resolved model", () => undefined, "qwen-coder-14b"],
    ["a message's content", (request) => (request.messages[1]!.content = "Weather in Gent?")],
    ["a message's role", (request) => (request.messages[0]!.role = "user")],
    ["a message's name", (request) => (request.messages[1]!.name = "bob")],
    ["the order of messages", (request) => request.messages.splice(0, 2, request.messages[1]!, request.messages[0]!)],
    ["one more message", (request) => request.messages.push(message("user", "And tomorrow?"))],
    ["text moved from one message to the next", (request) => {
      request.messages[0]!.content = "You are terse.Weather";
      request.messages[1]!.content = " in Ghent?";
    }],
    ["a tool call's arguments", (request) => (request.messages[2]!.toolCalls[0]!.argumentsJson = '{"city":"Gent"}')],
    ["a tool call's id", (request) => (request.messages[2]!.toolCalls[0]!.id = "call_2")],
    ["a tool call's name", (request) => (request.messages[2]!.toolCalls[0]!.name = "get_forecast")],
    ["the tool call id a tool message answers", (request) => (request.messages[3]!.toolCallId = "call_9")],
    ["a tool's description", (request) => (request.tools[0]!.description = "Weather now")],
    ["a tool's schema", (request) => (request.tools[0]!.parametersJsonSchema = '{"type":"object"}')],
    ["no tools", (request) => (request.tools = [])],
    ["max_tokens", (request) => (request.sampling!.maxTokens = 512)],
    ["max_tokens unset", (request) => (request.sampling!.maxTokens = undefined)],
    ["top_p", (request) => (request.sampling!.topP = 0.9)],
    ["a stop sequence", (request) => (request.sampling!.stop = ["END"])],
    ["no stop sequence", (request) => (request.sampling!.stop = [])],
    ["a seed", (request) => (request.sampling!.seed = 7)],
    ["temperature 0 replaced by a seed", (request) => Object.assign(request.sampling!, { temperature: undefined, seed: 7 })],
  ];

  // Objects, not rows: a row shorter than the callback's parameters would make jest pass `done`.
  it.each(semanticChanges.map(([name, change, modelId]) => ({ name, change, modelId })))("changes with $name", ({ change, modelId }) => {
    expect(keyOf(change, modelId)).toMatch(/^inference:[0-9a-f]{64}$/);
    expect(keyOf(change, modelId)).not.toBe(baseKey);
  });

  it("gives every semantic change a key of its own", () => {
    const keys = semanticChanges.map(([, change, modelId]) => keyOf(change, modelId));
    expect(new Set([baseKey, ...keys]).size).toBe(semanticChanges.length + 1);
  });

  it.each<[string, SamplingParams | undefined]>([
    ["no sampling parameters (the worker's default temperature)", undefined],
    ["an unset temperature", sampling({ temperature: undefined })],
    ["temperature 0.2 without a seed", sampling({ temperature: 0.2 })],
  ])("is undefined for a request that samples: %s", (_, params) => {
    expect(keyOf((request) => (request.sampling = params))).toBeUndefined();
  });

  it.each<[string, SamplingParams]>([
    ["temperature 0", sampling({ temperature: 0 })],
    ["a seed with temperature 1", sampling({ temperature: 1, seed: 42 })],
    ["seed 0, which is set", sampling({ temperature: undefined, seed: 0 })],
  ])("is a key for a deterministic request: %s", (_, params) => {
    expect(keyOf((request) => (request.sampling = params))).toMatch(/^inference:/);
  });

  it("is undefined when the request asks to bypass the cache", () => {
    expect(keyOf((request) => (request.bypassCache = true))).toBeUndefined();
  });

  it("is the same for a request built in process and the same request decoded from the wire", () => {
    const request = baseRequest();
    request.sampling = sampling({ temperature: 0.7, topP: 0.95, seed: 3 });
    const decoded = ChatRequest.decode(ChatRequest.encode(request).finish());
    // protobuf floats are 32-bit: what arrives is not the number that was set.
    expect(decoded.sampling?.temperature).not.toBe(0.7);
    expect(responseCacheKey(decoded, "m")).toBe(responseCacheKey(request, "m"));
  });
});

describe("canonicalRequest", () => {
  it("writes the fields in a fixed order, leaving out user, session and bypass", () => {
    const request: ChatRequest = {
      model: "alias",
      messages: [message("user", "hi")],
      tools: [],
      sampling: { maxTokens: undefined, temperature: 0.7, topP: undefined, stop: [], seed: 3 },
      userId: "u",
      sessionId: "s",
      bypassCache: false,
    };
    expect(canonicalRequest(request, "model-a")).toBe(
      '{"v":1,"model":"model-a","messages":[{"role":"user","content":"hi","tool_calls":[],"tool_call_id":"","name":""}],' +
        '"tools":[],"sampling":{"max_tokens":null,"temperature":"0.7","top_p":null,"stop":[],"seed":3}}',
    );
  });

  it("treats a missing sampling message like an empty one", () => {
    const request = baseRequest();
    request.sampling = undefined;
    const empty = baseRequest();
    empty.sampling = { maxTokens: undefined, temperature: undefined, topP: undefined, stop: [], seed: undefined };
    expect(canonicalRequest(request, "m")).toBe(canonicalRequest(empty, "m"));
  });
});

describe("canonicalFloat32", () => {
  it.each([
    [0, "0"],
    [-0, "0"],
    [1, "1"],
    [0.7, "0.7"],
    [Math.fround(0.7), "0.7"],
    [0.95, "0.95"],
    [Math.fround(0.95), "0.95"],
    [1.5, "1.5"],
    [0.1 + 0.2, "0.3"],
    [Math.fround(1 / 3), "0.33333334"],
    [1e-7, "1e-7"],
  ])("%p -> %s", (value, shown) => {
    expect(canonicalFloat32(value)).toBe(shown);
  });

  it("keeps two floats that differ as float32 apart", () => {
    expect(canonicalFloat32(0.7)).not.toBe(canonicalFloat32(0.70001));
  });
});

describe("isDeterministicRequest", () => {
  it("follows temperature 0 and the seed, not top_p", () => {
    const request = baseRequest();
    request.sampling = sampling({ temperature: 0, topP: 0.5 });
    expect(isDeterministicRequest(request)).toBe(true);
    request.sampling = sampling({ temperature: 0.01 });
    expect(isDeterministicRequest(request)).toBe(false);
  });
});
