import { randomUUID } from "node:crypto";
import { openTestDatabase, runMigrations, type Database } from "@vlinders/database";
import { AgentStatus } from "@vlinders/proto";
import { createRedisConnection, type RedisConnection } from "@vlinders/redis";
import { createLogger } from "@vlinders/service-runtime";
import { Status } from "nice-grpc-common";
import { createActiveRuns, createRunCanceller, RunCancelledError, type ActiveRuns, type RunCanceller } from "./active-runs";
import { orchestratorMigrations, orchestratorMigrationScope } from "./migrations";
import { createPostgresRunStore, type PostgresRunStore } from "./postgres-run-store";

const redisUrl = process.env["TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379";
const logger = createLogger({ service: "test", level: "silent" });
const live = (): AbortSignal => AbortSignal.timeout(10_000);

describe("createActiveRuns", () => {
  it("aborts a registered run with a RunCancelledError, and forgets it once unregistered", async () => {
    const runs = createActiveRuns();
    const controller = new AbortController();
    const unregister = runs.register("r1", controller);
    expect(() => runs.register("r1", new AbortController())).toThrow(/already registered/);
    expect(runs.has("r1")).toBe(true);

    expect(runs.cancel("r1", "user asked")).toBe(true);
    expect(controller.signal.reason).toBeInstanceOf(RunCancelledError);
    expect(controller.signal.reason).toMatchObject({ runId: "r1", reason: "user asked", message: "run r1 was cancelled: user asked" });

    const removed = runs.waitUntilRemoved("r1", live());
    unregister();
    unregister();
    expect(await removed).toBe(true);
    expect(runs.size()).toBe(0);
    expect(runs.cancel("r1", "again")).toBe(false);
  });

  it("stops waiting for a run to end when the wait's signal aborts", async () => {
    const runs = createActiveRuns();
    runs.register("r2", new AbortController());
    expect(await runs.waitUntilRemoved("r2", AbortSignal.timeout(20))).toBe(false);
    expect(await runs.waitUntilRemoved("not-here", live())).toBe(true);
  });
});

describe("createRunCanceller", () => {
  let database: Database;
  let store: PostgresRunStore;
  const connections: RedisConnection[] = [];
  const cancellers: RunCanceller[] = [];

  beforeAll(async () => {
    database = await openTestDatabase({ logger, service: "run-canceller-test" });
    await runMigrations(database.pool, { scope: orchestratorMigrationScope, migrations: orchestratorMigrations });
    store = createPostgresRunStore({ pool: database.pool, owner: "replica-under-test", logger });
  });
  afterAll(async () => {
    await Promise.all(cancellers.map((canceller) => canceller.close()));
    await Promise.all(connections.map((connection) => connection.close()));
    await store.close();
    await database.close();
  });

  async function startRun(): Promise<string> {
    const runId = `run-${randomUUID()}`;
    await store.started({ runId, agentType: "explore", parentRunId: "", userId: "u", instruction: "look around", model: "m", workspaceId: "w", startedAt: new Date() });
    return runId;
  }

  /** What the loop does with a run: when aborted, record it cancelled, then unregister. */
  function runLoop(activeRuns: ActiveRuns, runId: string): Promise<void> {
    const controller = new AbortController();
    const unregister = activeRuns.register(runId, controller);
    return new Promise<void>((resolve, reject) => {
      controller.signal.addEventListener("abort", () => {
        const reason = controller.signal.reason as RunCancelledError;
        store
          .finished({ runId, status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: `cancelled: ${reason.reason}`, response: "", iterations: 1, usage: undefined, error: "", finishedAt: new Date() })
          .then(() => {
            unregister();
            resolve();
          }, reject);
      });
    });
  }

  async function canceller(activeRuns: ActiveRuns, channel?: string): Promise<RunCanceller> {
    let redis;
    if (channel !== undefined) {
      const connection = createRedisConnection(redisUrl, { logger, name: "test-run-canceller" });
      connections.push(connection);
      expect(await connection.ready(5_000)).toBe(true);
      redis = connection.redis;
    }
    const created = await createRunCanceller({ activeRuns, store, logger, redis, channel, settleTimeoutMs: 5_000 });
    cancellers.push(created);
    return created;
  }

  it("cancels a run this process holds and answers with its recorded end", async () => {
    const activeRuns = createActiveRuns();
    const runs = await canceller(activeRuns);
    const runId = await startRun();
    const loop = runLoop(activeRuns, runId);

    expect(await runs.cancel(runId, "changed my mind", live())).toBe(AgentStatus.AGENT_STATUS_CANCELLED);
    await loop;
    expect(await store.get(runId, live())).toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled: changed my mind" });
  });

  it("answers NOT_FOUND for an unknown run, and a finished run's status unchanged", async () => {
    const runs = await canceller(createActiveRuns());
    await expect(runs.cancel("no-such-run", "", live())).rejects.toMatchObject({ code: Status.NOT_FOUND });

    const runId = await startRun();
    await store.finished({ runId, status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", response: "ok", iterations: 1, usage: undefined, error: "", finishedAt: new Date() });
    expect(await runs.cancel(runId, "too late", live())).toBe(AgentStatus.AGENT_STATUS_SUCCEEDED);
    expect((await store.get(runId, live()))?.stopReason).toBe("completed");
  });

  it("without Redis, reports a running run it does not hold as its record says", async () => {
    const runs = await canceller(createActiveRuns());
    const runId = await startRun();
    expect(await runs.cancel(runId, "", live())).toBe(AgentStatus.AGENT_STATUS_RUNNING);
  });

  it("cancels a run held by another replica through Redis", async () => {
    const channel = `test:orchestrator:cancel:${process.pid}:${randomUUID()}`;
    const onA = createActiveRuns();
    const onB = createActiveRuns();
    const replicaA = await canceller(onA, channel);
    await canceller(onB, channel);
    const runId = await startRun();
    const loop = runLoop(onB, runId);

    expect(await replicaA.cancel(runId, "stop it", live())).toBe(AgentStatus.AGENT_STATUS_CANCELLED);
    await loop;
    expect(onB.has(runId)).toBe(false);
    expect(await store.get(runId, live())).toMatchObject({ stopReason: "cancelled: stop it" });
  });

  it("answers RUNNING when a run on another replica has not ended within the settle time", async () => {
    const channel = `test:orchestrator:cancel:${process.pid}:${randomUUID()}`;
    const connection = createRedisConnection(redisUrl, { logger, name: "test-run-canceller" });
    connections.push(connection);
    expect(await connection.ready(5_000)).toBe(true);
    // Nobody holds the run: it is the record of a replica that is gone and not swept yet.
    const runs = await createRunCanceller({ activeRuns: createActiveRuns(), store, logger, redis: connection.redis, channel, settleTimeoutMs: 200 });
    cancellers.push(runs);
    const runId = await startRun();
    const started = Date.now();
    expect(await runs.cancel(runId, "", live())).toBe(AgentStatus.AGENT_STATUS_RUNNING);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
  });
});
