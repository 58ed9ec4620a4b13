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

describe("failover before the first token, never after", () => {
  let fleet: Fleet;
  beforeEach(async () => {
    fleet = await startFleet({ a: {}, b: {} }, { env: { WORKER_FIRST_TOKEN_TIMEOUT_MS: "300", EJECT_AFTER_FAILURES: "1000" } });
  });
  afterEach(async () => fleet.stop());

  it("answers from another worker when one fails with HTTP 500 before streaming", async () => {
    fleet.simulators.a!.injectFaults({ httpErrorStatus: 500 });
    const outcomes = await Promise.all(Array.from({ length: 6 }, (_, index) => read(fleet.inference.chat(ask(`request number ${index}`)))));
    expect(outcomes.map((outcome) => outcome.error)).toEqual(Array(6).fill(undefined));
    expect(outcomes.map((outcome) => outcome.text)).toEqual(Array.from({ length: 6 }, (_, index) => `request number ${index}`));
    expect(fleet.simulators.a!.stats.requests).toBeGreaterThan(0);
  });

  it("does not let a hung worker stall requests: they time out on it and move on", async () => {
    fleet.simulators.a!.injectFaults({ failureRate: 1, kinds: ["hang"] });
    const outcomes = await Promise.all(Array.from({ length: 4 }, () => read(fleet.inference.chat(ask("still answered")))));
    for (const outcome of outcomes) expect(outcome).toMatchObject({ text: "still answered" });
    expect(outcomes.every((outcome) => outcome.error === undefined)).toBe(true);
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

describe("a worker killed mid-load", () => {
  it("ends its streams with UNAVAILABLE and a clear message, and later requests succeed elsewhere", async () => {
    const fleet = await startFleet({ a: { interTokenLatencyMs: 40 }, b: { interTokenLatencyMs: 40 } }, { env: { EJECT_AFTER_FAILURES: "1" } });
    try {
      const prompt = "a b c d e f g h i j k l m n o p q r s t";
      const started: Array<Promise<Outcome>> = [];
      let withText = 0;
      const allHaveText = new Promise<void>((resolve) => {
        for (let index = 0; index < 8; index += 1) {
          let counted = false;
          started.push(
            read(fleet.inference.chat(ask(prompt, { sessionId: `s${index}` })), () => {
              if (!counted) {
                counted = true;
                if (++withText === 8) resolve();
              }
            }),
          );
        }
      });
      await allHaveText;
      const servedByA = fleet.simulators.a!.stats.activeStreams;
      expect(servedByA).toBeGreaterThan(0);
      await fleet.simulators.a!.close();
      const outcomes = await Promise.all(started);
      const failed = outcomes.filter((outcome) => outcome.error);
      expect(failed).toHaveLength(servedByA);
      for (const outcome of failed) {
        expect(outcome.error?.code).toBe(Status.UNAVAILABLE);
        expect(outcome.error?.details).toMatch(/worker a broke off the stream/);
        expect(prompt.startsWith(outcome.text)).toBe(true);
      }
      expect(outcomes.filter((outcome) => !outcome.error).every((outcome) => outcome.text === prompt)).toBe(true);
      const after = await Promise.all(Array.from({ length: 4 }, () => read(fleet.inference.chat(ask("after the crash")))));
      expect(after.map((outcome) => [outcome.error?.code, outcome.text])).toEqual(Array(4).fill([undefined, "after the crash"]));
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

  it("sends requests that share a system prompt to one worker, for its prefix cache", async () => {
    const before = requestsOf(fleet);
    const system = { role: "system", content: "You are the reviewer of a large TypeScript code base.", toolCalls: [], toolCallId: "", name: "" };
    for (let index = 0; index < 6; index += 1) {
      await read(fleet.inference.chat({ ...ask(`question ${index}`), messages: [system, ask(`question ${index}`).messages[0]!] }));
    }
    const after = requestsOf(fleet);
    expect(Object.keys(after).filter((id) => after[id] !== before[id])).toHaveLength(1);
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
});

describe("metrics", () => {
  it("records time to first token, added latency, tokens and requests by model and status", async () => {
    const fleet = await startFleet({ a: {} });
    try {
      await read(fleet.inference.chat(ask("measure me please")));
      await read(fleet.inference.chat(ask("x", { model: "nope" })));
      const text = await fleet.runtime.metricsRegistry.metrics();
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
      await expect(fleet.admin.deleteProviderKey({ provider })).resolves.toEqual({ deleted: true });
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
