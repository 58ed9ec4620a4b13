import { queryWithSignal } from "@vlinders/database";
import { AgentStatus, type AgentRun, type AgentTypeStats, type Usage } from "@vlinders/proto";
import { linkSignals, type Logger } from "@vlinders/service-runtime";
import { DatabaseError, type Pool } from "pg";
import { interruptedStopReason, type RunFinishedRecord, type RunStartedRecord, type RunStore, type ToolCallRecord } from "./run-records";
import { createWriteBatcher, type QueuedWrite } from "./write-batcher";

export { interruptedStopReason } from "./run-records";

/** The most bytes (UTF-8) of a tool call's arguments, and of its result, that are stored. */
export const maxStoredToolJsonBytes = 64 * 1024;

/** Options of {@link createPostgresRunStore}. */
export interface PostgresRunStoreOptions {
  /** A pool on which the orchestrator's migrations have run; not closed by the store. */
  pool: Pool;
  /**
   * This replica's id, recorded with each run it starts: a restarted replica with the same id
   * interrupts the runs it left behind. A stable name (the pod's or host's) makes that immediate;
   * a new name each start still works, through the heartbeat sweep.
   */
  owner: string;
  logger: Logger;
  /** How often a replica refreshes heartbeat_at of its running runs (default 10000). */
  heartbeatIntervalMs?: number | undefined;
  /**
   * A running run whose heartbeat is older than this is presumed orphaned and marked interrupted,
   * whoever owns it (default 60000; at least twice heartbeatIntervalMs).
   */
  staleAfterMs?: number | undefined;
  /** The deadline of a write made without a signal of its own, and the cap of one with (default 10000). */
  writeTimeoutMs?: number | undefined;
  /** The window of `stats`: runs created within it (default 7 days). */
  statsWindowMs?: number | undefined;
}

/** The PostgreSQL RunStore, with the crash recovery the sweeper drives. */
export interface PostgresRunStore extends RunStore {
  readonly owner: string;
  readonly heartbeatIntervalMs: number;
  readonly staleAfterMs: number;
  /**
   * Marks interrupted the runs this owner left `running` that this store is not running: those of a
   * previous process with the same owner. Returns their ids. Call it at start, before taking runs.
   */
  recoverOwnRuns(signal: AbortSignal): Promise<string[]>;
  /** Refreshes heartbeat_at of the runs this store is running, in one statement. Returns how many. */
  heartbeat(signal: AbortSignal): Promise<number>;
  /** Marks interrupted the running runs, of any owner, whose heartbeat is older than staleAfterMs. Returns their ids. */
  sweepStale(signal: AbortSignal): Promise<string[]>;
}

const statusNames = new Map<AgentStatus, string>([
  [AgentStatus.AGENT_STATUS_QUEUED, "queued"],
  [AgentStatus.AGENT_STATUS_RUNNING, "running"],
  [AgentStatus.AGENT_STATUS_SUCCEEDED, "succeeded"],
  [AgentStatus.AGENT_STATUS_FAILED, "failed"],
  [AgentStatus.AGENT_STATUS_CANCELLED, "cancelled"],
  [AgentStatus.AGENT_STATUS_INTERRUPTED, "interrupted"],
]);
const statusesByName = new Map([...statusNames].map(([status, name]) => [name, status]));

/** The proto status of a status column. */
export function agentStatusOf(name: string): AgentStatus {
  return statusesByName.get(name) ?? AgentStatus.UNRECOGNIZED;
}

const finalStatuses = new Set([
  AgentStatus.AGENT_STATUS_SUCCEEDED,
  AgentStatus.AGENT_STATUS_FAILED,
  AgentStatus.AGENT_STATUS_CANCELLED,
  AgentStatus.AGENT_STATUS_INTERRUPTED,
]);

/** True for the statuses a run ends in. */
export function isFinalStatus(status: AgentStatus): boolean {
  return finalStatuses.has(status);
}

/** The most run writes of one kind in one statement. */
const maxWritesPerBatch = 500;

/** SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation): a row's fault. */
const rowLevelSqlState = /^2[23]/;
/** Deadlock detected, serialization failure: the same statement may well pass a moment later. */
const transientSqlStates = new Set(["40P01", "40001"]);

/** A write of the loop's, as it waits for its batch. */
type RunWrite =
  | { kind: "started"; run: RunStartedRecord }
  | { kind: "progressed"; runId: string; iterations: number; usage: Usage | undefined }
  | { kind: "toolCalled"; call: ToolCallRecord }
  | { kind: "finished"; run: RunFinishedRecord; status: string };
type Queued<K extends RunWrite["kind"]> = QueuedWrite<Extract<RunWrite, { kind: K }>>;

interface ExecutionRow {
  id: string;
  agent_type: string;
  parent_run_id: string | null;
  status: string;
  stop_reason: string;
  response: string;
  iterations: number;
  prompt_tokens: string;
  completion_tokens: string;
  total_tokens: string;
  cached_prompt_tokens: string;
  created_at: Date;
  finished_at: Date | null;
}

interface ToolCallRow {
  id: string;
  execution_id: string;
  iteration: number;
  tool_name: string;
  arguments_json: string;
  result_json: string;
  arguments_truncated: boolean;
  result_truncated: boolean;
  success: boolean;
  duration_ms: number;
  started_at: Date;
  finished_at: Date;
}

interface StatsRow {
  agent_type: string;
  runs: string;
  succeeded: string;
  failed: string;
  cancelled: string;
  mean_iterations: number | null;
  latency_p50_ms: number | null;
  latency_p95_ms: number | null;
  prompt_tokens: string;
  completion_tokens: string;
  tool_calls: string;
  tool_errors: string;
}

/**
 * Run records in PostgreSQL (`agent_executions`, `tool_calls`), the record of truth of GetAgent and
 * GetAgentStats.
 *
 * - Every write is awaited by its caller; a run the caller saw finish is in the table. Writes that
 *   arrive together share a statement per kind (group commit): with many runs at once, the
 *   database's cost per statement, not per row, is what holds them up.
 * - `finished` is idempotent and only moves a run out of `queued`/`running`, so that a late or
 *   repeated write never clobbers an outcome. One exception: a real outcome replaces `interrupted`,
 *   which another replica's sweep only presumed (this replica was cut off from the database for
 *   longer than staleAfterMs, its run went on); the reverse never happens.
 * - The store knows which runs it is running (started, not yet finished): `heartbeat` keeps those
 *   alive, and only those, so that a run whose `finished` write failed is swept like an orphan
 *   instead of being kept `running` for as long as this replica lives.
 * - Tool-call arguments and results are capped at 64 KiB each (maxStoredToolJsonBytes): the prefix
 *   is kept, a marker appended and the *_truncated column set; the full size is kept in *_bytes.
 * - NUL characters, which PostgreSQL text cannot hold, are stored as U+FFFD.
 */
export function createPostgresRunStore(options: PostgresRunStoreOptions): PostgresRunStore {
  const { pool, owner, logger } = options;
  const heartbeatIntervalMs = options.heartbeatIntervalMs ?? 10_000;
  const staleAfterMs = options.staleAfterMs ?? 60_000;
  const writeTimeoutMs = options.writeTimeoutMs ?? 10_000;
  const statsWindowMs = options.statsWindowMs ?? 7 * 24 * 3_600_000;
  if (owner.trim() === "") throw new Error("createPostgresRunStore: owner must not be empty");
  if (!(heartbeatIntervalMs > 0)) throw new Error(`createPostgresRunStore: heartbeatIntervalMs must be positive (got ${heartbeatIntervalMs})`);
  // A sweep must never catch a live run between two heartbeats, nor one heartbeat that was late.
  if (!(staleAfterMs >= 2 * heartbeatIntervalMs)) {
    throw new Error(`createPostgresRunStore: staleAfterMs (${staleAfterMs}) must be at least twice heartbeatIntervalMs (${heartbeatIntervalMs})`);
  }

  /** Runs started by this store and not yet finished. */
  const live = new Set<string>();
  const inFlight = new Set<Promise<unknown>>();
  let closed = false;
  let closing: Promise<void> | undefined;

  /** Runs a write with a deadline, tracked so that close() waits for it. */
  async function write<T>(what: string, signal: AbortSignal | undefined, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (closed) throw new Error(`the run store is closed: cannot record ${what}`);
    const timeout = AbortSignal.timeout(writeTimeoutMs);
    const linked = signal === undefined ? { signal: timeout, dispose: () => {} } : linkSignals(signal, timeout);
    const running = work(linked.signal);
    inFlight.add(running);
    try {
      return await running;
    } finally {
      inFlight.delete(running);
      linked.dispose();
    }
  }

  const batcher = createWriteBatcher<RunWrite>({ writeBatch, maxBatch: maxWritesPerBatch });

  function submit(runWrite: RunWrite, what: string, signal: AbortSignal | undefined): Promise<void> {
    if (closed) return Promise.reject(new Error(`the run store is closed: cannot record ${what}`));
    return batcher.submit(runWrite, signal);
  }

  /**
   * One batch: a statement per kind of write, in the order a run makes them (a tool call's row
   * needs its run's), all within one deadline. A statement the database refuses for a row's sake
   * is retried write by write, so that the bad row fails alone instead of taking its batch-mates
   * with it; one that lost a deadlock is retried once as it was.
   */
  async function writeBatch(entries: Array<QueuedWrite<RunWrite>>): Promise<void> {
    const byKind = { started: [] as Array<Queued<"started">>, progressed: [] as Array<Queued<"progressed">>, toolCalled: [] as Array<Queued<"toolCalled">>, finished: [] as Array<Queued<"finished">> };
    for (const entry of entries) (byKind[entry.write.kind] as Array<QueuedWrite<RunWrite>>).push(entry);
    // A second end of the same run waits for the next batch: one statement updates a row once.
    const endingNow = new Map<string, Queued<"finished">>();
    const endingLater: Array<Queued<"finished">> = [];
    for (const entry of byKind.finished) {
      if (endingNow.has(entry.write.run.runId)) endingLater.push(entry);
      else endingNow.set(entry.write.run.runId, entry);
    }
    if (endingLater.length > 0) batcher.requeue(endingLater as Array<QueuedWrite<RunWrite>>);

    const deadline = AbortSignal.timeout(writeTimeoutMs);
    await writeKind(byKind.started, writeStarts, deadline);
    await writeKind(byKind.progressed, writeProgress, deadline);
    await writeKind(byKind.toolCalled, writeToolCalls, deadline);
    await writeKind([...endingNow.values()], writeEnds, deadline);
  }

  /** The writes of one kind in one statement, settling each of them. */
  async function writeKind<K extends RunWrite["kind"]>(
    entries: Array<Queued<K>>,
    writeAll: (writes: Array<Queued<K>>, signal: AbortSignal) => Promise<void>,
    deadline: AbortSignal,
  ): Promise<void> {
    if (entries.length === 0) return;
    const attempt = async (writes: Array<Queued<K>>, retriesLeft: number): Promise<void> => {
      const running = writeAll(writes, deadline);
      inFlight.add(running);
      try {
        await running;
      } catch (error: unknown) {
        const sqlState = error instanceof DatabaseError ? (error.code ?? "") : "";
        if (retriesLeft > 0 && transientSqlStates.has(sqlState)) await attempt(writes, retriesLeft - 1);
        // Only a refusal of a row's values is worth a write-by-write retry: a lost connection, a
        // deadline or an overloaded server would fail each write again, one after another.
        else if (writes.length > 1 && rowLevelSqlState.test(sqlState)) for (const write of writes) await attempt([write], 0);
        else for (const write of writes) write.reject(error);
      } finally {
        inFlight.delete(running);
      }
    };
    await attempt(entries, 1);
  }

  async function writeStarts(entries: Array<Queued<"started">>, signal: AbortSignal): Promise<void> {
    const runs = entries.map((entry) => entry.write.run);
    // ON CONFLICT: a retried write of the same start changes nothing.
    await queryWithSignal(
      pool,
      `INSERT INTO agent_executions
         (id, agent_type, parent_run_id, user_id, instruction, workspace_id, model, status, owner, created_at, started_at, heartbeat_at)
       SELECT id, agent_type, parent_run_id, user_id, instruction, workspace_id, model, 'running', $8, started_at, started_at, now()
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $9::timestamptz[])
         AS started (id, agent_type, parent_run_id, user_id, instruction, workspace_id, model, started_at)
       ON CONFLICT (id) DO NOTHING`,
      [
        runs.map((run) => run.runId),
        runs.map((run) => run.agentType),
        runs.map((run) => (run.parentRunId === "" ? null : run.parentRunId)),
        runs.map((run) => storable(run.userId)),
        runs.map((run) => storable(run.instruction)),
        runs.map((run) => run.workspaceId),
        runs.map((run) => run.model),
        owner,
        runs.map((run) => run.startedAt.toISOString()),
      ],
      signal,
    );
    for (const entry of entries) {
      live.add(entry.write.run.runId);
      entry.resolve();
    }
  }

  async function writeProgress(entries: Array<Queued<"progressed">>, signal: AbortSignal): Promise<void> {
    // The latest progress of each run: a run's writes arrive in order.
    const latest = new Map(entries.map((entry) => [entry.write.runId, entry.write]));
    const writes = [...latest.values()];
    const tokens = writes.map((write) => usageColumns(write.usage));
    await queryWithSignal(
      pool,
      `UPDATE agent_executions AS runs
       SET iterations = progress.iterations,
           prompt_tokens = coalesce(progress.prompt_tokens, runs.prompt_tokens),
           completion_tokens = coalesce(progress.completion_tokens, runs.completion_tokens),
           total_tokens = coalesce(progress.total_tokens, runs.total_tokens),
           cached_prompt_tokens = coalesce(progress.cached_prompt_tokens, runs.cached_prompt_tokens),
           heartbeat_at = now()
       FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
         AS progress (id, iterations, prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens)
       WHERE runs.id = progress.id AND runs.status = 'running'`,
      [writes.map((write) => write.runId), writes.map((write) => count(write.iterations)), ...[0, 1, 2, 3].map((column) => tokens.map((row) => row[column] ?? null))],
      signal,
    );
    for (const entry of entries) entry.resolve();
  }

  async function writeToolCalls(entries: Array<Queued<"toolCalled">>, signal: AbortSignal): Promise<void> {
    const calls = entries.map((entry) => entry.write.call);
    const args = calls.map((call) => capped(call.argumentsJson));
    const results = calls.map((call) => capped(call.resultJson));
    const inserted = await queryWithSignal<{ execution_id: string; id: string }>(
      pool,
      `INSERT INTO tool_calls
         (execution_id, id, iteration, tool_name, arguments_json, result_json, arguments_bytes, result_bytes,
          arguments_truncated, result_truncated, success, duration_ms, started_at, finished_at)
       SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::text[], $6::text[], $7::integer[], $8::integer[],
                            $9::boolean[], $10::boolean[], $11::boolean[], $12::integer[], $13::timestamptz[], $14::timestamptz[])
       ON CONFLICT (execution_id, id) DO NOTHING
       RETURNING execution_id, id`,
      [
        calls.map((call) => call.runId),
        calls.map((call) => call.id),
        calls.map((call) => count(call.iteration)),
        calls.map((call) => call.toolName),
        args.map((arg) => arg.text),
        results.map((result) => result.text),
        args.map((arg) => arg.bytes),
        results.map((result) => result.bytes),
        args.map((arg) => arg.truncated),
        results.map((result) => result.truncated),
        calls.map((call) => call.success),
        calls.map((call) => count(call.durationMs)),
        calls.map((call) => call.startedAt.toISOString()),
        calls.map((call) => call.finishedAt.toISOString()),
      ],
      signal,
    );
    const fresh = new Set(inserted.rows.map((row) => JSON.stringify([row.execution_id, row.id])));
    for (const call of calls) {
      // A retried write, or a loop that reused an id within the run: the first record stays.
      if (!fresh.delete(JSON.stringify([call.runId, call.id]))) {
        logger.warn({ run_id: call.runId, tool_call_id: call.id, iteration: call.iteration }, "a tool call with this id was already recorded for the run; kept the first record");
      }
    }
    for (const entry of entries) entry.resolve();
  }

  async function writeEnds(entries: Array<Queued<"finished">>, signal: AbortSignal): Promise<void> {
    const ends = entries.map((entry) => entry.write);
    const tokens = ends.map((end) => usageColumns(end.run.usage));
    const updated = await queryWithSignal<{ id: string }>(
      pool,
      `UPDATE agent_executions AS runs
       SET status = ended.status, stop_reason = ended.stop_reason, response = ended.response, error = ended.error,
           iterations = ended.iterations,
           prompt_tokens = coalesce(ended.prompt_tokens, runs.prompt_tokens),
           completion_tokens = coalesce(ended.completion_tokens, runs.completion_tokens),
           total_tokens = coalesce(ended.total_tokens, runs.total_tokens),
           cached_prompt_tokens = coalesce(ended.cached_prompt_tokens, runs.cached_prompt_tokens),
           finished_at = ended.finished_at,
           duration_ms = greatest(0, round(extract(epoch FROM (ended.finished_at - coalesce(runs.started_at, runs.created_at))) * 1000))::bigint
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[],
                   $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::timestamptz[])
         AS ended (id, status, stop_reason, response, error, iterations,
                   prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens, finished_at)
       WHERE runs.id = ended.id
         AND (runs.status IN ('queued', 'running') OR (runs.status = 'interrupted' AND ended.status <> 'interrupted'))
       RETURNING runs.id`,
      [
        ends.map((end) => end.run.runId),
        ends.map((end) => end.status),
        ends.map((end) => storable(end.run.stopReason)),
        ends.map((end) => storable(end.run.response)),
        ends.map((end) => storable(end.run.error)),
        ends.map((end) => count(end.run.iterations)),
        ...[0, 1, 2, 3].map((column) => tokens.map((row) => row[column] ?? null)),
        ends.map((end) => end.run.finishedAt.toISOString()),
      ],
      signal,
    );
    const recorded = new Set(updated.rows.map((row) => row.id));
    const unchanged = ends.filter((end) => !recorded.has(end.run.runId));
    if (unchanged.length > 0) {
      const existing = await queryWithSignal<{ id: string; status: string }>(
        pool,
        "SELECT id, status FROM agent_executions WHERE id = ANY($1::text[])",
        [unchanged.map((end) => end.run.runId)],
        signal,
      );
      const current = new Map(existing.rows.map((row) => [row.id, row.status]));
      for (const end of unchanged) {
        const status = current.get(end.run.runId);
        if (status === undefined) logger.warn({ run_id: end.run.runId, status: end.status }, "the end of a run that was never recorded as started; nothing recorded");
        else logger.debug({ run_id: end.run.runId, status: end.status, recorded_status: status }, "run already finished; its record is kept");
      }
    }
    for (const entry of entries) entry.resolve();
  }

  async function interrupt(where: string, values: unknown[], signal: AbortSignal): Promise<Array<{ id: string; owner: string }>> {
    const { rows } = await queryWithSignal<{ id: string; owner: string }>(
      pool,
      `UPDATE agent_executions
       SET status = 'interrupted', stop_reason = $1, finished_at = now()
       WHERE status = 'running' AND ${where}
       RETURNING id, owner`,
      [interruptedStopReason, ...values],
      signal,
    );
    return rows;
  }

  return {
    owner,
    heartbeatIntervalMs,
    staleAfterMs,

    started(run, signal) {
      return submit({ kind: "started", run }, `the start of run ${run.runId}`, signal);
    },

    progressed(runId, iterations, usage, signal) {
      return submit({ kind: "progressed", runId, iterations, usage }, `the progress of run ${runId}`, signal);
    },

    toolCalled(call, signal) {
      return submit({ kind: "toolCalled", call }, `tool call ${call.id} of run ${call.runId}`, signal);
    },

    finished(run, signal) {
      const status = statusNames.get(run.status);
      if (status === undefined || !isFinalStatus(run.status)) {
        return Promise.reject(new Error(`finished: run ${run.runId}: ${AgentStatus[run.status] ?? run.status} is not a status a run ends in`));
      }
      // Even when the write fails: this process is done with the run, so it must stop beating for
      // it and let the sweep interrupt it if the record still says running.
      return submit({ kind: "finished", run, status }, `the end of run ${run.runId}`, signal).finally(() => live.delete(run.runId));
    },

    async get(runId, signal) {
      const { rows } = await queryWithSignal<ExecutionRow>(
        pool,
        `SELECT id, agent_type, parent_run_id, status, stop_reason, response, iterations,
                prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens, created_at, finished_at
         FROM agent_executions WHERE id = $1`,
        [runId],
        signal,
      );
      const row = rows[0];
      return row === undefined ? undefined : toAgentRun(row);
    },

    async listToolCalls(runId, signal) {
      const { rows } = await queryWithSignal<ToolCallRow>(
        pool,
        `SELECT execution_id, id, iteration, tool_name, arguments_json, result_json, arguments_truncated, result_truncated,
                success, duration_ms, started_at, finished_at
         FROM tool_calls WHERE execution_id = $1
         ORDER BY iteration, started_at, id`,
        [runId],
        signal,
      );
      return rows.map(
        (row): ToolCallRecord => ({
          id: row.id,
          runId: row.execution_id,
          iteration: row.iteration,
          toolName: row.tool_name,
          argumentsJson: row.arguments_json,
          resultJson: row.result_json,
          argumentsTruncated: row.arguments_truncated,
          resultTruncated: row.result_truncated,
          success: row.success,
          durationMs: row.duration_ms,
          startedAt: row.started_at,
          finishedAt: row.finished_at,
        }),
      );
    },

    async stats(agentType, signal) {
      // Latency and mean iterations cover the runs that ended through the loop (duration_ms set):
      // one a crash or a sweep interrupted has no duration, and a running one no result yet. Counts cover every
      // run created in the window; tool calls are those of these runs.
      const { rows } = await queryWithSignal<StatsRow>(
        pool,
        `WITH runs AS (
           SELECT id, agent_type, status, iterations, prompt_tokens, completion_tokens, duration_ms
           FROM agent_executions
           WHERE ($1::text IS NULL OR agent_type = $1) AND created_at >= now() - $2::double precision * interval '1 millisecond'
         ), tools AS (
           SELECT runs.agent_type, count(*) AS tool_calls, count(*) FILTER (WHERE NOT tool_calls.success) AS tool_errors
           FROM tool_calls JOIN runs ON runs.id = tool_calls.execution_id
           GROUP BY runs.agent_type
         )
         SELECT runs.agent_type,
                count(*) AS runs,
                count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                count(*) FILTER (WHERE status = 'failed') AS failed,
                count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                avg(iterations) FILTER (WHERE duration_ms IS NOT NULL)::double precision AS mean_iterations,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS latency_p50_ms,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS latency_p95_ms,
                sum(prompt_tokens) AS prompt_tokens,
                sum(completion_tokens) AS completion_tokens,
                coalesce(max(tools.tool_calls), 0) AS tool_calls,
                coalesce(max(tools.tool_errors), 0) AS tool_errors
         FROM runs LEFT JOIN tools ON tools.agent_type = runs.agent_type
         GROUP BY runs.agent_type
         ORDER BY runs.agent_type`,
        [agentType ?? null, statsWindowMs],
        signal,
      );
      const stats = rows.map(toAgentTypeStats);
      // One agent type asked for: an entry even when it has not run (yet).
      if (agentType !== undefined && stats.length === 0) stats.push(toAgentTypeStats(emptyStats(agentType)));
      return stats;
    },

    recoverOwnRuns(signal) {
      return write("the recovery of this owner's runs", signal, async (bounded) => {
        const rows = await interrupt("owner = $2 AND NOT (id = ANY($3::text[]))", [owner, [...live]], bounded);
        if (rows.length > 0) logger.warn({ owner, run_ids: rows.map((row) => row.id) }, "marked interrupted the runs this replica left running when it stopped");
        return rows.map((row) => row.id);
      });
    },

    async heartbeat(signal) {
      if (closed || live.size === 0) return 0;
      return write("a heartbeat", signal, async (bounded) => {
        const updated = await queryWithSignal(
          pool,
          "UPDATE agent_executions SET heartbeat_at = now() WHERE id = ANY($1::text[]) AND status = 'running'",
          [[...live]],
          bounded,
        );
        return updated.rowCount ?? 0;
      });
    },

    async sweepStale(signal) {
      if (closed) return [];
      return write("the sweep of orphaned runs", signal, async (bounded) => {
        // This store's own runs are alive whatever their heartbeat says (an event loop that stalled).
        const rows = await interrupt(
          "heartbeat_at < now() - $2::double precision * interval '1 millisecond' AND NOT (id = ANY($3::text[]))",
          [staleAfterMs, [...live]],
          bounded,
        );
        if (rows.length > 0) {
          logger.warn({ runs: rows.map((row) => ({ run_id: row.id, owner: row.owner })), stale_after_ms: staleAfterMs }, "marked interrupted the running runs whose replica stopped sending heartbeats");
        }
        return rows.map((row) => row.id);
      });
    },

    close() {
      closing ??= (async () => {
        closed = true;
        // Bounded: a database that stopped answering must not hold the shutdown past its grace.
        await Promise.race([batcher.drained(), new Promise((resolve) => setTimeout(resolve, writeTimeoutMs).unref())]);
        await Promise.allSettled([...inFlight]);
        if (live.size === 0) return;
        // A graceful stop with runs still going: they will not end here, so say so now rather than
        // at this replica's next start or a sweep a minute from now. A run that still manages to
        // record its end replaces this (see finished).
        const ids = [...live];
        live.clear();
        try {
          await interrupt("id = ANY($2::text[])", [ids], AbortSignal.timeout(writeTimeoutMs));
          logger.warn({ run_ids: ids }, "the run store closed while runs were going on; marked them interrupted");
        } catch (error: unknown) {
          logger.error({ err: error, run_ids: ids }, "could not mark the runs still going at shutdown interrupted; the sweep will");
        }
      })();
      return closing;
    },
  };
}

function toAgentRun(row: ExecutionRow): AgentRun {
  return {
    runId: row.id,
    agentType: row.agent_type,
    status: agentStatusOf(row.status),
    stopReason: row.stop_reason,
    iterations: row.iterations,
    response: row.response,
    // pg returns bigint as text; token counts stay far below 2^53 (and the proto's are uint32).
    usage: {
      promptTokens: Number(row.prompt_tokens),
      completionTokens: Number(row.completion_tokens),
      totalTokens: Number(row.total_tokens),
      cachedPromptTokens: Number(row.cached_prompt_tokens),
    },
    parentRunId: row.parent_run_id ?? "",
    createdAt: row.created_at,
    finishedAt: row.finished_at ?? undefined,
  };
}

function emptyStats(agentType: string): StatsRow {
  return {
    agent_type: agentType,
    runs: "0",
    succeeded: "0",
    failed: "0",
    cancelled: "0",
    mean_iterations: null,
    latency_p50_ms: null,
    latency_p95_ms: null,
    prompt_tokens: "0",
    completion_tokens: "0",
    tool_calls: "0",
    tool_errors: "0",
  };
}

function toAgentTypeStats(row: StatsRow): AgentTypeStats {
  const toolCalls = Number(row.tool_calls);
  return {
    agentType: row.agent_type,
    runs: Number(row.runs),
    succeeded: Number(row.succeeded),
    failed: Number(row.failed),
    cancelled: Number(row.cancelled),
    meanIterations: row.mean_iterations ?? 0,
    latencyP50Ms: row.latency_p50_ms ?? 0,
    latencyP95Ms: row.latency_p95_ms ?? 0,
    promptTokens: Number(row.prompt_tokens),
    completionTokens: Number(row.completion_tokens),
    toolCalls,
    toolErrorRate: toolCalls === 0 ? 0 : Number(row.tool_errors) / toolCalls,
  };
}

/** The four token columns, or nulls (keep what progressed recorded) when the loop has no usage. */
function usageColumns(usage: Usage | undefined): Array<number | null> {
  if (usage === undefined) return [null, null, null, null];
  return [count(usage.promptTokens), count(usage.completionTokens), count(usage.totalTokens), count(usage.cachedPromptTokens)];
}

/** A non-negative integer: what a worker or a clock reports may be missing, negative or fractional. */
function count(value: number): number {
  return Number.isFinite(value) && value > 0 ? Math.round(value) : 0;
}

/** PostgreSQL text cannot hold NUL; a tool's output or a model's arguments may. */
function storable(text: string): string {
  return text.includes("\u0000") ? text.replaceAll("\u0000", "\uFFFD") : text;
}

/** The text as stored: at most maxStoredToolJsonBytes of UTF-8, marker included. */
export function capped(text: string): { text: string; bytes: number; truncated: boolean } {
  const clean = storable(text);
  const bytes = Buffer.byteLength(clean, "utf8");
  if (bytes <= maxStoredToolJsonBytes) return { text: clean, bytes, truncated: false };
  const marker = `…[truncated by the run store: ${bytes} bytes in all]`;
  const room = maxStoredToolJsonBytes - Buffer.byteLength(marker, "utf8");
  // Cutting inside a multi-byte character leaves a replacement character at the end: drop it.
  let kept = Buffer.from(clean, "utf8").subarray(0, room).toString("utf8");
  if (kept.endsWith("\uFFFD")) kept = kept.slice(0, -1);
  return { text: kept + marker, bytes, truncated: true };
}
