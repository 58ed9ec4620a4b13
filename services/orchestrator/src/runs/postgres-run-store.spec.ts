import { randomUUID } from "node:crypto";
import { openDatabase, openTestDatabase, runMigrations, type Database } from "@vlinders/database";
import { AgentStatus } from "@vlinders/proto";
import { createLogger } from "@vlinders/service-runtime";
import { orchestratorMigrations, orchestratorMigrationScope } from "./migrations";
import { createPostgresRunStore, interruptedStopReason, maxStoredToolJsonBytes, type PostgresRunStore, type PostgresRunStoreOptions } from "./postgres-run-store";
import type { RunFinishedRecord, RunStartedRecord, ToolCallRecord } from "./run-records";
import { startRunSweeper, type RunSweeper } from "./run-sweeper";

const logger = createLogger({ service: "test", level: "silent" });
const live = (): AbortSignal => AbortSignal.timeout(10_000);

function startedRecord(overrides: Partial<RunStartedRecord> = {}): RunStartedRecord {
  return {
    runId: `run-${randomUUID()}`,
    agentType: "explore",
    parentRunId: "",
    userId: "user-1",
    instruction: "read README.md and summarise it",
    model: "qwen-small",
    workspaceId: "ws-1",
    startedAt: new Date(),
    ...overrides,
  };
}

function finishedRecord(runId: string, overrides: Partial<RunFinishedRecord> = {}): RunFinishedRecord {
  return {
    runId,
    status: AgentStatus.AGENT_STATUS_SUCCEEDED,
    stopReason: "completed",
    response: "done",
    iterations: 2,
    usage: { promptTokens: 100, completionTokens: 20, totalTokens: 120, cachedPromptTokens: 0 },
    error: "",
    finishedAt: new Date(),
    ...overrides,
  };
}

function toolCall(runId: string, overrides: Partial<ToolCallRecord> = {}): ToolCallRecord {
  const startedAt = new Date();
  return {
    id: `call-${randomUUID()}`,
    runId,
    iteration: 1,
    toolName: "read_file",
    argumentsJson: JSON.stringify({ path: "README.md" }),
    resultJson: JSON.stringify({ output: "# Vlinders" }),
    success: true,
    durationMs: 12,
    startedAt,
    finishedAt: new Date(startedAt.getTime() + 12),
    ...overrides,
  };
}

async function openMigrated(): Promise<Database> {
  const database = await openTestDatabase({ logger, service: "run-store-test" });
  await runMigrations(database.pool, { scope: orchestratorMigrationScope, migrations: orchestratorMigrations });
  return database;
}

describe("createPostgresRunStore", () => {
  let database: Database;
  const stores: PostgresRunStore[] = [];
  const store = (options: Partial<PostgresRunStoreOptions> = {}): PostgresRunStore => {
    const created = createPostgresRunStore({ pool: database.pool, owner: "replica-a", logger, ...options });
    stores.push(created);
    return created;
  };

  beforeAll(async () => {
    database = await openMigrated();
  });
  afterAll(async () => {
    await Promise.all(stores.map((created) => created.close()));
    await database.close();
  });

  it("records a run with its progress and tool calls, and reads them back as AgentRun and ToolCallRecords", async () => {
    const runs = store();
    const parent = startedRecord();
    const child = startedRecord({ parentRunId: parent.runId, agentType: "plan" });
    await runs.started(parent);
    await runs.started(child);

    await runs.progressed(child.runId, 1, { promptTokens: 50, completionTokens: 5, totalTokens: 55, cachedPromptTokens: 10 });
    const running = await runs.get(child.runId, live());
    expect(running).toEqual({
      runId: child.runId,
      agentType: "plan",
      status: AgentStatus.AGENT_STATUS_RUNNING,
      stopReason: "",
      iterations: 1,
      response: "",
      usage: { promptTokens: 50, completionTokens: 5, totalTokens: 55, cachedPromptTokens: 10 },
      parentRunId: parent.runId,
      createdAt: child.startedAt,
      finishedAt: undefined,
    });

    const first = toolCall(child.runId, { iteration: 1 });
    // What a model may emit: arguments that are not JSON; and a tool whose output holds a NUL.
    const malformed = toolCall(child.runId, { iteration: 2, argumentsJson: '{"path": "src/', resultJson: '{"error":"bad\u0000json"}', success: false });
    await runs.toolCalled(first);
    await runs.toolCalled(malformed);
    // A retried write of the same call changes nothing.
    await runs.toolCalled(first);

    const finishedAt = new Date(child.startedAt.getTime() + 1_500);
    await runs.finished(finishedRecord(child.runId, { iterations: 2, response: "README says hello", finishedAt }));

    expect(await runs.get(child.runId, live())).toEqual({
      runId: child.runId,
      agentType: "plan",
      status: AgentStatus.AGENT_STATUS_SUCCEEDED,
      stopReason: "completed",
      iterations: 2,
      response: "README says hello",
      usage: { promptTokens: 100, completionTokens: 20, totalTokens: 120, cachedPromptTokens: 0 },
      parentRunId: parent.runId,
      createdAt: child.startedAt,
      finishedAt,
    });
    const { rows } = await database.pool.query<{ duration_ms: string; user_id: string; instruction: string }>(
      "SELECT duration_ms, user_id, instruction FROM agent_executions WHERE id = $1",
      [child.runId],
    );
    expect(rows[0]).toEqual({ duration_ms: "1500", user_id: "user-1", instruction: child.instruction });

    const calls = await runs.listToolCalls(child.runId, live());
    expect(calls).toEqual([
      { ...first, argumentsTruncated: false, resultTruncated: false },
      { ...malformed, resultJson: '{"error":"bad\uFFFDjson"}', argumentsTruncated: false, resultTruncated: false },
    ]);
    expect((await runs.get(parent.runId, live()))?.parentRunId).toBe("");
    expect(await runs.get("no-such-run", live())).toBeUndefined();
  });

  it("caps a large tool result at 64 KiB, marks the truncation and keeps the full size", async () => {
    const runs = store();
    const run = startedRecord();
    await runs.started(run);
    const huge = JSON.stringify({ output: "é".repeat(100_000) });
    await runs.toolCalled(toolCall(run.runId, { resultJson: huge }));

    const [call] = await runs.listToolCalls(run.runId, live());
    expect(call?.resultTruncated).toBe(true);
    expect(call?.argumentsTruncated).toBe(false);
    expect(Buffer.byteLength(call?.resultJson ?? "", "utf8")).toBeLessThanOrEqual(maxStoredToolJsonBytes);
    expect(call?.resultJson).toMatch(/…\[truncated by the run store: \d+ bytes in all\]$/);
    expect(huge.startsWith(call?.resultJson.split("…[truncated")[0] ?? "x")).toBe(true);
    const { rows } = await database.pool.query<{ result_bytes: number }>("SELECT result_bytes FROM tool_calls WHERE execution_id = $1", [run.runId]);
    expect(rows[0]?.result_bytes).toBe(Buffer.byteLength(huge, "utf8"));
  });

  it("never overwrites a finished run: a repeated or late end, a sweep, a shutdown leave it as it was", async () => {
    const runs = store({ owner: "replica-clobber" });
    const run = startedRecord();
    await runs.started(run);
    await runs.finished(finishedRecord(run.runId));
    const before = await runs.get(run.runId, live());

    await runs.finished(finishedRecord(run.runId));
    await runs.finished(finishedRecord(run.runId, { status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "error", response: "" }));
    await runs.finished(finishedRecord(run.runId, { status: AgentStatus.AGENT_STATUS_INTERRUPTED, stopReason: interruptedStopReason }));
    await runs.progressed(run.runId, 9, undefined);
    expect(await runs.recoverOwnRuns(live())).toEqual([]);
    await runs.close();
    const successor = store({ owner: "replica-clobber" });
    expect(await successor.recoverOwnRuns(live())).toEqual([]);

    expect(await successor.get(run.runId, live())).toEqual(before);
  });

  it("lets the run's real outcome replace an interrupted that a sweep only presumed", async () => {
    const runs = store({ owner: "replica-cut-off" });
    const run = startedRecord();
    await runs.started(run);
    // Another replica swept it while this one could not reach the database.
    await database.pool.query("UPDATE agent_executions SET status = 'interrupted', stop_reason = $2 WHERE id = $1", [run.runId, interruptedStopReason]);

    await runs.finished(finishedRecord(run.runId, { status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled: by the user" }));
    expect(await runs.get(run.runId, live())).toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled: by the user" });
  });

  it("refuses to end a run with a status that is not final", async () => {
    const runs = store();
    const run = startedRecord();
    await runs.started(run);
    await expect(runs.finished(finishedRecord(run.runId, { status: AgentStatus.AGENT_STATUS_RUNNING }))).rejects.toThrow(/not a status a run ends in/);
  });

  it("stops beating for a run whose end it could not record, so that the sweep can interrupt it", async () => {
    const runs = store({ owner: "replica-failed-write" });
    const run = startedRecord();
    await runs.started(run);
    expect(await runs.heartbeat(live())).toBe(1);
    const aborted = new AbortController();
    aborted.abort(new Error("gone"));
    await expect(runs.finished(finishedRecord(run.runId), aborted.signal)).rejects.toMatchObject({ name: "AbortError" });
    expect(await runs.heartbeat(live())).toBe(0);
    expect((await runs.get(run.runId, live()))?.status).toBe(AgentStatus.AGENT_STATUS_RUNNING);
  });

  it("reports per agent type: counts, mean iterations, latency p50/p95, tokens and tool error rate", async () => {
    const runs = store();
    const agentType = `stats-${randomUUID()}`;
    const t0 = Date.now() - 60_000;
    // Durations 100..500 ms over the runs that ended; one still running counts as a run only.
    const ended: Array<[AgentStatus, number, number]> = [
      [AgentStatus.AGENT_STATUS_SUCCEEDED, 100, 1],
      [AgentStatus.AGENT_STATUS_SUCCEEDED, 200, 2],
      [AgentStatus.AGENT_STATUS_SUCCEEDED, 300, 3],
      [AgentStatus.AGENT_STATUS_FAILED, 400, 4],
      [AgentStatus.AGENT_STATUS_CANCELLED, 500, 5],
    ];
    for (const [index, [status, durationMs, iterations]] of ended.entries()) {
      const run = startedRecord({ agentType, startedAt: new Date(t0 + index) });
      await runs.started(run);
      await runs.toolCalled(toolCall(run.runId, { success: index !== 0 }));
      await runs.finished(
        finishedRecord(run.runId, {
          status,
          iterations,
          usage: { promptTokens: 10, completionTokens: 2, totalTokens: 12, cachedPromptTokens: 0 },
          finishedAt: new Date(t0 + index + durationMs),
        }),
      );
    }
    const running = startedRecord({ agentType });
    await runs.started(running);
    await runs.progressed(running.runId, 1, { promptTokens: 7, completionTokens: 1, totalTokens: 8, cachedPromptTokens: 0 });
    await runs.toolCalled(toolCall(running.runId));

    const [stats] = await runs.stats(agentType, live());
    expect(stats).toEqual({
      agentType,
      runs: 6,
      succeeded: 3,
      failed: 1,
      cancelled: 1,
      meanIterations: 3,
      latencyP50Ms: 300,
      latencyP95Ms: 480,
      promptTokens: 57,
      completionTokens: 11,
      toolCalls: 6,
      toolErrorRate: 1 / 6,
    });
    const all = await runs.stats(undefined, live());
    expect(all.find((entry) => entry.agentType === agentType)).toEqual(stats);
    expect(await runs.stats("never-ran", live())).toEqual([
      { agentType: "never-ran", runs: 0, succeeded: 0, failed: 0, cancelled: 0, meanIterations: 0, latencyP50Ms: 0, latencyP95Ms: 0, promptTokens: 0, completionTokens: 0, toolCalls: 0, toolErrorRate: 0 },
    ]);
  });

  it("records many runs written at once in a few statements, and a row the database refuses fails alone", async () => {
    let statements = 0;
    // Every write takes a connection for its statement: counting them counts the statements.
    const counted = new Proxy(database.pool, {
      get(target, property) {
        if (property === "connect") {
          return (...args: Parameters<typeof target.connect>) => {
            statements += 1;
            return target.connect(...args);
          };
        }
        const value: unknown = Reflect.get(target, property);
        return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const runs = store({ pool: counted });
    const statementsOf = async (writes: () => Promise<unknown>): Promise<number> => {
      const before = statements;
      await writes();
      return statements - before;
    };
    const started = Array.from({ length: 50 }, (_, index) => startedRecord({ instruction: `task ${index}`, parentRunId: index % 2 === 0 ? "" : `parent-${index}` }));
    const calls = started.map((run, index) => toolCall(run.runId, { iteration: 1, success: index % 5 !== 0 }));
    // A statement per write would be 50, 100 and 50.
    expect(await statementsOf(() => Promise.all(started.map((run) => runs.started(run))))).toBeLessThanOrEqual(2);
    expect(
      await statementsOf(() =>
        Promise.all([
          ...started.map((run, index) => runs.progressed(run.runId, 1, { promptTokens: index, completionTokens: 1, totalTokens: index + 1, cachedPromptTokens: 0 })),
          ...calls.map((call) => runs.toolCalled(call)),
        ]),
      ),
    ).toBeLessThanOrEqual(4);
    expect(await statementsOf(() => Promise.all(started.map((run, index) => runs.finished(finishedRecord(run.runId, { iterations: 1, response: `answer ${index}` })))))).toBeLessThanOrEqual(2);

    for (const [index, run] of started.entries()) {
      const recorded = await runs.get(run.runId, live());
      expect(recorded).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, response: `answer ${index}`, iterations: 1, parentRunId: run.parentRunId });
      expect(await runs.listToolCalls(run.runId, live())).toEqual([{ ...calls[index], argumentsTruncated: false, resultTruncated: false }]);
    }

    // A tool call of a run never recorded breaks the foreign key: its batch-mates are still written.
    const mates = started.slice(0, 5).map((run) => toolCall(run.runId, { iteration: 2 }));
    const orphanCall = toolCall(`never-started-${randomUUID()}`);
    const outcomes = await Promise.allSettled([...mates, orphanCall].map((call) => runs.toolCalled(call)));
    expect(outcomes.slice(0, 5).map((outcome) => outcome.status)).toEqual(Array(5).fill("fulfilled"));
    expect(outcomes[5]).toMatchObject({ status: "rejected", reason: expect.objectContaining({ message: expect.stringMatching(/foreign key/) }) });
    for (const mate of mates) expect((await runs.listToolCalls(mate.runId, live())).map((call) => call.id)).toContain(mate.id);
    expect(await runs.listToolCalls(orphanCall.runId, live())).toEqual([]);
  });

  it("gives up a write when its signal aborts", async () => {
    const runs = store();
    const aborted = new AbortController();
    aborted.abort(new Error("client went away"));
    await expect(runs.started(startedRecord(), aborted.signal)).rejects.toMatchObject({ name: "AbortError" });
  });

  it("checks its options", () => {
    expect(() => createPostgresRunStore({ pool: database.pool, owner: "", logger })).toThrow(/owner/);
    expect(() => createPostgresRunStore({ pool: database.pool, owner: "x", logger, heartbeatIntervalMs: 1_000, staleAfterMs: 1_500 })).toThrow(/twice/);
  });
});

// A database of their own: sweeps interrupt the running runs of every owner in it.
describe("crash recovery of runs left running", () => {
  let database: Database;
  const stores: PostgresRunStore[] = [];
  const sweepers: RunSweeper[] = [];
  const store = (options: Partial<PostgresRunStoreOptions> & { owner: string }): PostgresRunStore => {
    const created = createPostgresRunStore({ pool: database.pool, logger, ...options });
    stores.push(created);
    return created;
  };

  beforeAll(async () => {
    database = await openMigrated();
  });
  afterAll(async () => {
    await Promise.all(sweepers.map((sweeper) => sweeper.stop()));
    await Promise.all(stores.map((created) => created.close()));
    await database.close();
  });

  it("at start, a replica interrupts the runs its previous process left running, and leaves finished ones alone", async () => {
    // The first process records a start and dies: no end, no close.
    const crashed = createPostgresRunStore({ pool: database.pool, owner: "pod-stable", logger });
    const orphan = startedRecord();
    const done = startedRecord();
    await crashed.started(orphan);
    await crashed.started(done);
    await crashed.finished(finishedRecord(done.runId));
    const doneBefore = await crashed.get(done.runId, live());
    // Another replica's run is not this one's to interrupt.
    const other = store({ owner: "pod-other" });
    const elsewhere = startedRecord();
    await other.started(elsewhere);

    const restarted = store({ owner: "pod-stable" });
    const sweeper = await startRunSweeper({ store: restarted, logger });
    sweepers.push(sweeper);

    expect(sweeper.recovered).toEqual([orphan.runId]);
    const recovered = await restarted.get(orphan.runId, live());
    expect(recovered).toMatchObject({ status: AgentStatus.AGENT_STATUS_INTERRUPTED, stopReason: interruptedStopReason });
    expect(recovered?.finishedAt).toBeInstanceOf(Date);
    expect(await restarted.get(done.runId, live())).toEqual(doneBefore);
    expect((await restarted.get(elsewhere.runId, live()))?.status).toBe(AgentStatus.AGENT_STATUS_RUNNING);
    await other.finished(finishedRecord(elsewhere.runId));
  });

  it("any replica interrupts a run whose replica stopped beating (a pod that never came back), not the runs of live replicas", async () => {
    const timing = { heartbeatIntervalMs: 50, staleAfterMs: 300 };
    const gone = createPostgresRunStore({ pool: database.pool, owner: "pod-gone-for-good", logger, ...timing });
    const orphan = startedRecord();
    await gone.started(orphan);
    const finishedEarlier = startedRecord();
    await gone.started(finishedEarlier);
    await gone.finished(finishedRecord(finishedEarlier.runId));

    // Two live replicas, each with a run going on and a sweeper.
    const a = store({ owner: "pod-a", ...timing });
    const b = store({ owner: "pod-b", ...timing });
    const runOfA = startedRecord();
    const runOfB = startedRecord();
    await a.started(runOfA);
    await b.started(runOfB);
    sweepers.push(await startRunSweeper({ store: a, logger }), await startRunSweeper({ store: b, logger }));

    const deadline = Date.now() + 5_000;
    while ((await a.get(orphan.runId, live()))?.status !== AgentStatus.AGENT_STATUS_INTERRUPTED) {
      if (Date.now() > deadline) throw new Error("the orphaned run was not swept in time");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // Well past staleAfterMs, the live replicas' runs still run.
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect((await a.get(runOfA.runId, live()))?.status).toBe(AgentStatus.AGENT_STATUS_RUNNING);
    expect((await a.get(runOfB.runId, live()))?.status).toBe(AgentStatus.AGENT_STATUS_RUNNING);
    expect(await a.get(orphan.runId, live())).toMatchObject({ stopReason: interruptedStopReason });
    expect((await a.get(finishedEarlier.runId, live()))?.status).toBe(AgentStatus.AGENT_STATUS_SUCCEEDED);

    await a.finished(finishedRecord(runOfA.runId));
    await b.finished(finishedRecord(runOfB.runId));
  });

  it("a replica that shuts down with runs still going marks them interrupted, and records nothing after", async () => {
    const runs = createPostgresRunStore({ pool: database.pool, owner: "pod-draining", logger });
    const abandoned = startedRecord();
    const late = startedRecord();
    await runs.started(abandoned);
    await runs.started(late);
    await runs.close();

    const reader = store({ owner: "pod-reader" });
    expect(await reader.get(abandoned.runId, live())).toMatchObject({ status: AgentStatus.AGENT_STATUS_INTERRUPTED, stopReason: interruptedStopReason });
    await expect(runs.finished(finishedRecord(late.runId))).rejects.toThrow(/closed/);
  });
});

// The default without DATABASE_URL: the same SQL must hold on PGlite.
describe("createPostgresRunStore on the embedded PGlite", () => {
  it("migrates, records, sweeps and reports", async () => {
    const database = await openDatabase({ logger, service: "run-store-embedded-test" });
    try {
      await runMigrations(database.pool, { scope: orchestratorMigrationScope, migrations: orchestratorMigrations });
      const crashed = createPostgresRunStore({ pool: database.pool, owner: "dev", logger });
      const orphan = startedRecord();
      await crashed.started(orphan);
      const runs = createPostgresRunStore({ pool: database.pool, owner: "dev", logger });
      const sweeper = await startRunSweeper({ store: runs, logger });
      await sweeper.stop();
      expect(sweeper.recovered).toEqual([orphan.runId]);

      const run = startedRecord();
      await runs.started(run);
      await runs.toolCalled(toolCall(run.runId, { success: false }));
      await runs.finished(finishedRecord(run.runId, { finishedAt: new Date(run.startedAt.getTime() + 250) }));
      expect(await runs.sweepStale(live())).toEqual([]);
      expect((await runs.get(run.runId, live()))?.status).toBe(AgentStatus.AGENT_STATUS_SUCCEEDED);
      expect(await runs.stats("explore", live())).toEqual([
        expect.objectContaining({ agentType: "explore", runs: 2, succeeded: 1, latencyP50Ms: 250, toolCalls: 1, toolErrorRate: 1 }),
      ]);
      await runs.close();
    } finally {
      await database.close();
    }
  });
});
