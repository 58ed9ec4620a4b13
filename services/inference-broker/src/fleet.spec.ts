import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  InferenceAdminServiceDefinition,
  InferenceServiceDefinition,
  WorkerHealth,
  type ChatEvent,
  type ChatRequest,
} from "@vlinders/proto";
import { createInProcessRuntime, loadConfig, type ServiceRuntime } from "@vlinders/service-runtime";
import { VllmSimulator, type VllmSimulatorOptions } from "@vlinders/vllm-simulator";
import { isAbortError } from "abort-controller-x";
import { createChannel, createClient, Metadata, Status, type Channel } from "nice-grpc";
import { ClientError } from "nice-grpc-common";
import { brokerConfigSchema } from "./config";
import { createInferenceBroker, type InferenceBroker } from "./inference-broker";

/**
 * The broker in front of a small fleet of simulated vLLM workers: failover, hung and dying
 * workers, affinity, run-time changes of the pool, the cache and quotas.
 */
const internalSecret = "fleet-spec-secret-0123456789";
const metadata = Metadata({ "x-internal-auth": internalSecret });
const database = { DATABASE_URL: process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test" };

const ask = (content: string, extra: Partial<ChatRequest> = {}): ChatRequest => ({
  model: "",
  messages: [{ role: "user", content, toolCalls: [], toolCallId: "", name: "" }],
  tools: [],
  sampling: undefined,
  userId: "",
  sessionId: "",
  bypassCache: false,
  ...extra,
});

interface Outcome {
  events: ChatEvent[];
  text: string;
  error?: ClientError;
}

async function read(stream: AsyncIterable<ChatEvent>, onEvent?: (event: ChatEvent) => void): Promise<Outcome> {
  const events: ChatEvent[] = [];
  try {
    for await (const event of stream) {
      events.push(event);
      onEvent?.(event);
    }
  } catch (error: unknown) {
    // Only `within` aborts calls here: the broker let the call run past the test's deadline.
    if (isAbortError(error)) throw new Error(`no answer in time: the call was given up after ${events.length} events`, { cause: error });
    if (!(error instanceof ClientError)) throw error;
    return { events, text: textOf(events), error };
  }
  return { events, text: textOf(events) };
}

const textOf = (events: ChatEvent[]) => events.map((event) => (event.event?.$case === "contentDelta" ? event.event.value : "")).join("");

interface Fleet {
  simulators: Record<string, VllmSimulator>;
  runtime: ServiceRuntime;
  broker: InferenceBroker;
  channel: Channel;
  inference: ReturnType<typeof createClient<typeof InferenceServiceDefinition>>;
  admin: ReturnType<typeof createClient<typeof InferenceAdminServiceDefinition>>;
  directory: string;
  stop(): Promise<void>;
}

async function startFleet(
  workers: Record<string, Partial<VllmSimulatorOptions>>,
  options: { env?: NodeJS.ProcessEnv; modelExtras?: string; providers?: string; workerExtras?: Record<string, string> } = {},
): Promise<Fleet> {
  const simulators: Record<string, VllmSimulator> = {};
  const lines = ["workers:"];
  for (const [id, simulatorOptions] of Object.entries(workers)) {
    const simulator = new VllmSimulator({ timeToFirstTokenMs: 5, interTokenLatencyMs: 2, ...simulatorOptions });
    simulators[id] = simulator;
    const { url } = await simulator.listen(0);
    lines.push(`  - id: ${id}`, `    url: ${url}`, ...(options.workerExtras?.[id] ? [options.workerExtras[id]] : []));
  }
  lines.push("models:", "  - id: vlinders-sim-chat", `    workers: [${Object.keys(workers).join(", ")}]`, ...(options.modelExtras ? [options.modelExtras] : []));
  if (options.providers) lines.unshift(options.providers);
  const directory = await mkdtemp(join(tmpdir(), "vlinders-fleet-"));
  const modelsPath = join(directory, "models.yaml");
  await writeFile(modelsPath, lines.join("\n") + "\n");
  const runtime = createInProcessRuntime("inference-broker", { internalSecret });
  const broker = await createInferenceBroker(
    loadConfig(brokerConfigSchema, {
      ...database,
      MODELS_CONFIG: modelsPath,
      HEALTH_PROBE_INTERVAL_MS: "100",
      HEALTH_PROBE_TIMEOUT_MS: "500",
      EJECT_COOLDOWN_MS: "300",
      ...options.env,
    }),
    runtime,
  );
  const { grpcPort } = await broker.host.listen({ host: "127.0.0.1", grpcPort: 0 });
  const channel = createChannel(`127.0.0.1:${grpcPort}`);
  return {
    simulators,
    runtime,
    broker,
    channel,
    directory,
    inference: createClient(InferenceServiceDefinition, channel, { "*": { metadata } }),
    admin: createClient(InferenceAdminServiceDefinition, channel, { "*": { metadata } }),
    stop: async () => {
      channel.close();
      await broker.host.shutdown();
      await Promise.all(Object.values(simulators).map((simulator) => simulator.close()));
      await rm(directory, { recursive: true, force: true });
    },
  };
}

const requestsOf = (fleet: Fleet) => Object.fromEntries(Object.entries(fleet.simulators).map(([id, simulator]) => [id, simulator.stats.requests]));

/** Call options that give up on a call after `ms`: a broker that hangs fails the test instead of stalling it. */
const within = (ms: number) => ({ signal: AbortSignal.timeout(ms) });

/** Polls until `condition` holds; fails naming `what` once `timeoutMs` have passed. */
async function waitFor(condition: () => boolean, what: string, timeoutMs = 2_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`gave up after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * A model routed round-robin: the requests alternate between the workers whatever their prompts.
 * Fault tests need it, since with prefix affinity (the default) requests with the same prompt all
 * go to one worker, and idle workers tie on load in favour of the first: a faulty worker would
 * then never be called, or be called by every request.
 */
const roundRobin = "    routing: { policy: round-robin }";

describe("failover before the first token, never after", () => {
  let fleet: Fleet;
  beforeEach(async () => {
    fleet = await startFleet({ a: {}, b: {} }, { env: { EJECT_AFTER_FAILURES: "1000" } });
  });
  afterEach(async () => fleet.stop());

  it("answers from another worker when one fails with HTTP 500 before streaming", async () => {
    fleet.simulators.a!.injectFaults({ httpErrorStatus: 500 });
    const outcomes = await Promise.all(Array.from({ length: 6 }, (_, index) => read(fleet.inference.chat(ask(`request number ${index}`)))));
    expect(outcomes.map((outcome) => outcome.error)).toEqual(Array(6).fill(undefined));
    expect(outcomes.map((outcome) => outcome.text)).toEqual(Array.from({ length: 6 }, (_, index) => `request number ${index}`));
    expect(fleet.simulators.a!.stats.requests).toBeGreaterThan(0);
  });

  it("answers RESOURCE_EXHAUSTED, not UNAVAILABLE, when every worker answers busy (HTTP 429)", async () => {
    fleet.simulators.a!.injectFaults({ httpErrorStatus: 429 });
    fleet.simulators.b!.injectFaults({ httpErrorStatus: 429 });
    let retryAfter: string | undefined;
    const outcome = await read(fleet.inference.chat(ask("is anybody free"), { onTrailer: (trailer) => (retryAfter = trailer.get("retry-after-ms")) }));
    expect(retryAfter).toBe("1000");
    expect(outcome.error).toMatchObject({ code: Status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/^model "vlinders-sim-chat": every worker is busy \(last: worker [ab] answered HTTP 429/) });
    expect(fleet.simulators.a!.stats.requests + fleet.simulators.b!.stats.requests).toBe(2);
  });

  it("ends a stream that already has text with the worker's failure instead of repeating text elsewhere", async () => {
    const chunk = (delta: string) => `{"id":"x","object":"chat.completion.chunk","created":1,"model":"vlinders-sim-chat","choices":[{"index":0,"delta":${delta},"finish_reason":null}]}`;
    // Two tokens, then a line that is not JSON: what a broken proxy in front of a worker can send.
    const script = [chunk(`{"role":"assistant","content":""}`), chunk(`{"content":"one"}`), chunk(`{"content":" two"}`), "{not json", "[DONE]"];
    fleet.simulators.a!.configure({ script });
    fleet.simulators.b!.configure({ script });
    const outcome = await read(fleet.inference.chat(ask("one two three")));
    expect(outcome.error?.code).toBe(Status.INTERNAL);
    expect(outcome.error?.details).toContain("not JSON");
    expect(outcome.text).toBe("one two");
    expect(fleet.simulators.a!.stats.requests + fleet.simulators.b!.stats.requests).toBe(1);
  });
});

describe("a hung worker", () => {
  /**
   * Sends four requests with the same prompt, round-robin over a hung worker a and a healthy b, and
   * checks that each answer came from b while a really got half the requests and was let go.
   */
  async function expectFailoverFrom(kind: "hang" | "hang_before_headers", env: NodeJS.ProcessEnv, expectedError: string): Promise<void> {
    const fleet = await startFleet({ a: {}, b: {} }, { modelExtras: roundRobin, env: { EJECT_AFTER_FAILURES: "1000", ...env } });
    try {
      const [a, b] = [fleet.simulators.a!, fleet.simulators.b!];
      a.injectFaults({ failureRate: 1, kinds: [kind] });
      const outcomes = await Promise.all(Array.from({ length: 4 }, () => read(fleet.inference.chat(ask("still answered"), within(5_000)))));
      expect(outcomes.map((outcome) => [outcome.error?.details, outcome.text])).toEqual(Array(4).fill([undefined, "still answered"]));
      expect([a.stats.requests, b.stats.requests]).toEqual([2, 4]);
      // The broker gave up on a's two requests and closed their connections: nothing is left hanging there.
      await waitFor(() => a.stats.disconnects === 2 && a.stats.activeStreams === 0, "the broker to hang up on a's two hung requests");
      const { workers } = await fleet.admin.getPoolStatus({});
      // The failure names the wait that ran out, so the timeout under test is the one that fired.
      expect(workers.find((worker) => worker.id === "a")).toMatchObject({ consecutiveFailures: 2, lastError: expectedError });
    } finally {
      await fleet.stop();
    }
  }

  it("moves requests on when the worker sends its headers and then nothing: the first-token timeout", async () => {
    await expectFailoverFrom("hang", { WORKER_FIRST_TOKEN_TIMEOUT_MS: "300" }, "worker a did not send the first token within 300 ms");
  });

  it("moves requests on when the worker never sends headers: the connect timeout", async () => {
    // The first-token timeout is far away: only the connect timeout can end the wait in time.
    await expectFailoverFrom(
      "hang_before_headers",
      { WORKER_CONNECT_TIMEOUT_MS: "300", WORKER_FIRST_TOKEN_TIMEOUT_MS: "60000" },
      "worker a did not send the answer within 300 ms",
    );
  });
});

describe("a worker killed mid-load", () => {
  it("ends the streams it was generating with UNAVAILABLE, moves those still waiting for a first token, and is ejected", async () => {
    const fleet = await startFleet({ a: { interTokenLatencyMs: 40 }, b: { interTokenLatencyMs: 40 } }, { modelExtras: roundRobin, env: { EJECT_AFTER_FAILURES: "1" } });
    const [a, b] = [fleet.simulators.a!, fleet.simulators.b!];
    try {
      // Twenty tokens 40 ms apart: the streams run for most of a second.
      const prompt = "a b c d e f g h i j k l m n o p q r s t";
      let withText = 0;
      const streaming = Array.from({ length: 6 }, (_, index) => {
        let counted = false;
        return read(fleet.inference.chat(ask(prompt, { sessionId: `s${index}` }), within(5_000)), () => {
          if (!counted) withText += 1;
          counted = true;
        });
      });
      await waitFor(() => withText === 6, "text on all six streams");
      expect([a.stats.activeStreams, b.stats.activeStreams]).toEqual([3, 3]);
      // a's three streams stop after their next token (due within 40 ms), so they are mid-stream when
      // a dies; and what is sent to a from now on gets no first token before it dies.
      a.configure({ interTokenLatencyMs: 60_000, timeToFirstTokenMs: 60_000 });
      const waiting = Array.from({ length: 4 }, (_, index) => read(fleet.inference.chat(ask(`waiting ${index}`), within(5_000))));
      await waitFor(() => a.stats.requests === 5 && a.stats.activeStreams === 5, "two more requests waiting on a for their first token");
      // b's three streams have most of their tokens still to come.
      expect(b.stats.activeStreams).toBeGreaterThanOrEqual(3);
      await a.close();

      const streamed = await Promise.all(streaming);
      const broken = streamed.filter((outcome) => outcome.error);
      expect(broken).toHaveLength(3);
      for (const outcome of broken) {
        expect(outcome.error?.code).toBe(Status.UNAVAILABLE);
        expect(outcome.error?.details).toMatch(/^worker a broke off the stream/);
        expect(outcome.text).not.toBe("");
        expect(prompt.startsWith(outcome.text) && outcome.text !== prompt).toBe(true);
      }
      // b's streams ran on while a died.
      expect(streamed.filter((outcome) => !outcome.error).map((outcome) => outcome.text)).toEqual([prompt, prompt, prompt]);
      // Nothing had reached the clients of the two requests waiting on a: they were answered by b.
      const waited = await Promise.all(waiting);
      expect(waited.map((outcome) => [outcome.error?.details, outcome.text])).toEqual(Array.from({ length: 4 }, (_, index) => [undefined, `waiting ${index}`]));
      expect([a.stats.requests, b.stats.requests]).toEqual([5, 3 + 2 + 2]);

      const after = await Promise.all(Array.from({ length: 4 }, () => read(fleet.inference.chat(ask("after the crash"), within(5_000)))));
      expect(after.map((outcome) => [outcome.error?.code, outcome.text])).toEqual(Array(4).fill([undefined, "after the crash"]));
      expect(b.stats.requests).toBe(7 + 4);
      const { workers } = await fleet.admin.getPoolStatus({});
      expect(workers.find((worker) => worker.id === "a")).toMatchObject({ health: WorkerHealth.WORKER_HEALTH_EJECTED, lastError: expect.any(String) });
    } finally {
      await fleet.stop();
    }
  });
});

describe("affinity", () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await startFleet({ a: {}, b: {}, c: {} });
  });
  afterAll(async () => fleet.stop());

  it("keeps a session on one worker", async () => {
    const before = requestsOf(fleet);
    for (let turn = 0; turn < 6; turn += 1) await read(fleet.inference.chat(ask(`turn ${turn} of a long talk`, { sessionId: "session-42" })));
    const after = requestsOf(fleet);
    const used = Object.keys(after).filter((id) => after[id] !== before[id]);
    expect(used).toHaveLength(1);
  });

  it("sends requests that share a system prompt to one worker, and different system prompts to different workers", async () => {
    // Sequential requests on idle workers: without prefix affinity they tie on load, and the tie goes
    // to the first worker listed. Only prefix affinity spreads the system prompts over the workers
    // and keeps each one on its worker, whatever the order in which the workers are listed.
    const systems = Array.from({ length: 6 }, (_, index) => `You review the pull requests of team ${index} of a large TypeScript code base.`);
    const workerPerSystem = async (target: Fleet): Promise<Record<string, string>> => {
      const chosen: Record<string, string> = {};
      for (const system of systems) {
        const used = new Set<string>();
        for (const question of ["what does this change do?", "is it tested?", "can it be merged?"]) {
          const before = requestsOf(target);
          const request = ask(question);
          request.messages.unshift({ ...request.messages[0]!, role: "system", content: system });
          const outcome = await read(target.inference.chat(request, within(5_000)));
          expect([outcome.error, outcome.text]).toEqual([undefined, question]);
          const after = requestsOf(target);
          for (const id of Object.keys(after)) if (after[id] !== before[id]) used.add(id);
        }
        expect([...used]).toHaveLength(1);
        chosen[system] = [...used][0]!;
      }
      return chosen;
    };
    const chosen = await workerPerSystem(fleet);
    expect(new Set(Object.values(chosen)).size).toBeGreaterThan(1);
    // The worker follows from the prefix and the worker's id, not from where the worker is listed:
    // a broker replica listing the same workers in another order sends each prefix to the same one.
    const reversed = await startFleet({ c: {}, b: {}, a: {} });
    try {
      expect(await workerPerSystem(reversed)).toEqual(chosen);
    } finally {
      await reversed.stop();
    }
  });
});

describe("changing the pool at run time", () => {
  it("drains a worker without failing its stream, removes it, and adds one that is discovered", async () => {
    const fleet = await startFleet({ a: { interTokenLatencyMs: 30 }, b: {} }, { modelExtras: "    routing: { policy: round-robin }" });
    const extra = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1 });
    try {
      // Round-robin starts on a or b; find a stream that lands on a.
      let onA: Promise<Outcome> | undefined;
      for (let attempt = 0; attempt < 4 && !onA; attempt += 1) {
        const before = fleet.simulators.a!.stats.requests;
        const stream = read(fleet.inference.chat(ask("a slow answer that keeps going for a while")));
        await new Promise((resolve) => setTimeout(resolve, 20));
        if (fleet.simulators.a!.stats.requests > before) onA = stream;
        else await stream;
      }
      expect(onA).toBeDefined();
      await expect(fleet.admin.drainWorker({ id: "a" })).resolves.toMatchObject({ health: WorkerHealth.WORKER_HEALTH_DRAINING, inFlight: 1 });
      const before = fleet.simulators.a!.stats.requests;
      await Promise.all(Array.from({ length: 3 }, () => read(fleet.inference.chat(ask("goes to b")))));
      expect(fleet.simulators.a!.stats.requests).toBe(before);
      const removal = fleet.admin.removeWorker({ id: "a", force: false });
      expect(await onA).toMatchObject({ text: "a slow answer that keeps going for a while" });
      await removal;
      const { url } = await extra.listen(0);
      await expect(fleet.admin.addWorker({ id: "c", url, models: [], maxNumSeqs: 8, provider: "" })).resolves.toMatchObject({
        id: "c",
        models: ["vlinders-sim-chat", "vlinders-sim-embed"],
      });
      const { workers } = await fleet.admin.getPoolStatus({});
      expect(workers.map((worker) => worker.id)).toEqual(["b", "c"]);
      await expect(fleet.admin.drainWorker({ id: "nope" })).rejects.toMatchObject({ code: Status.NOT_FOUND });
      await expect(fleet.admin.addWorker({ id: "d", url: "ftp://x", models: ["m"], maxNumSeqs: 0, provider: "" })).rejects.toMatchObject({
        code: Status.INVALID_ARGUMENT,
        details: expect.stringContaining("url"),
      });
    } finally {
      await fleet.stop();
      await extra.close();
    }
  });

  it("keeps a worker an operator added, and leaves out one they removed, across reloads of the models file", async () => {
    const fleet = await startFleet({ a: {}, b: {} });
    const extra = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1 });
    try {
      const { url } = await extra.listen(0);
      const urlOfA = (await fleet.admin.getPoolStatus({})).workers.find((worker) => worker.id === "a")!.url;
      await fleet.admin.addWorker({ id: "c", url, models: ["vlinders-sim-chat"], maxNumSeqs: 8, provider: "" });
      await fleet.admin.removeWorker({ id: "a", force: false });
      // The models file still lists a and b, and not c.
      await expect(fleet.admin.reloadModels({})).resolves.toMatchObject({ workersAdded: [], workersRemoved: [] });
      const { workers } = await fleet.admin.getPoolStatus({});
      expect(workers.map((worker) => worker.id)).toEqual(["b", "c"]);
      // An operator who adds a back gets it back, and it stays through the next reload too.
      await fleet.admin.addWorker({ id: "a", url: urlOfA, models: ["vlinders-sim-chat"], maxNumSeqs: 8, provider: "" });
      await fleet.admin.reloadModels({});
      expect((await fleet.admin.getPoolStatus({})).workers.map((worker) => worker.id)).toEqual(["a", "b", "c"]);
    } finally {
      await fleet.stop();
      await extra.close();
    }
  });

  it("reports each worker's health, load, heartbeat and models", async () => {
    const fleet = await startFleet({ a: {} });
    try {
      const { workers } = await fleet.admin.getPoolStatus({});
      expect(workers).toEqual([
        expect.objectContaining({
          id: "a",
          health: WorkerHealth.WORKER_HEALTH_HEALTHY,
          models: ["vlinders-sim-chat"],
          inFlight: 0,
          metricsStale: false,
          lastHeartbeat: expect.any(Date),
        }),
      ]);
    } finally {
      await fleet.stop();
    }
  });
});

describe("the response cache", () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await startFleet({ a: {} });
  });
  afterAll(async () => fleet.stop());

  it("answers a repeated deterministic request without the worker, replaying the same stream", async () => {
    const request = ask("cached words come back", { sampling: { temperature: 0, stop: [] } });
    const first = await read(fleet.inference.chat(request));
    const before = fleet.simulators.a!.stats.requests;
    const second = await read(fleet.inference.chat(request));
    expect(fleet.simulators.a!.stats.requests).toBe(before);
    expect(second.events).toEqual(first.events);
    await expect(fleet.inference.complete(request)).resolves.toMatchObject({ message: { content: "cached words come back" } });
    expect(fleet.simulators.a!.stats.requests).toBe(before);
  });

  it("goes to the worker when the request bypasses the cache or samples", async () => {
    const before = fleet.simulators.a!.stats.requests;
    await read(fleet.inference.chat(ask("fresh", { sampling: { temperature: 0, stop: [] }, bypassCache: true })));
    await read(fleet.inference.chat(ask("fresh", { sampling: { temperature: 0, stop: [] }, bypassCache: true })));
    await read(fleet.inference.chat(ask("sampled")));
    await read(fleet.inference.chat(ask("sampled")));
    expect(fleet.simulators.a!.stats.requests).toBe(before + 4);
  });
});

describe("quotas", () => {
  it("refuses with RESOURCE_EXHAUSTED and a retry hint once a model's requests per minute are spent", async () => {
    const fleet = await startFleet({ a: {} }, { modelExtras: "    rpm: 2" });
    try {
      await read(fleet.inference.chat(ask("one")));
      await read(fleet.inference.chat(ask("two")));
      let retryAfter: string | undefined;
      const third = await read(
        fleet.inference.chat(ask("three"), {
          onTrailer: (trailer) => {
            retryAfter = trailer.get("retry-after-ms");
          },
        }),
      );
      expect(third.error?.code).toBe(Status.RESOURCE_EXHAUSTED);
      expect(third.error?.details).toMatch(/model:vlinders-sim-chat is over its requests per minute; retry after \d+ ms/);
      expect(Number(retryAfter)).toBeGreaterThan(0);
      expect(Number(retryAfter)).toBeLessThanOrEqual(60_000);
      expect(fleet.simulators.a!.stats.requests).toBe(2);
    } finally {
      await fleet.stop();
    }
  });

  it("counts a request that fails over once against its model's requests per minute", async () => {
    const fleet = await startFleet({ a: {}, b: {} }, { modelExtras: `    rpm: 2\n${roundRobin}`, env: { EJECT_AFTER_FAILURES: "1000" } });
    try {
      fleet.simulators.a!.injectFaults({ httpErrorStatus: 500 });
      // Round-robin starts on a: the first request fails over to b, the second goes to b directly.
      expect(await read(fleet.inference.chat(ask("first")))).toMatchObject({ text: "first" });
      expect(fleet.simulators.a!.stats.requests).toBe(1);
      expect(await read(fleet.inference.chat(ask("second")))).toMatchObject({ text: "second" });
      const third = await read(fleet.inference.chat(ask("third")));
      expect(third.error).toMatchObject({ code: Status.RESOURCE_EXHAUSTED });
    } finally {
      await fleet.stop();
    }
  });

  it("holds embeddings to the model's quota too, and counts them in the metrics", async () => {
    const fleet = await startFleet({ a: {} }, { modelExtras: "  - id: vlinders-sim-embed\n    workers: [a]\n    rpm: 1" });
    try {
      const embed = () => fleet.inference.embed({ model: "vlinders-sim-embed", inputs: ["butterflies carry tokens"], userId: "" });
      await expect(embed()).resolves.toMatchObject({ model: "vlinders-sim-embed", usage: { promptTokens: expect.any(Number) } });
      let retryAfter: string | undefined;
      await expect(
        fleet.inference.embed({ model: "vlinders-sim-embed", inputs: ["again"], userId: "" }, { onTrailer: (trailer) => (retryAfter = trailer.get("retry-after-ms")) }),
      ).rejects.toMatchObject({ code: Status.RESOURCE_EXHAUSTED, details: expect.stringContaining("model:vlinders-sim-embed is over its requests per minute") });
      expect(Number(retryAfter)).toBeGreaterThan(0);
      const text = await fleet.runtime.metricsRegistry.metrics();
      expect(text).toMatch(/broker_requests_total\{[^}]*model="vlinders-sim-embed"[^}]*method="embed"[^}]*status="OK"[^}]*\} 1/);
      expect(text).toMatch(/broker_requests_total\{[^}]*model="vlinders-sim-embed"[^}]*method="embed"[^}]*status="RESOURCE_EXHAUSTED"[^}]*\} 1/);
      expect(text).toMatch(/broker_tokens_total\{[^}]*model="vlinders-sim-embed"[^}]*kind="prompt"[^}]*\} [1-9]/);
    } finally {
      await fleet.stop();
    }
  });
});

describe("metrics", () => {
  it("records time to first token, added latency, tokens and requests by model and status", async () => {
    const fleet = await startFleet({ a: {} });
    try {
      await read(fleet.inference.chat(ask("measure me please")));
      await read(fleet.inference.chat(ask("x", { model: "nope" })));
      const text = await fleet.runtime.metricsRegistry.metrics();
      // A request refused before its model was known is counted, under a label callers cannot grow.
      expect(text).toMatch(/broker_requests_total\{[^}]*model="\(unresolved\)"[^}]*method="chat"[^}]*status="NOT_FOUND"[^}]*\} 1/);
      await fleet.inference.complete(ask("complete me"));
      expect(await fleet.runtime.metricsRegistry.metrics()).toMatch(/broker_requests_total\{[^}]*model="vlinders-sim-chat"[^}]*method="complete"[^}]*status="OK"[^}]*\} 1/);
      expect(text).toMatch(/broker_time_to_first_token_seconds_count\{[^}]*model="vlinders-sim-chat"[^}]*\} 1/);
      expect(text).toMatch(/broker_added_latency_seconds_count\{[^}]*model="vlinders-sim-chat"[^}]*\} 1/);
      expect(text).toMatch(/broker_inter_token_latency_seconds_count\{[^}]*\} [1-9]/);
      expect(text).toMatch(/broker_tokens_total\{[^}]*model="vlinders-sim-chat"[^}]*kind="completion"[^}]*\} 3/);
      expect(text).toMatch(/broker_requests_total\{[^}]*model="vlinders-sim-chat"[^}]*status="OK"[^}]*\} 1/);
      expect(text).toMatch(/broker_worker_healthy\{[^}]*worker="a"[^}]*\} 1/);
      expect(text).toMatch(/grpc_server_handled_total\{[^}]*grpc_method="Chat"[^}]*grpc_code="NOT_FOUND"[^}]*\} 1/);
    } finally {
      await fleet.stop();
    }
  });
});

describe("usage of a stream cut short", () => {
  it("counts the tokens sent before the cut (the worker's usage never came) instead of none", async () => {
    const fleet = await startFleet({ a: { interTokenLatencyMs: 200 } });
    try {
      const controller = new AbortController();
      let received = 0;
      const cut = (async () => {
        for await (const event of fleet.inference.chat(ask("one two three four five six seven eight nine ten"), { signal: controller.signal })) {
          if (event.event?.$case === "contentDelta" && (received += 1) === 3) controller.abort();
        }
      })().catch((error: unknown) => error);
      expect(await cut).toMatchObject({ name: "AbortError" });
      const completion = /broker_tokens_total\{[^}]*model="vlinders-sim-chat"[^}]*kind="completion"[^}]*\} (\d+)/;
      const prompt = /broker_tokens_total\{[^}]*model="vlinders-sim-chat"[^}]*kind="prompt"[^}]*\} (\d+)/;
      // Accounted as the broker's call ends, which follows the cancel.
      let text = "";
      for (let waited = 0; waited < 3_000 && !completion.test(text); waited += 20) {
        text = await fleet.runtime.metricsRegistry.metrics();
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      expect(Number(completion.exec(text)?.[1])).toBeGreaterThanOrEqual(3);
      expect(Number(completion.exec(text)?.[1])).toBeLessThan(10);
      expect(Number(prompt.exec(text)?.[1])).toBeGreaterThan(0);
    } finally {
      await fleet.stop();
    }
  });
});

describe("provider keys", () => {
  const masterKey = Buffer.alloc(32, 7).toString("base64");
  const otherMasterKey = Buffer.alloc(32, 9).toString("base64");
  const provider = `acme-${process.pid}-${Date.now()}`;
  const apiKey = "sk-acme-0123456789-abcd";

  it("dispatches with the stored key, never shows it, records usage, and refuses with a wrong master key", async () => {
    const fleet = await startFleet(
      { a: { apiKey } },
      {
        providers: `providers:\n  - id: ${provider}\n    rpm: 1000`,
        workerExtras: { a: `    provider: ${provider}` },
        env: { VAULT_MASTER_KEY: masterKey, USAGE_FLUSH_INTERVAL_MS: "50", EJECT_AFTER_FAILURES: "1000" },
      },
    );
    try {
      const missing = await read(fleet.inference.chat(ask("hello")));
      expect(missing.error?.code).toBe(Status.FAILED_PRECONDITION);
      expect(missing.error?.details).toContain("StoreProviderKey");

      await expect(fleet.admin.storeProviderKey({ provider, apiKey })).resolves.toMatchObject({ provider, keySuffix: "abcd" });
      await expect(fleet.admin.storeProviderKey({ provider: "bad name!", apiKey })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT });
      expect(await read(fleet.inference.chat(ask("with the key")))).toMatchObject({ text: "with the key" });
      const listed = await fleet.admin.listProviderKeys({});
      expect(listed.keys.find((key) => key.provider === provider)).toMatchObject({ keySuffix: "abcd" });
      expect(JSON.stringify(listed)).not.toContain("0123456789");

      let rows: Array<{ provider: string; requests: number }> = [];
      for (let attempt = 0; attempt < 40 && !rows.some((row) => row.requests >= 1); attempt += 1) {
        rows = (await fleet.admin.getUsage({ provider, model: "", since: undefined })).rows;
        if (!rows.some((row) => row.requests >= 1)) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(rows).toEqual([expect.objectContaining({ provider, model: "vlinders-sim-chat", requests: 1 })]);

      // Another replica configured with a different master key must not decrypt anything.
      const stranger = await startFleet(
        { a: { apiKey } },
        { providers: `providers:\n  - id: ${provider}`, workerExtras: { a: `    provider: ${provider}` }, env: { VAULT_MASTER_KEY: otherMasterKey, EJECT_AFTER_FAILURES: "1000" } },
      );
      try {
        const refused = await read(stranger.inference.chat(ask("hello")));
        expect(refused.error?.code).toBe(Status.FAILED_PRECONDITION);
        expect(refused.error?.details).toContain("VAULT_MASTER_KEY");
        expect(stranger.simulators.a!.stats.requests).toBe(0);
      } finally {
        await stranger.stop();
      }
      // A worker added at run time lists its models with the provider's key, as vLLM wants it.
      await expect(fleet.admin.addWorker({ id: "a2", url: (await fleet.admin.getPoolStatus({})).workers[0]!.url, models: [], maxNumSeqs: 0, provider })).resolves.toMatchObject({
        id: "a2",
        models: ["vlinders-sim-chat", "vlinders-sim-embed"],
      });
      await expect(fleet.admin.deleteProviderKey({ provider })).resolves.toEqual({ deleted: true });
      await expect(fleet.admin.addWorker({ id: "a3", url: (await fleet.admin.getPoolStatus({})).workers[0]!.url, models: [], maxNumSeqs: 0, provider })).rejects.toMatchObject({
        code: Status.FAILED_PRECONDITION,
        details: expect.stringContaining("has no stored API key"),
      });
    } finally {
      await fleet.stop();
    }
  });
});

describe("broker replicas sharing Redis", () => {
  it("share one response cache and one quota", async () => {
    const env = { REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379", REDIS_KEY_PREFIX: `fleet-spec:${process.pid}:${Date.now()}:` };
    const first = await startFleet({ a: {} }, { env, modelExtras: "    rpm: 2" });
    const second = await startFleet({ a: {} }, { env, modelExtras: "    rpm: 2" });
    try {
      const request = ask("shared between replicas", { sampling: { temperature: 0, stop: [] } });
      const fromWorker = await read(first.inference.chat(request));
      const fromCache = await read(second.inference.chat(request));
      expect(fromCache.events).toEqual(fromWorker.events);
      expect(second.simulators.a!.stats.requests).toBe(0);
      // One request is counted so far (a cache hit is not); one more is allowed, on either replica.
      expect((await read(second.inference.chat(ask("third")))).error).toBeUndefined();
      const refused = await read(first.inference.chat(ask("fourth")));
      expect(refused.error?.code).toBe(Status.RESOURCE_EXHAUSTED);
    } finally {
      await first.stop();
      await second.stop();
    }
  });
});
