import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FinishReason, InferenceAdminServiceDefinition, InferenceServiceDefinition, type ChatEvent, type ChatRequest } from "@vlinders/proto";
import { createInProcessRuntime, loadConfig, type ServiceHost } from "@vlinders/service-runtime";
import { VllmSimulator } from "@vlinders/vllm-simulator";
import { createChannel, createClientFactory, Metadata, Status, type Channel, type Client } from "nice-grpc";
import { deadlineMiddleware, type DeadlineOptions } from "nice-grpc-client-middleware-deadline";
import { brokerConfigSchema } from "./config";
import { createInferenceBroker, type InferenceBroker } from "./inference-broker";

const internalSecret = "broker-spec-secret-0123456789";
const metadata = Metadata({ "x-internal-auth": internalSecret });

const userSays = (content: string, extra: Partial<ChatRequest> = {}): ChatRequest => ({
  model: "",
  messages: [{ role: "user", content, toolCalls: [], toolCallId: "", name: "" }],
  tools: [],
  sampling: undefined,
  userId: "",
  sessionId: "",
  bypassCache: false,
  ...extra,
});

interface Collected {
  events: ChatEvent[];
  text: string;
  error?: { code: Status; details: string };
}

async function collect(stream: AsyncIterable<ChatEvent>): Promise<Collected> {
  const events: ChatEvent[] = [];
  try {
    for await (const event of stream) events.push(event);
  } catch (error: unknown) {
    return { events, text: textOf(events), error: error as { code: Status; details: string } };
  }
  return { events, text: textOf(events) };
}

function textOf(events: ChatEvent[]): string {
  return events.map((event) => (event.event?.$case === "contentDelta" ? event.event.value : "")).join("");
}

/** A port on which nothing listens. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}


async function startBroker(env: NodeJS.ProcessEnv): Promise<{
  host: ServiceHost;
  reload: InferenceBroker["reload"];
  channel: Channel;
  client: Client<typeof InferenceServiceDefinition, DeadlineOptions>;
  admin: Client<typeof InferenceAdminServiceDefinition>;
}> {
  // The machine's PostgreSQL: the embedded PGlite would add seconds to every broker start.
  const database = { DATABASE_URL: process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test" };
  const runtime = createInProcessRuntime("inference-broker", { internalSecret });
  const { host, reload } = await createInferenceBroker(loadConfig(brokerConfigSchema, { ...database, ...env }), runtime);
  const { grpcPort } = await host.listen({ host: "127.0.0.1", grpcPort: 0 });
  const channel = createChannel(`127.0.0.1:${grpcPort}`);
  const factory = createClientFactory();
  return {
    host,
    reload,
    channel,
    client: factory.use(deadlineMiddleware).create(InferenceServiceDefinition, channel, { "*": { metadata } }),
    admin: factory.create(InferenceAdminServiceDefinition, channel, { "*": { metadata } }),
  };
}

describe("inference-broker against the vLLM simulator", () => {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 5, interTokenLatencyMs: 2 });
  let broker: Awaited<ReturnType<typeof startBroker>>;

  beforeAll(async () => {
    const { url } = await simulator.listen(0);
    // Faults are injected on purpose here: they must not eject the only worker (ejection has its own tests).
    broker = await startBroker({ VLLM_URLS: url, WORKER_IDLE_TIMEOUT_MS: "400", EJECT_AFTER_FAILURES: "1000" });
  });

  afterAll(async () => {
    broker.channel.close();
    await broker.host.shutdown();
    await simulator.close();
  });

  afterEach(() => {
    simulator.injectFaults({});
    simulator.configure({ timeToFirstTokenMs: 5, interTokenLatencyMs: 2 });
  });

  it("streams the echo in several content events, then the finish reason, then usage", async () => {
    const result = await collect(broker.client.chat(userSays("the quick brown fox jumps")));
    expect(result.error).toBeUndefined();
    expect(result.text).toBe("the quick brown fox jumps");
    const kinds = result.events.map((event) => event.event?.$case);
    expect(kinds).toEqual(["contentDelta", "contentDelta", "contentDelta", "contentDelta", "contentDelta", "finishReason", "usage"]);
    expect(result.events.at(-2)?.event).toEqual({ $case: "finishReason", value: FinishReason.FINISH_REASON_STOP });
    expect(result.events.at(-1)?.event).toEqual({
      $case: "usage",
      value: { promptTokens: 5, completionTokens: 5, totalTokens: 10, cachedPromptTokens: 0 },
    });
    expect(new Set(result.events.map((event) => event.model))).toEqual(new Set(["vlinders-sim-chat"]));
  });

  it("reports LENGTH when max_tokens cuts the answer", async () => {
    const result = await collect(broker.client.chat(userSays("one two three four", { sampling: { maxTokens: 2, stop: [] } })));
    expect(result.text).toBe("one two");
    expect(result.events.find((event) => event.event?.$case === "finishReason")?.event).toEqual({
      $case: "finishReason",
      value: FinishReason.FINISH_REASON_LENGTH,
    });
  });

  it("streams a tool call as deltas whose arguments join into the JSON the model wrote", async () => {
    const tools = [{ name: "get_weather", description: "Weather for a city", parametersJsonSchema: '{"type":"object"}' }];
    const result = await collect(broker.client.chat(userSays('call get_weather {"city": "Paris", "unit": "celsius"}', { tools })));
    const deltas = result.events.flatMap((event) => (event.event?.$case === "toolCallDelta" ? [event.event.value] : []));
    expect(deltas.length).toBeGreaterThan(2);
    expect(deltas[0]).toMatchObject({ index: 0, name: "get_weather", id: expect.stringMatching(/^chatcmpl-tool-/) });
    expect(deltas.slice(1).every((delta) => delta.id === "" && delta.name === "")).toBe(true);
    expect(JSON.parse(deltas.map((delta) => delta.argumentsJsonDelta).join(""))).toEqual({ city: "Paris", unit: "celsius" });
    expect(result.events.find((event) => event.event?.$case === "finishReason")?.event).toEqual({
      $case: "finishReason",
      value: FinishReason.FINISH_REASON_TOOL_CALLS,
    });
  });

  it("answers NOT_FOUND naming an unknown model, and INVALID_ARGUMENT naming a bad field", async () => {
    const unknown = await collect(broker.client.chat(userSays("hi", { model: "gpt-17" })));
    expect(unknown.error).toMatchObject({ code: Status.NOT_FOUND, details: expect.stringContaining('"gpt-17"') });
    const empty = await collect(broker.client.chat({ ...userSays("hi"), messages: [] }));
    expect(empty.error).toMatchObject({ code: Status.INVALID_ARGUMENT, details: "messages: must not be empty" });
  });

  it("ends the stream with INTERNAL when the worker reports an error mid-stream, after the text it sent", async () => {
    simulator.injectFaults({ midStreamErrorAfterTokens: 2 });
    const result = await collect(broker.client.chat(userSays("alpha beta gamma delta")));
    expect(result.text).toBe("alpha beta");
    expect(result.error).toMatchObject({ code: Status.INTERNAL, details: expect.stringContaining("failed mid-stream") });
  });

  it("answers UNAVAILABLE when the worker fails with HTTP 503 before streaming", async () => {
    simulator.injectFaults({ httpErrorStatus: 503 });
    const result = await collect(broker.client.chat(userSays("hello")));
    expect(result.events).toEqual([]);
    expect(result.error).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringContaining("HTTP 503") });
  });

  it("fails a stream whose worker goes silent, instead of hanging", async () => {
    simulator.configure({ interTokenLatencyMs: 5_000 });
    const result = await collect(broker.client.chat(userSays("first then silence")));
    expect(result.text).toBe("first");
    expect(result.error).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringContaining("within 400 ms") });
  });

  it("completes without streaming, embeds, and lists the discovered models", async () => {
    const response = await broker.client.complete(userSays("all at once"));
    expect(response).toMatchObject({
      model: "vlinders-sim-chat",
      message: { role: "assistant", content: "all at once" },
      finishReason: FinishReason.FINISH_REASON_STOP,
      usage: { completionTokens: 3 },
    });
    const embedded = await broker.client.embed({ model: "vlinders-sim-embed", inputs: ["a", "b", "a"], userId: "" });
    expect(embedded.embeddings).toHaveLength(3);
    expect(embedded.embeddings[0]?.values).toHaveLength(64);
    expect(embedded.embeddings[0]?.values).toEqual(embedded.embeddings[2]?.values);
    expect(embedded.embeddings[0]?.values).not.toEqual(embedded.embeddings[1]?.values);
    await expect(broker.client.embed({ model: "", inputs: [], userId: "" })).rejects.toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: "inputs: must not be empty",
    });
    const { models } = await broker.client.listModels({});
    expect(models.map((model) => model.id).sort()).toEqual(["vlinders-sim-chat", "vlinders-sim-embed"]);
    expect(models[0]).toMatchObject({ workerCount: 1, maxContextTokens: expect.any(Number) });
  });
});

describe("inference-broker cancelling the worker's request", () => {
  // The worker pauses five seconds after its first token, and the broker would wait ten for the
  // next: only the broker acting on the caller's cancel or deadline can end the request sooner.
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 5, interTokenLatencyMs: 5_000 });
  let broker: Awaited<ReturnType<typeof startBroker>>;

  beforeAll(async () => {
    const { url } = await simulator.listen(0);
    broker = await startBroker({ VLLM_URLS: url, WORKER_FIRST_TOKEN_TIMEOUT_MS: "10000", WORKER_IDLE_TIMEOUT_MS: "10000", EJECT_AFTER_FAILURES: "1000" });
  });

  afterAll(async () => {
    broker.channel.close();
    await broker.host.shutdown();
    await simulator.close();
  });

  afterEach(() => simulator.configure({ timeToFirstTokenMs: 5 }));

  /** performance.now() of the worker's next client disconnect, or Infinity if none comes within `timeoutMs`. */
  function nextDisconnectAt(timeoutMs: number): Promise<number> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        stop();
        resolve(Infinity);
      }, timeoutMs);
      const stop = simulator.onDisconnect(() => {
        clearTimeout(timer);
        stop();
        resolve(performance.now());
      });
    });
  }

  it("closes the worker's stream as soon as the client cancels mid-stream, not at the worker's next token", async () => {
    const disconnected = nextDisconnectAt(3_000);
    const controller = new AbortController();
    const seen: string[] = [];
    let cancelledAt = 0;
    const stream = broker.client.chat(userSays("one two three"), { signal: controller.signal, deadline: new Date(Date.now() + 3_000) });
    const consumed = (async () => {
      for await (const event of stream) {
        if (event.event?.$case !== "contentDelta") continue;
        seen.push(event.event.value);
        cancelledAt = performance.now();
        controller.abort();
      }
    })().catch((error: unknown) => error);
    expect(await consumed).toMatchObject({ name: "AbortError" });
    expect(seen).toEqual(["one"]);
    // The next token is 5 s away: a broker that noticed the cancel only then would disconnect that late.
    expect((await disconnected) - cancelledAt).toBeLessThan(1_000);
    expect(simulator.stats.activeStreams).toBe(0);
  });

  it("answers DEADLINE_EXCEEDED and frees the worker at once when the deadline passes before the first token", async () => {
    simulator.configure({ timeToFirstTokenMs: 5_000 });
    const disconnected = nextDisconnectAt(3_000);
    const deadline = performance.now() + 150;
    const result = await collect(broker.client.chat(userSays("too slow"), { deadline: new Date(Date.now() + 150) }));
    expect(result.error).toMatchObject({ code: Status.DEADLINE_EXCEEDED });
    // The first token is 5 s away: a broker that let the worker run on to it would disconnect that late.
    expect((await disconnected) - deadline).toBeLessThan(1_000);
    expect(simulator.stats.activeStreams).toBe(0);
  });
});

describe("inference-broker with a models file", () => {
  let directory: string;

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "vlinders-models-"));
  });

  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it("answers UNAVAILABLE naming the worker when it cannot be reached", async () => {
    const path = join(directory, "unreachable.yaml");
    const port = await closedPort();
    await writeFile(
      path,
      `workers:\n  - id: gpu-down\n    url: http://127.0.0.1:${port}\nmodels:\n  - id: coder\n    workers: [gpu-down]\n`,
    );
    const broker = await startBroker({ MODELS_CONFIG: path });
    try {
      const result = await collect(broker.client.chat(userSays("anyone there?", { model: "coder" })));
      expect(result.error).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringContaining("gpu-down") });
    } finally {
      broker.channel.close();
      await broker.host.shutdown();
    }
  });

  it("names the last failure when an embedding finds no worker left to fail over to", async () => {
    // Healthy to the probes, but a proxy's page where the embeddings should be.
    const worker = createHttpServer((request, response) => {
      request.resume();
      if (request.url === "/v1/embeddings") {
        response.writeHead(200, { "content-type": "text/html" });
        response.end("<html>bad gateway</html>");
        return;
      }
      response.writeHead(200, { "content-type": "text/plain" });
      response.end("");
    });
    await new Promise<void>((resolve) => worker.listen(0, "127.0.0.1", resolve));
    const path = join(directory, "html-worker.yaml");
    const { port } = worker.address() as { port: number };
    await writeFile(path, `workers:\n  - id: gpu-html\n    url: http://127.0.0.1:${port}\nmodels:\n  - id: embedder\n    workers: [gpu-html]\n`);
    const broker = await startBroker({ MODELS_CONFIG: path });
    try {
      const failure = await broker.client.embed({ model: "embedder", inputs: ["hello"], userId: "" }).catch((error: unknown) => error);
      expect(failure).toMatchObject({
        code: Status.UNAVAILABLE,
        details: expect.stringContaining("(last failure: worker gpu-html answered with what is not JSON: <html>bad gateway</html>)"),
      });
    } finally {
      broker.channel.close();
      await broker.host.shutdown();
      worker.closeAllConnections();
      await new Promise<void>((resolve) => worker.close(() => resolve()));
    }
  });

  it("resolves aliases and the default model from the file", async () => {
    const simulator = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1 });
    const { url } = await simulator.listen(0);
    const path = join(directory, "aliases.yaml");
    await writeFile(
      path,
      [
        "default_model: vlinders-sim-chat",
        "workers:",
        `  - id: sim\n    url: ${url}`,
        "models:",
        "  - id: vlinders-sim-chat\n    aliases: [coder]\n    workers: [sim]",
      ].join("\n"),
    );
    const broker = await startBroker({ MODELS_CONFIG: path });
    try {
      const byAlias = await collect(broker.client.chat(userSays("via alias", { model: "coder" })));
      expect(byAlias).toMatchObject({ text: "via alias" });
      expect(byAlias.events[0]?.model).toBe("vlinders-sim-chat");
      const byDefault = await collect(broker.client.chat(userSays("via default")));
      expect(byDefault.text).toBe("via default");
    } finally {
      broker.channel.close();
      await broker.host.shutdown();
      await simulator.close();
    }
  });

  it("beside VLLM_URLS, gives the discovered models the file's aliases, default, quotas and worker names", async () => {
    // "base-model" comes first: without the file's default, a request naming no model would get it.
    const simulator = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1, models: [{ id: "base-model", maxModelLen: 4096 }, { id: "vlinders-sim-chat", maxModelLen: 4096 }] });
    const added = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1, models: [{ id: "extra-model", maxModelLen: 4096 }] });
    const { url } = await simulator.listen(0);
    const { url: addedUrl } = await added.listen(0);
    const path = join(directory, "settings.yaml");
    // The file's model lists no workers: VLLM_URLS and discovery decide who serves what. No worker
    // serves "ghost", so it stays unknown; "extra-model" is served once AddWorker adds its worker.
    await writeFile(
      path,
      [
        "default_model: coder",
        `workers:\n  - id: gpu-a\n    url: ${url}/v1`,
        "models:",
        "  - id: vlinders-sim-chat\n    aliases: [coder]\n    rpm: 3\n    workers: [gpu-a]",
        "  - id: ghost\n    aliases: [phantom]\n    workers: [elsewhere]",
        "  - id: extra-model\n    aliases: [extra]",
      ].join("\n"),
    );
    const broker = await startBroker({ VLLM_URLS: url, MODELS_CONFIG: path });
    try {
      expect((await broker.admin.getPoolStatus({})).workers.map((worker) => worker.id)).toEqual(["gpu-a"]);
      const byAlias = await collect(broker.client.chat(userSays("via alias", { model: "coder" })));
      expect(byAlias).toMatchObject({ text: "via alias" });
      expect(byAlias.events[0]?.model).toBe("vlinders-sim-chat");
      const byDefault = await collect(broker.client.chat(userSays("via default")));
      expect(byDefault.events[0]?.model).toBe("vlinders-sim-chat");
      await collect(broker.client.chat(userSays("third", { model: "vlinders-sim-chat" })));
      const overQuota = await collect(broker.client.chat(userSays("one too many", { model: "vlinders-sim-chat" })));
      expect(overQuota.error).toMatchObject({ code: Status.RESOURCE_EXHAUSTED, details: expect.stringContaining("vlinders-sim-chat") });
      const ghost = await collect(broker.client.chat(userSays("boo", { model: "phantom" })));
      expect(ghost.error).toMatchObject({ code: Status.NOT_FOUND, details: expect.stringContaining("phantom") });

      await broker.admin.addWorker({ id: "added", url: addedUrl, models: [], maxNumSeqs: 0, provider: "" });
      const viaAddedAlias = await collect(broker.client.chat(userSays("added", { model: "extra" })));
      expect(viaAddedAlias).toMatchObject({ text: "added" });
      expect(viaAddedAlias.events[0]?.model).toBe("extra-model");

      // An operator's reload reads the file again: the alias moves, and the old one is gone.
      await writeFile(path, "models:\n  - id: vlinders-sim-chat\n    aliases: [writer]\n");
      await broker.reload(AbortSignal.timeout(5_000));
      expect((await collect(broker.client.chat(userSays("renamed", { model: "writer" })))).text).toBe("renamed");
      expect((await collect(broker.client.chat(userSays("old name", { model: "coder" })))).error).toMatchObject({ code: Status.NOT_FOUND });
      // Without the file's default, the first discovered model is the default again.
      expect((await collect(broker.client.chat(userSays("default now")))).events[0]?.model).toBe("base-model");

      // A broken file fails the operator's reload, naming it, and changes nothing.
      await writeFile(path, "models: [\n");
      await expect(broker.reload(AbortSignal.timeout(5_000))).rejects.toThrow(path);
      expect((await collect(broker.client.chat(userSays("still here", { model: "writer" })))).text).toBe("still here");
      // The periodic rediscovery goes on with the last good settings: a new worker's models appear.
      const replacement = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1, models: [{ id: "base-model", maxModelLen: 4096 }, { id: "vlinders-sim-chat", maxModelLen: 4096 }, { id: "late-model", maxModelLen: 4096 }] });
      await simulator.close();
      await replacement.listen(Number(new URL(url).port));
      try {
        await expect(broker.reload(AbortSignal.timeout(5_000), "rediscovery")).resolves.toMatchObject({ models: expect.arrayContaining(["late-model"]) });
        expect((await collect(broker.client.chat(userSays("late", { model: "late-model" })))).text).toBe("late");
        expect((await collect(broker.client.chat(userSays("kept", { model: "writer" })))).text).toBe("kept");
      } finally {
        await replacement.close();
      }
    } finally {
      broker.channel.close();
      await broker.host.shutdown();
      await simulator.close();
      await added.close();
    }
  });
});
