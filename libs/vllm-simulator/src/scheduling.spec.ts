import { chatBody, metricSample, rawRequest, ssePayloads, type RawExchange } from "./raw-http-client";
import { VllmSimulator } from "./simulator";

async function waitFor(condition: () => boolean, what: string, timeoutMs = 3_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** A streamed chat completion that records when its first token and its end arrived. */
function timedChat(url: string, content: string, signal?: AbortSignal): Promise<RawExchange & { firstTokenAt: number; endedAt: number }> {
  let firstTokenAt = NaN;
  return rawRequest(url, "/v1/chat/completions", {
    body: chatBody(content),
    ...(signal ? { signal } : {}),
    onData: () => {
      if (Number.isNaN(firstTokenAt)) firstTokenAt = performance.now();
    },
  }).then((exchange) => ({ ...exchange, firstTokenAt, endedAt: performance.now() }));
}

const chat = 'model_name="vlinders-sim-chat"';

describe("the simulator schedules like vLLM", () => {
  let simulator: VllmSimulator;
  let url: string;

  async function start(options: ConstructorParameters<typeof VllmSimulator>[0]): Promise<void> {
    simulator = new VllmSimulator(options);
    ({ url } = await simulator.listen(0));
  }

  async function metrics(): Promise<string> {
    const response = await fetch(`${url}/metrics`);
    expect(response.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    return response.text();
  }

  afterEach(async () => {
    await simulator.close();
  });

  it("runs at most maxNumSeqs requests at once; the next waits in the queue and starts when one finishes", async () => {
    // The first two run for about 420 ms: time enough to look at the state on a loaded machine.
    await start({ maxNumSeqs: 2, timeToFirstTokenMs: 20, interTokenLatencyMs: 60 });
    const first = timedChat(url, "a b c d e f g h");
    const second = timedChat(url, "i j k l m n o p");
    await waitFor(() => simulator.stats.running === 2, "two run");
    const third = timedChat(url, "q r s");
    await waitFor(() => simulator.stats.queued === 1, "the third waits");

    const waiting = await metrics();
    expect(metricSample(waiting, `vllm:num_requests_running{${chat}}`)).toBe(2);
    expect(metricSample(waiting, `vllm:num_requests_waiting{${chat}}`)).toBe(1);
    const stats = (await (await fetch(`${url}/simulator/stats`)).json()) as Record<string, number>;
    expect(stats).toEqual({ requests: 3, disconnects: 0, activeStreams: 3, queued: 1, running: 2 });

    const [a, b, c] = await Promise.all([first, second, third]);
    for (const exchange of [a, b, c]) expect(ssePayloads(exchange.body).at(-1)).toBe("[DONE]");
    // The third's first token comes after one of the first two has ended.
    expect(c.firstTokenAt).toBeGreaterThan(Math.min(a.endedAt, b.endedAt));

    const idle = await metrics();
    expect(metricSample(idle, `vllm:num_requests_running{${chat}}`)).toBe(0);
    expect(metricSample(idle, `vllm:num_requests_waiting{${chat}}`)).toBe(0);
    expect(metricSample(idle, `vllm:kv_cache_usage_perc{${chat}}`)).toBe(0);
    expect(metricSample(idle, `vllm:request_queue_time_seconds_count{${chat}}`)).toBe(3);
    // Only the third waited, for about 400 ms: two queue times under 10 ms, one over.
    expect(metricSample(idle, `vllm:request_queue_time_seconds_bucket{${chat},le="0.01"}`)).toBe(2);
  });

  it("takes a client that hangs up while queued out of the queue, and counts the disconnect", async () => {
    await start({ maxNumSeqs: 1, timeToFirstTokenMs: 1, interTokenLatencyMs: 60 });
    const running = timedChat(url, "one two three four five six");
    await waitFor(() => simulator.stats.running === 1, "one runs");
    const controller = new AbortController();
    const queued = timedChat(url, "never generated", controller.signal);
    await waitFor(() => simulator.stats.queued === 1, "the second waits");

    const disconnected = simulator.nextDisconnect(2_000);
    controller.abort();
    expect(await disconnected).toBe("disconnected");
    expect(simulator.stats).toMatchObject({ queued: 0, running: 1, disconnects: 1, activeStreams: 1 });
    expect((await queued).body).toBe("");

    expect(ssePayloads((await running).body).at(-1)).toBe("[DONE]");
    // The abandoned request was never prefilled: only the first one's prompt counts.
    const after = await metrics();
    expect(metricSample(after, `vllm:prompt_tokens_total{${chat}}`)).toBe(6);
    expect(metricSample(after, `vllm:num_requests_waiting{${chat}}`)).toBe(0);
    // The queue is empty: the next request starts at once.
    const next = await timedChat(url, "right away");
    expect(ssePayloads(next.body).at(-1)).toBe("[DONE]");
    expect(simulator.stats).toMatchObject({ requests: 3, disconnects: 1, activeStreams: 0, queued: 0, running: 0 });
  });

  it("reports KV-cache usage from the tokens running requests hold, and counts tokens and outcomes", async () => {
    await start({ kvCacheCapacityTokens: 100, timeToFirstTokenMs: 1, interTokenLatencyMs: 50 });
    const prompt = "one two three four five six seven eight nine ten";
    const exchange = timedChat(url, prompt);
    await waitFor(() => simulator.stats.running === 1, "it runs");
    const during = await metrics();
    // 10 prompt tokens plus those generated so far, of 100.
    const usage = metricSample(during, `vllm:kv_cache_usage_perc{${chat}}`) ?? NaN;
    expect(usage).toBeGreaterThanOrEqual(0.1);
    expect(usage).toBeLessThanOrEqual(0.2);
    expect(metricSample(during, `vllm:kv_cache_usage_perc{model_name="vlinders-sim-embed"}`)).toBe(0);
    await exchange;

    const after = await metrics();
    expect(metricSample(after, `vllm:kv_cache_usage_perc{${chat}}`)).toBe(0);
    expect(metricSample(after, `vllm:prompt_tokens_total{${chat}}`)).toBe(10);
    expect(metricSample(after, `vllm:generation_tokens_total{${chat}}`)).toBe(10);
    expect(metricSample(after, `vllm:request_success_total{${chat},finished_reason="stop"}`)).toBe(1);
    expect(metricSample(after, `vllm:time_to_first_token_seconds_count{${chat}}`)).toBe(1);
    expect(metricSample(after, `vllm:inter_token_latency_seconds_count{${chat}}`)).toBe(9);
    expect(metricSample(after, `vllm:e2e_request_latency_seconds_count{${chat}}`)).toBe(1);
    expect(after).toContain("# TYPE vllm:time_to_first_token_seconds histogram");
    expect(metricSample(after, `vllm:time_to_first_token_seconds_bucket{${chat},le="+Inf"}`)).toBe(1);
  });

  it("admits a waiting request only when its prompt fits in the KV cache", async () => {
    await start({ kvCacheCapacityTokens: 15, maxNumSeqs: 8, timeToFirstTokenMs: 1, interTokenLatencyMs: 40 });
    const tenWords = "a b c d e f g h i j";
    const first = timedChat(url, tenWords);
    await waitFor(() => simulator.stats.running === 1, "the first runs");
    const second = timedChat(url, tenWords);
    await waitFor(() => simulator.stats.queued === 1, "the second waits for KV cache, though slots are free");
    expect(simulator.stats.running).toBe(1);
    const [a, b] = await Promise.all([first, second]);
    expect(b.firstTokenAt).toBeGreaterThan(a.endedAt - 5);
  });

  it("takes raised limits into account at once", async () => {
    await start({ maxNumSeqs: 1, timeToFirstTokenMs: 1, interTokenLatencyMs: 50 });
    const first = timedChat(url, "a b c d e f g h");
    await waitFor(() => simulator.stats.running === 1, "the first runs");
    const second = timedChat(url, "i j");
    await waitFor(() => simulator.stats.queued === 1, "the second waits");
    simulator.configure({ maxNumSeqs: 2 });
    expect(simulator.stats).toMatchObject({ queued: 0, running: 2 });
    await Promise.all([first, second]);
  });

  it("slows every request down as more run, with loadLatencyFactor", async () => {
    // Alone: 1 + 100 * 1/50 = 3 times the base latency; with 50 running: 101 times.
    await start({ maxNumSeqs: 50, loadLatencyFactor: 100, timeToFirstTokenMs: 0, interTokenLatencyMs: 1 });
    // The simulator's own inter-token latency histogram, not the client's clock: on a loaded
    // machine the client (in this same process) sees tokens late and bunched.
    let previous = { sum: 0, count: 0 };
    const meanInterTokenSeconds = async () => {
      const exposition = await metrics();
      const sum = metricSample(exposition, `vllm:inter_token_latency_seconds_sum{${chat}}`) ?? NaN;
      const count = metricSample(exposition, `vllm:inter_token_latency_seconds_count{${chat}}`) ?? NaN;
      const mean = (sum - previous.sum) / (count - previous.count);
      previous = { sum, count };
      return mean;
    };
    await timedChat(url, "a b c d e f");
    const alone = await meanInterTokenSeconds();
    await Promise.all(Array.from({ length: 50 }, () => timedChat(url, "a b c d e f")));
    const crowded = await meanInterTokenSeconds();
    // Expected about 30 times slower (about 100 ms against about 3 ms, plus timer granularity).
    expect(crowded).toBeGreaterThan(3 * alone);
  });

  it("answers the same as before when load growth and jitter are off: every gap is the inter-token latency", async () => {
    await start({ timeToFirstTokenMs: 1, interTokenLatencyMs: 20 });
    const arrivals: number[] = [];
    await rawRequest(url, "/v1/chat/completions", { body: chatBody("a b c d e f"), onData: () => arrivals.push(performance.now()) });
    const gaps = arrivals.slice(1).map((at, index) => at - (arrivals[index] ?? 0));
    // Six tokens, each in its own write: the role chunk rides with the first, the end with the last.
    expect(gaps).toHaveLength(5);
    // A late token is not allowed to delay the ones after it, so the total keeps the pace.
    const total = gaps.reduce((sum, gap) => sum + gap, 0);
    expect(total).toBeGreaterThan(80);
    expect(total).toBeLessThan(1_000);
    const median = [...gaps].sort((x, y) => x - y)[2] ?? 0;
    expect(median).toBeGreaterThan(10);
  });
});
