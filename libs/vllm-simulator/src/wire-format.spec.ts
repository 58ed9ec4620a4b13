import { chatBody, rawRequest, ssePayloads } from "./raw-http-client";
import { VllmSimulator } from "./simulator";

interface Chunk {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: Array<{ index: number; delta: Record<string, unknown>; logprobs: null; finish_reason: string | null; stop_reason?: null }>;
  usage?: Record<string, unknown>;
}

const tools = [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }];

describe("the simulator speaks vLLM's wire format", () => {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1 });
  let url: string;

  beforeAll(async () => {
    ({ url } = await simulator.listen(0));
  });

  afterAll(async () => {
    await simulator.close();
  });

  afterEach(() => {
    simulator.injectFaults({});
    simulator.configure({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1, toolCallStyle: "current", interleaveToolCalls: false, script: undefined });
  });

  async function stream(body: Record<string, unknown>): Promise<{ payloads: string[]; chunks: Chunk[] }> {
    const exchange = await rawRequest(url, "/v1/chat/completions", { body });
    expect(exchange).toMatchObject({ status: 200, ending: "end", headers: { "content-type": "text/event-stream; charset=utf-8" } });
    const payloads = ssePayloads(exchange.body);
    expect(payloads.at(-1)).toBe("[DONE]");
    return { payloads, chunks: payloads.slice(0, -1).map((payload) => JSON.parse(payload) as Chunk) };
  }

  it("streams the echo: a role chunk, one chunk per token, the finish reason, the usage chunk, [DONE]", async () => {
    const { payloads, chunks } = await stream(chatBody("hello big world", { stream_options: { include_usage: true } }));
    const [first] = chunks;
    expect(first?.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
    const head = `{"id":"${first?.id}","object":"chat.completion.chunk","created":${first?.created},"model":"vlinders-sim-chat","choices":`;
    expect(payloads).toEqual([
      `${head}[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`,
      `${head}[{"index":0,"delta":{"content":"hello"},"logprobs":null,"finish_reason":null}]}`,
      `${head}[{"index":0,"delta":{"content":" big"},"logprobs":null,"finish_reason":null}]}`,
      `${head}[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}`,
      `${head}[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}`,
      `${head}[],"usage":{"prompt_tokens":3,"total_tokens":6,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}}`,
      "[DONE]",
    ]);
  });

  it("sends no usage chunk unless stream_options.include_usage asks for it", async () => {
    const { chunks } = await stream(chatBody("no usage please"));
    expect(chunks.some((chunk) => chunk.usage !== undefined)).toBe(false);
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe("stop");
  });

  it("ends with finish_reason length when max_tokens cuts the answer", async () => {
    const { chunks } = await stream(chatBody("one two three four", { max_tokens: 2, stream_options: { include_usage: true } }));
    expect(chunks.flatMap((chunk) => (typeof chunk.choices[0]?.delta.content === "string" ? [chunk.choices[0].delta.content] : [])).join("")).toBe("one two");
    expect(chunks.at(-2)?.choices[0]?.finish_reason).toBe("length");
    expect(chunks.at(-1)?.usage).toMatchObject({ completion_tokens: 2 });
  });

  it("ends with finish_reason abort, then usage and [DONE], when the engine aborts the request", async () => {
    simulator.injectFaults({ abortAfterTokens: 2 });
    const { chunks } = await stream(chatBody("alpha beta gamma delta", { stream_options: { include_usage: true } }));
    expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? null)).toEqual(["", "alpha", " beta", "", null]);
    expect(chunks.at(-2)?.choices[0]).toEqual({ index: 0, delta: { content: "" }, logprobs: null, finish_reason: "abort", stop_reason: null });
    expect(chunks.at(-1)?.usage).toEqual({ prompt_tokens: 4, total_tokens: 6, completion_tokens: 2, prompt_tokens_details: { cached_tokens: 0 } });
  });

  it("answers a non-streaming request with one chat.completion", async () => {
    const exchange = await rawRequest(url, "/v1/chat/completions", { body: chatBody("all at once", { stream: false }) });
    expect(exchange.status).toBe(200);
    expect(JSON.parse(exchange.body)).toEqual({
      id: expect.stringMatching(/^chatcmpl-/),
      object: "chat.completion",
      created: expect.any(Number),
      model: "vlinders-sim-chat",
      choices: [{ index: 0, message: { role: "assistant", content: "all at once", tool_calls: [] }, logprobs: null, finish_reason: "stop", stop_reason: null }],
      usage: { prompt_tokens: 3, total_tokens: 6, completion_tokens: 3, prompt_tokens_details: { cached_tokens: 0 } },
    });
  });

  it("refuses a prompt longer than the model's context with vLLM's 400", async () => {
    const exchange = await rawRequest(url, "/v1/chat/completions", { body: chatBody("a b c", { max_tokens: 40_000 }) });
    expect(exchange.status).toBe(400);
    expect(JSON.parse(exchange.body)).toEqual({
      error: { message: expect.stringContaining("maximum context length is 32768 tokens"), type: "BadRequestError", param: null, code: 400 },
    });
  });

  describe("tool calls", () => {
    const toolDeltas = (chunks: Chunk[]) => chunks.flatMap((chunk) => (chunk.choices[0]?.delta.tool_calls === undefined ? [] : [chunk.choices[0].delta]));
    const rawToolDeltas = (payloads: string[]) =>
      payloads.filter((payload) => payload.includes('"delta":{"tool_calls"')).map((payload) => payload.slice(payload.indexOf('"delta":') + 8, payload.indexOf(',"logprobs"')));

    it("streams a call in the current vLLM style: a header chunk, then chunks of only index and arguments", async () => {
      const { payloads, chunks } = await stream(chatBody('call get_weather {"city":"Paris","unit":"celsius"}', { tools }));
      const raw = rawToolDeltas(payloads);
      const id = /"id":"(chatcmpl-tool-[0-9a-f]{32})"/.exec(raw[0] ?? "")?.[1];
      expect(id).toBeDefined();
      expect(raw[0]).toBe(`{"tool_calls":[{"id":"${id}","type":"function","index":0,"function":{"name":"get_weather","arguments":""}}]}`);
      for (const delta of raw.slice(1)) expect(delta).toMatch(/^\{"tool_calls":\[\{"index":0,"function":\{"arguments":"(?:[^"\\]|\\.)*"\}\}\]\}$/);
      const fragments = toolDeltas(chunks)
        .slice(1)
        .map((delta) => (delta.tool_calls as Array<{ function: { arguments: string } }>)[0]?.function.arguments);
      expect(fragments.join("")).toBe('{"city":"Paris","unit":"celsius"}');
      expect(chunks.at(-1)?.choices[0]).toEqual({ index: 0, delta: { content: "" }, logprobs: null, finish_reason: "tool_calls", stop_reason: null });
    });

    it("streams a call in the legacy vLLM style: continuation chunks carry id null, type function and name null", async () => {
      simulator.configure({ toolCallStyle: "legacy" });
      const { payloads } = await stream(chatBody('call get_weather {"city":"Paris"}', { tools }));
      const raw = rawToolDeltas(payloads);
      expect(raw[0]).toMatch(/^\{"tool_calls":\[\{"id":"chatcmpl-tool-[0-9a-f]{32}","type":"function","index":0,"function":\{"name":"get_weather","arguments":""\}\}\]\}$/);
      expect(raw.slice(1)).toEqual([
        '{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"{\\"city\\":"}}]}',
        '{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"\\"Paris\\"}"}}]}',
      ]);
    });

    function accumulate(chunks: Chunk[]): { order: number[]; calls: Map<number, { id: string; name: string; arguments: string }> } {
      const order: number[] = [];
      const calls = new Map<number, { id: string; name: string; arguments: string }>();
      for (const delta of toolDeltas(chunks)) {
        for (const call of delta.tool_calls as Array<{ index: number; id?: string | null; function: { name?: string | null; arguments: string } }>) {
          order.push(call.index);
          const entry = calls.get(call.index) ?? { id: "", name: "", arguments: "" };
          if (typeof call.id === "string") entry.id = call.id;
          if (typeof call.function.name === "string") entry.name = call.function.name;
          entry.arguments += call.function.arguments;
          calls.set(call.index, entry);
        }
      }
      return { order, calls };
    }

    const parallel = 'call get_weather {"city":"Paris and Rome"} and call get_time {"tz":"CET"}\ncall ping';

    it("streams parallel calls with indexes 0, 1, 2, one after the other, each with its own id", async () => {
      const { chunks } = await stream(chatBody(parallel, { tools }));
      const { order, calls } = accumulate(chunks);
      expect(order).toEqual([...order].sort());
      expect([...calls.entries()]).toEqual([
        [0, { id: expect.stringMatching(/^chatcmpl-tool-/), name: "get_weather", arguments: '{"city":"Paris and Rome"}' }],
        [1, { id: expect.stringMatching(/^chatcmpl-tool-/), name: "get_time", arguments: '{"tz":"CET"}' }],
        [2, { id: expect.stringMatching(/^chatcmpl-tool-/), name: "ping", arguments: "{}" }],
      ]);
      expect(new Set([...calls.values()].map((call) => call.id)).size).toBe(3);
      expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe("tool_calls");
    });

    it("interleaves the fragments of parallel calls when told to, and they still add up by index", async () => {
      simulator.configure({ interleaveToolCalls: true, toolCallStyle: "legacy" });
      const { chunks } = await stream(chatBody(parallel, { tools }));
      const { order, calls } = accumulate(chunks);
      expect(order.slice(0, 6)).toEqual([0, 1, 2, 0, 1, 2]);
      expect([...calls.values()].map((call) => [call.name, call.arguments])).toEqual([
        ["get_weather", '{"city":"Paris and Rome"}'],
        ["get_time", '{"tz":"CET"}'],
        ["ping", "{}"],
      ]);
    });

    it("answers tool calls without streaming as message.tool_calls", async () => {
      const exchange = await rawRequest(url, "/v1/chat/completions", { body: chatBody(parallel, { tools, stream: false }) });
      const completion = JSON.parse(exchange.body) as { choices: Array<{ message: unknown; finish_reason: string }> };
      expect(completion.choices[0]).toMatchObject({
        finish_reason: "tool_calls",
        message: {
          role: "assistant",
          content: null,
          tool_calls: [
            { id: expect.stringMatching(/^chatcmpl-tool-/), type: "function", function: { name: "get_weather", arguments: '{"city":"Paris and Rome"}' } },
            { id: expect.stringMatching(/^chatcmpl-tool-/), type: "function", function: { name: "get_time", arguments: '{"tz":"CET"}' } },
            { id: expect.stringMatching(/^chatcmpl-tool-/), type: "function", function: { name: "ping", arguments: "{}" } },
          ],
        },
      });
    });

    it("echoes the instruction when the request offers no tools", async () => {
      const { chunks } = await stream(chatBody("call ping"));
      expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join("")).toBe("call ping");
    });
  });

  describe("prefix cache", () => {
    async function cachedTokens(messages: Array<{ role: string; content: string }>): Promise<unknown> {
      const { chunks } = await stream({ model: "vlinders-sim-chat", messages, stream: true, stream_options: { include_usage: true } });
      return chunks.at(-1)?.usage;
    }

    it("reports the tokens of the longest prefix of whole messages seen recently as cached_tokens", async () => {
      const system = { role: "system", content: "You answer in one short line." };
      const first = [system, { role: "user", content: "What is a butterfly?" }];
      expect(await cachedTokens(first)).toMatchObject({ prompt_tokens: 10, prompt_tokens_details: { cached_tokens: 0 } });
      const second = [...first, { role: "assistant", content: "An insect." }, { role: "user", content: "And a moth?" }];
      expect(await cachedTokens(second)).toMatchObject({ prompt_tokens: 15, prompt_tokens_details: { cached_tokens: 10 } });
      // All of it seen: vLLM computes the last prompt token again.
      expect(await cachedTokens(second)).toMatchObject({ prompt_tokens: 15, prompt_tokens_details: { cached_tokens: 14 } });
      expect(await cachedTokens([system, { role: "user", content: "Another question" }])).toMatchObject({ prompt_tokens_details: { cached_tokens: 6 } });
      expect(await cachedTokens([{ role: "system", content: "A different system prompt" }])).toMatchObject({ prompt_tokens_details: { cached_tokens: 0 } });
    });

    it("caches nothing when prefixCacheEntries is 0", async () => {
      simulator.configure({ prefixCacheEntries: 0 });
      try {
        const messages = [{ role: "user", content: "never remembered" }];
        await cachedTokens(messages);
        expect(await cachedTokens(messages)).toMatchObject({ prompt_tokens_details: { cached_tokens: 0 } });
      } finally {
        simulator.configure({ prefixCacheEntries: 10_000 });
      }
    });
  });

  describe("script replay", () => {
    // Captured from vLLM 0.6 with the hermes tool parser: the legacy continuation style.
    const script = [
      '{"id":"chatcmpl-9f1c2b","object":"chat.completion.chunk","created":1735000000,"model":"Qwen/Qwen2.5-Coder-7B-Instruct","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}',
      '{"id":"chatcmpl-9f1c2b","object":"chat.completion.chunk","created":1735000000,"model":"Qwen/Qwen2.5-Coder-7B-Instruct","choices":[{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-5f0c","type":"function","index":0,"function":{"name":"get_weather"}}]},"logprobs":null,"finish_reason":null}]}',
      '{"id":"chatcmpl-9f1c2b","object":"chat.completion.chunk","created":1735000000,"model":"Qwen/Qwen2.5-Coder-7B-Instruct","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"{\\"city\\": \\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}',
      '{"id":"chatcmpl-9f1c2b","object":"chat.completion.chunk","created":1735000000,"model":"Qwen/Qwen2.5-Coder-7B-Instruct","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"tool_calls","stop_reason":null}]}',
      "[DONE]",
    ];

    it("answers every chat completion with exactly the scripted payloads, byte for byte", async () => {
      simulator.configure({ script });
      for (const body of [chatBody("anything"), chatBody("anything else", { stream: false })]) {
        const exchange = await rawRequest(url, "/v1/chat/completions", { body });
        expect(exchange).toMatchObject({ status: 200, ending: "end" });
        expect(exchange.body).toBe(script.map((payload) => `data: ${payload}\n\n`).join(""));
      }
    });

    it("sends the payloads at the inter-token pace, one at a time", async () => {
      simulator.configure({ script, timeToFirstTokenMs: 1, interTokenLatencyMs: 40 });
      const arrivals: number[] = [];
      const exchange = await rawRequest(url, "/v1/chat/completions", { body: chatBody("x"), onData: () => arrivals.push(performance.now()) });
      expect(ssePayloads(exchange.body)).toEqual(script);
      expect(arrivals).toHaveLength(script.length);
      // Four gaps of 40 ms: well over 40 ms in all.
      expect((arrivals.at(-1) ?? 0) - (arrivals[0] ?? 0)).toBeGreaterThan(40);
    });
  });
});
