import { queryWithSignal } from "@vlinders/database";
import type { Logger } from "@vlinders/service-runtime";
import type { Pool } from "pg";

/** What one request to a provider used. */
export interface UsageSample {
  provider: string;
  model: string;
  promptTokens: number;
  completionTokens: number;
}

/** Usage summed over the rows that match a filter. */
export interface UsageTotals {
  provider: string;
  model: string;
  requests: number;
  promptTokens: number;
  completionTokens: number;
}

export interface UsageFilter {
  provider?: string | undefined;
  model?: string | undefined;
  /** Rows recorded at or after this time; a row covers up to one flush interval before it. */
  since?: Date | undefined;
}

export interface UsageRecorderStats {
  /** Rows in memory, not yet written. */
  pendingRows: number;
  /** Rows thrown away since start because the buffer was full (or recorded after close). */
  droppedRows: number;
  /** Flushes that failed since start; their rows were kept. */
  failedFlushes: number;
}

export interface UsageRecorder {
  /** Adds a request's usage to the buffer. Synchronous, never blocks and never throws. */
  record(usage: UsageSample): void;
  /** Writes what the buffer holds; on failure the rows stay for the next flush and the error is thrown. */
  flush(signal: AbortSignal): Promise<void>;
  /** Stops the timer and writes what remains, logging rather than throwing if it cannot. Idempotent. */
  close(signal?: AbortSignal): Promise<void>;
  /** What the database holds, summed per provider and model. Lags by what is still in buffers. */
  report(filter: UsageFilter, signal: AbortSignal): Promise<UsageTotals[]>;
  stats(): UsageRecorderStats;
}

export interface UsageRecorderOptions {
  pool: Pool;
  logger: Logger;
  /** How often the buffer is written (default 5000). */
  flushIntervalMs?: number | undefined;
  /** The most rows one INSERT writes; a buffer that reaches it is written without waiting (default 500). */
  maxBatch?: number | undefined;
  /** The most rows kept while the database cannot be reached; past it the oldest go (default 10000). */
  maxPendingRows?: number | undefined;
}

interface UsageRow {
  provider: string;
  model: string;
  requests: number;
  promptTokens: number;
  completionTokens: number;
  recordedAt: Date;
}

/**
 * Records usage per provider and model off the request path: `record` adds to an in-memory row per
 * provider and model; a timer writes the rows of each interval in one INSERT. A failed write keeps
 * its rows to retry (delivery is at least once: a write whose commit was not acknowledged is written
 * again), with memory bounded by dropping the oldest rows and saying how many. Each row keeps the
 * time its interval ended, so retried rows are not moved forward in time.
 */
export function createUsageRecorder(options: UsageRecorderOptions): UsageRecorder {
  const { pool, logger } = options;
  const flushIntervalMs = options.flushIntervalMs ?? 5_000;
  const maxBatch = Math.max(1, options.maxBatch ?? 500);
  const maxPendingRows = Math.max(1, options.maxPendingRows ?? 10_000);

  /** The interval being filled, one row per provider and model. */
  let current = new Map<string, UsageRow>();
  /** Ended intervals not yet written, oldest first. */
  const pending: UsageRow[] = [];
  let droppedRows = 0;
  let droppedSinceWarning = 0;
  let failedFlushes = 0;
  let closed = false;
  let closing: Promise<void> | undefined;
  let backgroundFlushes = 0;
  // Flushes run one after another, so that two never write the same rows.
  let flushQueue: Promise<void> = Promise.resolve();

  const timer = setInterval(() => void flushInBackground(), flushIntervalMs);
  // Usage must not keep a process alive that has nothing else to do; close() writes the rest.
  timer.unref();

  function drop(count: number): void {
    droppedRows += count;
    droppedSinceWarning += count;
  }

  function dropOldestBeyondLimit(): void {
    const excess = pending.length + current.size - maxPendingRows;
    if (excess > 0) drop(pending.splice(0, Math.min(excess, pending.length)).length);
  }

  function endInterval(): void {
    if (current.size === 0) return;
    const recordedAt = new Date();
    for (const row of current.values()) {
      row.recordedAt = recordedAt;
      pending.push(row);
    }
    current = new Map();
  }

  function warnAboutDrops(): void {
    if (droppedSinceWarning === 0) return;
    logger.warn(
      { dropped_rows: droppedSinceWarning, dropped_rows_total: droppedRows, pending_rows: pending.length + current.size },
      "usage buffer full: dropped the oldest unwritten usage rows",
    );
    droppedSinceWarning = 0;
  }

  async function writePending(signal: AbortSignal): Promise<void> {
    endInterval();
    warnAboutDrops();
    while (pending.length > 0) {
      const batch = pending.splice(0, maxBatch);
      try {
        await insert(batch, signal);
      } catch (error: unknown) {
        pending.unshift(...batch);
        dropOldestBeyondLimit();
        throw error;
      }
    }
  }

  async function insert(rows: UsageRow[], signal: AbortSignal): Promise<void> {
    // unnest keeps one statement text and six parameters whatever the number of rows.
    await queryWithSignal(
      pool,
      `INSERT INTO provider_usage (provider, model, requests, prompt_tokens, completion_tokens, recorded_at)
       SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::timestamptz[])`,
      [
        rows.map((row) => row.provider),
        rows.map((row) => row.model),
        rows.map((row) => row.requests),
        rows.map((row) => row.promptTokens),
        rows.map((row) => row.completionTokens),
        rows.map((row) => row.recordedAt.toISOString()),
      ],
      signal,
    );
  }

  function flush(signal: AbortSignal): Promise<void> {
    const run = flushQueue.then(() => writePending(signal));
    flushQueue = run.catch(() => undefined);
    return run;
  }

  async function flushInBackground(): Promise<void> {
    // A slow database must not pile up flushes: the one running takes the new rows too.
    if (backgroundFlushes > 0 || closed) return;
    backgroundFlushes += 1;
    try {
      await flush(AbortSignal.timeout(Math.max(flushIntervalMs, 10_000)));
    } catch (error: unknown) {
      failedFlushes += 1;
      logger.warn(
        { err: error, pending_rows: pending.length + current.size, failed_flushes: failedFlushes },
        "could not write usage rows; keeping them to retry",
      );
      warnAboutDrops();
    } finally {
      backgroundFlushes -= 1;
    }
  }

  return {
    record(usage) {
      try {
        if (closed) {
          drop(1);
          return;
        }
        const provider = String(usage.provider);
        const model = String(usage.model);
        const key = `${provider}\u0000${model}`;
        let row = current.get(key);
        if (row === undefined) {
          if (pending.length + current.size >= maxPendingRows) {
            // Full: the oldest row goes, or, with nothing older to drop, this sample.
            if (pending.length === 0) {
              drop(1);
              return;
            }
            pending.shift();
            drop(1);
          }
          row = { provider, model, requests: 0, promptTokens: 0, completionTokens: 0, recordedAt: new Date(0) };
          current.set(key, row);
          if (current.size >= maxBatch) setImmediate(() => void flushInBackground());
        }
        row.requests += 1;
        row.promptTokens += tokenCount(usage.promptTokens);
        row.completionTokens += tokenCount(usage.completionTokens);
      } catch {
        // Accounting must never fail a request.
      }
    },

    flush,

    close(signal) {
      closing ??= (async () => {
        closed = true;
        clearInterval(timer);
        try {
          await flush(signal ?? AbortSignal.timeout(10_000));
        } catch (error: unknown) {
          logger.error(
            { err: error, lost_rows: pending.length + current.size },
            "could not write the last usage rows at shutdown; they are lost",
          );
        }
      })();
      return closing;
    },

    async report(filter, signal) {
      const result = await queryWithSignal<{ provider: string; model: string; requests: string; prompt_tokens: string; completion_tokens: string }>(
        pool,
        `SELECT provider, model,
                sum(requests)::bigint AS requests,
                sum(prompt_tokens)::bigint AS prompt_tokens,
                sum(completion_tokens)::bigint AS completion_tokens
         FROM provider_usage
         WHERE ($1::text IS NULL OR provider = $1)
           AND ($2::text IS NULL OR model = $2)
           AND ($3::timestamptz IS NULL OR recorded_at >= $3)
         GROUP BY provider, model
         ORDER BY provider, model`,
        [filter.provider ?? null, filter.model ?? null, filter.since?.toISOString() ?? null],
        signal,
      );
      // pg returns bigint as text; token totals stay far below 2^53.
      return result.rows.map((row) => ({
        provider: row.provider,
        model: row.model,
        requests: Number(row.requests),
        promptTokens: Number(row.prompt_tokens),
        completionTokens: Number(row.completion_tokens),
      }));
    },

    stats() {
      return { pendingRows: pending.length + current.size, droppedRows, failedFlushes };
    },
  };
}

/** A usable token count: what a worker reports may be missing, negative or fractional. */
function tokenCount(value: number): number {
  return Number.isFinite(value) && value > 0 ? Math.floor(value) : 0;
}
