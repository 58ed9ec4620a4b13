import { linkSignals, type Logger } from "@vlinders/service-runtime";
import type { PostgresRunStore } from "./postgres-run-store";

/** Options of {@link startRunSweeper}. */
export interface RunSweeperOptions {
  store: PostgresRunStore;
  logger: Logger;
  /** Time between two ticks (heartbeat, then sweep); default: the store's heartbeatIntervalMs. */
  intervalMs?: number | undefined;
  /** The deadline of the recovery at start (default 30000). */
  recoveryTimeoutMs?: number | undefined;
}

/** A running sweeper. */
export interface RunSweeper {
  /** Runs this replica left `running` in a previous life, marked interrupted at start. */
  readonly recovered: readonly string[];
  /** Stops the ticks, aborting the one in flight, and waits for it. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Crash recovery of run records, for one replica:
 * 1. at start (awaited, so before this replica takes runs), marks interrupted the runs a previous
 *    process with the same owner left `running`;
 * 2. then, every interval, refreshes the heartbeat of the runs this replica is running (one UPDATE)
 *    and marks interrupted the running runs of any owner whose heartbeat is older than the store's
 *    staleAfterMs, so that a replica that never comes back (a new pod name) is cleaned up too.
 * Every replica sweeps; the sweep is one UPDATE on a partial index, and two replicas sweeping the
 * same run at once is harmless (the row is updated once, `WHERE status = 'running'`).
 * Ticks never overlap: the next is scheduled when one ends. A failed tick is logged and retried.
 */
export async function startRunSweeper(options: RunSweeperOptions): Promise<RunSweeper> {
  const { store, logger } = options;
  const intervalMs = options.intervalMs ?? store.heartbeatIntervalMs;
  const recovered = await store.recoverOwnRuns(AbortSignal.timeout(options.recoveryTimeoutMs ?? 30_000));

  const stopping = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let ticking: Promise<void> | undefined;
  let consecutiveFailures = 0;

  async function tick(): Promise<void> {
    // A tick may take as long as an interval, never longer: a stuck database must not stack them.
    const linked = linkSignals(stopping.signal, AbortSignal.timeout(intervalMs));
    try {
      await store.heartbeat(linked.signal);
      await store.sweepStale(linked.signal);
      consecutiveFailures = 0;
    } catch (error: unknown) {
      if (stopping.signal.aborted) return;
      consecutiveFailures += 1;
      // The heartbeat matters most: after staleAfterMs without one, other replicas interrupt this
      // one's runs (their real outcome still replaces that when they end).
      logger.warn({ err: error, consecutive_failures: consecutiveFailures }, "run heartbeat or sweep failed; retrying at the next interval");
    } finally {
      linked.dispose();
    }
  }

  function schedule(): void {
    if (stopping.signal.aborted) return;
    timer = setTimeout(() => {
      ticking = tick().finally(() => {
        ticking = undefined;
        schedule();
      });
    }, intervalMs);
    // The server keeps the process alive; the sweeper alone must not.
    timer.unref();
  }

  schedule();
  let stopped: Promise<void> | undefined;
  return {
    recovered,
    stop() {
      stopped ??= (async () => {
        stopping.abort(new Error("the run sweeper stopped"));
        clearTimeout(timer);
        await ticking;
      })();
      return stopped;
    },
  };
}
