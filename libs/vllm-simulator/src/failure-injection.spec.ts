import type { SimulatedFailureKind } from "./options";
import { chatBody, rawRequest, ssePayloads } from "./raw-http-client";
import { VllmSimulator } from "./simulator";

const errorEvent = '{"error":{"message":"simulated engine failure mid-stream","type":"InternalServerError","param":null,"code":500}}';
const longAnswer = "one two three four five six seven eight nine ten";

describe("the simulator fails on demand, as real workers do", () => {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1, randomSeed: 1 });
  let url: string;

  beforeAll(async () => {
    ({ url } = await simulator.listen(0));
  });

  afterAll(async () => {
    await simulator.close();
  });

  afterEach(() => {
    simulator.injectFaults({});
    simulator.configure({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1, healthy: true });
  });

  const always = (kind: SimulatedFailureKind) => simulator.injectFaults({ failureRate: 1, kinds: [kind] });
  const chat = (timeoutMs = 2_000, body = chatBody(longAnswer, { stream_options: { include_usage: true } })) =>
    rawRequest(url, "/v1/chat/completions", { body, timeoutMs });

  it("http_500: an OpenAI error body before any stream", async () => {
    always("http_500");
    const exchange = await chat();
    expect(exchange).toMatchObject({ status: 500, ending: "end", headers: { "content-type": "application/json" } });
    expect(JSON.parse(exchange.body)).toEqual({ error: { message: "simulated worker failure", type: "InternalServerError", param: null, code: 500 } });
  });

  it("http_429: too many requests, with retry-after", async () => {
    always("http_429");
    const exchange = await chat();
    expect(exchange).toMatchObject({ status: 429, headers: { "retry-after": "1" } });
    expect(JSON.parse(exchange.body)).toMatchObject({ error: { type: "RateLimitError", code: 429 } });
  });

  it("mid_stream_error: HTTP 200, some tokens, vLLM's error event, then [DONE]", async () => {
    always("mid_stream_error");
    const exchange = await chat();
    expect(exchange).toMatchObject({ status: 200, ending: "end" });
    const payloads = ssePayloads(exchange.body);
    expect(payloads.slice(-2)).toEqual([errorEvent, "[DONE]"]);
    expect(payloads.slice(0, -2).every((payload) => (JSON.parse(payload) as { choices: Array<{ finish_reason: unknown }> }).choices[0]?.finish_reason === null)).toBe(true);
  });

  it("mid_stream_error without streaming: HTTP 500", async () => {
    always("mid_stream_error");
    const exchange = await chat(2_000, chatBody(longAnswer, { stream: false }));
    expect(exchange.status).toBe(500);
    expect(JSON.parse(exchange.body)).toMatchObject({ error: { type: "InternalServerError" } });
  });

  it("midStreamErrorAfterTokens: the error event after exactly that many tokens", async () => {
    simulator.injectFaults({ midStreamErrorAfterTokens: 2 });
    const payloads = ssePayloads((await chat()).body);
    const contents = payloads.slice(0, -2).map((payload) => (JSON.parse(payload) as { choices: Array<{ delta: { content: string } }> }).choices[0]?.delta.content);
    expect(contents).toEqual(["", "one", " two"]);
    expect(payloads.slice(-2)).toEqual([errorEvent, "[DONE]"]);
  });

  it("httpErrorStatus: every request answered with that status", async () => {
    simulator.injectFaults({ httpErrorStatus: 503 });
    const exchange = await chat();
    expect(exchange.status).toBe(503);
    expect(JSON.parse(exchange.body)).toMatchObject({ error: { code: 503 } });
  });

  it("hang: headers, then nothing until the client gives up, which counts as a disconnect", async () => {
    always("hang");
    const before = simulator.stats.disconnects;
    const disconnected = simulator.nextDisconnect(2_000);
    const exchange = await chat(150);
    expect(exchange).toMatchObject({ status: 200, body: "", ending: "timeout", headers: { "content-type": "text/event-stream; charset=utf-8" } });
    expect(await disconnected).toBe("disconnected");
    expect(simulator.stats).toMatchObject({ disconnects: before + 1, activeStreams: 0, running: 0 });
  });

  it("hang_before_headers: not even a status line", async () => {
    always("hang_before_headers");
    const disconnected = simulator.nextDisconnect(2_000);
    const exchange = await chat(150);
    expect(exchange).toMatchObject({ status: undefined, body: "", ending: "timeout" });
    expect(await disconnected).toBe("disconnected");
    expect(simulator.stats.activeStreams).toBe(0);
  });

  it("disconnect: the connection is cut mid-stream, without [DONE]; the simulator does not count it as the client's", async () => {
    always("disconnect");
    const before = simulator.stats.disconnects;
    const exchange = await chat();
    expect(exchange).toMatchObject({ status: 200, ending: "reset" });
    expect(exchange.body).not.toContain("[DONE]");
    expect(simulator.stats).toMatchObject({ disconnects: before, activeStreams: 0, running: 0 });
  });

  it("malformed_sse: one data line that is not JSON among valid chunks, then a normal end", async () => {
    always("malformed_sse");
    const exchange = await chat();
    expect(exchange).toMatchObject({ status: 200, ending: "end" });
    const payloads = ssePayloads(exchange.body);
    expect(payloads.at(-1)).toBe("[DONE]");
    const broken = payloads.slice(0, -1).filter((payload) => {
      try {
        JSON.parse(payload);
        return false;
      } catch {
        return true;
      }
    });
    expect(broken).toHaveLength(1);
    expect(broken[0]).toMatch(/^\{"id":"chatcmpl-/);
    // Every token is still there.
    const contents = payloads
      .filter((payload) => !broken.includes(payload) && payload !== "[DONE]")
      .map((payload) => (JSON.parse(payload) as { choices: Array<{ delta?: { content?: string } }> }).choices[0]?.delta?.content ?? "");
    expect(contents.join("")).toBe(longAnswer);
  });

  it("slow: inter-token latency multiplied by slowFactor", async () => {
    simulator.configure({ interTokenLatencyMs: 2 });
    const timed = async () => {
      const startedAt = performance.now();
      await chat();
      return performance.now() - startedAt;
    };
    const normal = await timed();
    simulator.injectFaults({ failureRate: 1, kinds: ["slow"], slowFactor: 25 });
    // Nine gaps of 50 ms instead of 2 ms.
    expect(await timed()).toBeGreaterThan(Math.max(150, 3 * normal));
  });

  it("fails about failureRate of the requests, the same ones again for the same seed", async () => {
    const statuses = async () => {
      const seen: Array<number | undefined> = [];
      for (let index = 0; index < 40; index += 1) seen.push((await chat(2_000, chatBody("hi"))).status);
      return seen;
    };
    simulator.configure({ randomSeed: 7 });
    simulator.injectFaults({ failureRate: 0.5, kinds: ["http_500", "http_429"] });
    const first = await statuses();
    expect(new Set(first)).toEqual(new Set([200, 429, 500]));
    const failed = first.filter((status) => status !== 200).length;
    expect(failed).toBeGreaterThan(8);
    expect(failed).toBeLessThan(32);

    simulator.configure({ randomSeed: 7 });
    expect(await statuses()).toEqual(first);
    simulator.configure({ randomSeed: 8 });
    expect(await statuses()).not.toEqual(first);
  });

  it("/health answers 503 when unhealthy, by option or by fault", async () => {
    const health = async () => (await rawRequest(url, "/health")).status;
    expect(await health()).toBe(200);
    simulator.configure({ healthy: false });
    expect(await health()).toBe(503);
    simulator.configure({ healthy: true });
    simulator.injectFaults({ unhealthy: true });
    expect(await health()).toBe(503);
    simulator.injectFaults({});
    expect(await health()).toBe(200);
  });

  it("refuses faults and options out of range, naming them", () => {
    expect(() => simulator.injectFaults({ failureRate: 1.5 })).toThrow(/^failureRate: must be between 0 and 1/);
    expect(() => simulator.injectFaults({ kinds: ["explode" as SimulatedFailureKind] })).toThrow(/^kinds: must each be one of/);
    expect(() => simulator.configure({ maxNumSeqs: 0 })).toThrow(/^maxNumSeqs: must be a positive integer \(got 0\)/);
    expect(() => simulator.configure({ jitterRatio: -0.1 })).toThrow(/^jitterRatio/);
    expect(() => new VllmSimulator({ toolCallStyle: "hermes" as "legacy" })).toThrow(/^toolCallStyle/);
  });
});
