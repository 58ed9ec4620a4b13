import { InferenceServiceDefinition, type ChatEvent, type InferenceServiceImplementation } from "@vlinders/proto";
import { createChannel, createClient, Metadata, Status, ServerError, type Channel } from "nice-grpc";
import { ClientError } from "nice-grpc-common";
import { HealthDefinition } from "nice-grpc-server-health";
import { createInternalChannel, createInternalClient } from "./client";
import { createLogger } from "./logger";
import { createMetricsRegistry } from "./metrics";
import { createServiceHost, type ServiceHost } from "./service-host";

const secret = "test-secret-0123456789";
/** grpc.health.v1 serving statuses (the package does not export its enum). */
const HealthCheckResponse_ServingStatus = { SERVING: 1, NOT_SERVING: 2 } as const;
const auth = () => ({ metadata: Metadata({ "x-internal-auth": secret }) });

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
}

/** A service whose behaviour each test picks through the model name. */
const testService: InferenceServiceImplementation = {
  async *chat(request, context): AsyncGenerator<ChatEvent> {
    const [behaviour, count = "3", delay = "20"] = request.model.split(":");
    if (behaviour === "throw-plain") throw new Error("database password is hunter2");
    if (behaviour === "throw-status") throw new ServerError(Status.FAILED_PRECONDITION, "precondition: not ready");
    for (let index = 0; index < Number(count); index += 1) {
      // "ignore-signal" keeps going whatever happens, like a handler with a bug.
      await sleep(Number(delay), behaviour === "ignore-signal" ? undefined : context.signal);
      yield { event: { $case: "contentDelta", value: `part-${index}` }, model: request.model };
    }
  },
  async complete() {
    throw new ServerError(Status.UNIMPLEMENTED, "not here");
  },
  async embed() {
    throw new ServerError(Status.UNIMPLEMENTED, "not here");
  },
  async listModels() {
    return { models: [{ id: "m", aliases: [], maxContextTokens: 0, workerCount: 1 }] };
  },
};

async function collect(iterable: AsyncIterable<ChatEvent>): Promise<string[]> {
  const parts: string[] = [];
  for await (const event of iterable) if (event.event?.$case === "contentDelta") parts.push(event.event.value);
  return parts;
}

describe("service host", () => {
  let host: ServiceHost;
  let channel: Channel;
  let address: string;

  async function start(options: { shutdownGraceMs?: number; shutdownDrainDelayMs?: number } = {}) {
    host = createServiceHost({
      service: "test",
      logger: createLogger({ service: "test", level: "silent" }),
      metricsRegistry: createMetricsRegistry("test"),
      internalSecret: secret,
      shutdownGraceMs: options.shutdownGraceMs ?? 5_000,
      shutdownDrainDelayMs: options.shutdownDrainDelayMs ?? 0,
    });
    host.add(InferenceServiceDefinition, testService);
    const { grpcPort } = await host.listen({ host: "127.0.0.1", grpcPort: 0 });
    address = `127.0.0.1:${grpcPort}`;
    channel = createChannel(address);
  }

  afterEach(async () => {
    channel.close();
    await host.shutdown();
  });

  it("refuses calls without the shared secret or with a wrong one, naming the metadata", async () => {
    await start();
    const client = createClient(InferenceServiceDefinition, channel);
    await expect(client.listModels({})).rejects.toMatchObject({ code: Status.UNAUTHENTICATED, details: "missing x-internal-auth metadata" });
    await expect(client.listModels({}, { metadata: Metadata({ "x-internal-auth": "wrong" }) })).rejects.toMatchObject({
      code: Status.UNAUTHENTICATED,
      details: "invalid x-internal-auth metadata",
    });
    await expect(client.listModels({}, auth())).resolves.toEqual({ models: [expect.objectContaining({ id: "m" })] });
  });

  it("answers health checks without credentials", async () => {
    await start();
    const health = createClient(HealthDefinition, channel);
    await expect(health.check({ service: "" })).resolves.toEqual({ status: HealthCheckResponse_ServingStatus.SERVING });
    await expect(health.check({ service: "vlinders.v1.InferenceService" })).resolves.toEqual({
      status: HealthCheckResponse_ServingStatus.SERVING,
    });
  });

  it("maps a plain error to INTERNAL without leaking its message, and keeps a status error's code", async () => {
    await start();
    const client = createClient(InferenceServiceDefinition, channel);
    const plain = await collect(client.chat({ model: "throw-plain", messages: [] }, auth())).catch((error: unknown) => error);
    expect(plain).toBeInstanceOf(ClientError);
    expect(plain).toMatchObject({ code: Status.INTERNAL });
    expect((plain as ClientError).details).not.toContain("hunter2");
    await expect(collect(client.chat({ model: "throw-status", messages: [] }, auth()))).rejects.toMatchObject({
      code: Status.FAILED_PRECONDITION,
      details: "precondition: not ready",
    });
  });

  it("sends the secret and a deadline from an internal client", async () => {
    await start();
    const internalChannel = createInternalChannel(address);
    try {
      const client = createInternalClient(InferenceServiceDefinition, internalChannel, { internalSecret: secret, defaultDeadlineMs: 100 });
      await expect(client.listModels({})).resolves.toMatchObject({ models: [{ id: "m" }] });
      // The default deadline applies to a call that sets none.
      await expect(collect(client.chat({ model: "slow:5:100", messages: [] }))).rejects.toMatchObject({ code: Status.DEADLINE_EXCEEDED });
    } finally {
      internalChannel.close();
    }
  });

  it("reports NOT_SERVING as soon as shutdown begins", async () => {
    await start({ shutdownDrainDelayMs: 300 });
    const health = createClient(HealthDefinition, channel);
    const stopped = host.shutdown();
    await expect(health.check({ service: "" })).resolves.toEqual({ status: HealthCheckResponse_ServingStatus.NOT_SERVING });
    await stopped;
  });

  it("lets an in-flight stream finish when shutdown begins, and refuses new calls", async () => {
    await start();
    const client = createClient(InferenceServiceDefinition, channel);
    const stream = client.chat({ model: "slow:5:50", messages: [] }, auth())[Symbol.asyncIterator]();
    const first = await stream.next();
    expect(first.value).toMatchObject({ event: { $case: "contentDelta", value: "part-0" } });
    const stopped = host.shutdown();
    const rest: string[] = [];
    for (let next = await stream.next(); !next.done; next = await stream.next()) {
      if (next.value.event?.$case === "contentDelta") rest.push(next.value.event.value);
    }
    expect(rest).toEqual(["part-1", "part-2", "part-3", "part-4"]);
    await stopped;
    await expect(createClient(InferenceServiceDefinition, createChannel(address)).listModels({}, auth())).rejects.toMatchObject({
      code: Status.UNAVAILABLE,
    });
  });

  it("aborts streams still running when the grace period ends, telling the client to retry elsewhere", async () => {
    await start({ shutdownGraceMs: 200 });
    const client = createClient(InferenceServiceDefinition, channel);
    // Settled into a value at once, so that the rejection is never unhandled while shutdown runs.
    const outcome = collect(client.chat({ model: "slow:100:50", messages: [] }, auth())).then(
      () => "completed",
      (error: unknown) => error,
    );
    await sleep(120);
    const startedAt = Date.now();
    await host.shutdown();
    expect(Date.now() - startedAt).toBeLessThan(3_000);
    expect(await outcome).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringContaining("shutting down") });
  });
});
