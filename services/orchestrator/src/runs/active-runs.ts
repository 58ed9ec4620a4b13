import { AgentStatus } from "@vlinders/proto";
import { createLogThrottle } from "@vlinders/redis";
import { linkSignals, type Logger } from "@vlinders/service-runtime";
import type { Redis } from "ioredis";
import { ServerError, Status } from "nice-grpc-common";
import { isFinalStatus } from "./postgres-run-store";
import type { RunStore } from "./run-records";

/**
 * The abort reason of a run cancelled through CancelAgent, so that the loop can tell it from a
 * client that went away or a deadline, and record `reason` as the stop reason.
 */
export class RunCancelledError extends Error {
  override name = "RunCancelledError";

  constructor(
    readonly runId: string,
    readonly reason: string,
  ) {
    super(`run ${runId} was cancelled${reason === "" ? "" : `: ${reason}`}`);
  }
}

/** The runs executing in this process, each with the controller that aborts it. */
export interface ActiveRuns {
  /**
   * Adds a run; returns the function that removes it. The loop calls that in a `finally`, after it
   * has recorded the run's end, so that a cancel waiting for the run reads the final status.
   * Throws if the run id is already registered.
   */
  register(runId: string, controller: AbortController): () => void;
  /** Aborts the run with a RunCancelledError if this process runs it; returns whether it does. */
  cancel(runId: string, reason: string): boolean;
  has(runId: string): boolean;
  /** Resolves true once the run is removed (at once if it is not here), false if `signal` aborts first. */
  waitUntilRemoved(runId: string, signal: AbortSignal): Promise<boolean>;
  /** How many runs are registered. */
  size(): number;
}

interface ActiveRun {
  readonly controller: AbortController;
  readonly removed: Promise<void>;
  readonly markRemoved: () => void;
}

/** A registry of the runs of this process (one per process, passed to whoever needs it). */
export function createActiveRuns(): ActiveRuns {
  const runs = new Map<string, ActiveRun>();

  return {
    register(runId, controller) {
      if (runs.has(runId)) throw new Error(`run ${runId} is already registered as running in this process`);
      let markRemoved = (): void => {};
      const removed = new Promise<void>((resolve) => {
        markRemoved = resolve;
      });
      const run: ActiveRun = { controller, removed, markRemoved };
      runs.set(runId, run);
      return () => {
        // Only the registration this function belongs to.
        if (runs.get(runId) !== run) return;
        runs.delete(runId);
        run.markRemoved();
      };
    },

    cancel(runId, reason) {
      const run = runs.get(runId);
      if (run === undefined) return false;
      if (!run.controller.signal.aborted) run.controller.abort(new RunCancelledError(runId, reason));
      return true;
    },

    has(runId) {
      return runs.has(runId);
    },

    async waitUntilRemoved(runId, signal) {
      const run = runs.get(runId);
      if (run === undefined) return true;
      if (signal.aborted) return false;
      return new Promise<boolean>((resolve) => {
        const onAbort = (): void => resolve(false);
        signal.addEventListener("abort", onAbort, { once: true });
        void run.removed.then(() => {
          signal.removeEventListener("abort", onAbort);
          resolve(true);
        });
      });
    },

    size() {
      return runs.size;
    },
  };
}

/** Options of {@link createRunCanceller}. */
export interface RunCancellerOptions {
  activeRuns: ActiveRuns;
  store: Pick<RunStore, "get">;
  logger: Logger;
  /**
   * With REDIS_URL: a client made by createRedisConnection (not closed by the canceller), used to
   * publish cancels; the canceller opens a duplicate of it for its subscription, and closes that.
   */
  redis?: Redis | undefined;
  /** The channel every replica listens on (default "vlinders:orchestrator:cancel-run"). */
  channel?: string | undefined;
  /** How long `cancel` waits to see the run end before it answers RUNNING (default 3000). */
  settleTimeoutMs?: number | undefined;
  /** How long to wait at start for the subscription before going on without it (default 2000). */
  subscribeTimeoutMs?: number | undefined;
}

/** CancelAgent's logic. */
export interface RunCanceller {
  /**
   * Cancels the run wherever it runs and returns its status afterwards: the final one when the run
   * ended within settleTimeoutMs (normally CANCELLED), RUNNING when it is still stopping. A finished
   * run's status comes back unchanged. Throws NOT_FOUND for an unknown run id, UNAVAILABLE when the
   * run is on another replica and Redis cannot be reached.
   */
  cancel(runId: string, reason: string, signal: AbortSignal): Promise<AgentStatus>;
  /** Ends the subscription. Idempotent. */
  close(): Promise<void>;
}

interface CancelMessage {
  runId: string;
  reason: string;
}

const pollIntervalMs = 100;

/**
 * CancelAgent across replicas. A run held by this process is aborted here. Otherwise, when the
 * record says it is running and Redis is configured, the cancel is published on a channel that
 * every replica subscribes to, and the replica that holds it aborts it (Redis pub/sub delivers at
 * most once, to those connected: a replica that is reconnecting misses it, and the caller sees
 * RUNNING and may cancel again). Without Redis there is one process, so a run not held here is not
 * running anywhere: its record is reported as it is (the sweep interrupts an orphan left `running`).
 * Either way the answer is read from the run store, the record of truth.
 */
export async function createRunCanceller(options: RunCancellerOptions): Promise<RunCanceller> {
  const { activeRuns, store, logger, redis } = options;
  const channel = options.channel ?? "vlinders:orchestrator:cancel-run";
  const settleTimeoutMs = options.settleTimeoutMs ?? 3_000;
  const subscription = redis === undefined ? undefined : await subscribe(redis, channel, activeRuns, logger, options.subscribeTimeoutMs ?? 2_000);

  async function statusOf(runId: string, signal: AbortSignal): Promise<AgentStatus> {
    const run = await store.get(runId, signal);
    if (run === undefined) throw new ServerError(Status.NOT_FOUND, `run_id: no run "${runId}"`);
    return run.status;
  }

  /** Reads the record until the run has ended or the settle deadline passes; the last status read. */
  async function settledStatus(runId: string, signal: AbortSignal): Promise<AgentStatus> {
    const deadline = Date.now() + settleTimeoutMs;
    for (;;) {
      const status = await statusOf(runId, signal);
      if (isFinalStatus(status) || Date.now() >= deadline) return status;
      await delay(Math.min(pollIntervalMs, deadline - Date.now()), signal);
    }
  }

  return {
    async cancel(runId, reason, signal) {
      if (activeRuns.cancel(runId, reason)) {
        const settle = linkSignals(signal, AbortSignal.timeout(settleTimeoutMs));
        try {
          await activeRuns.waitUntilRemoved(runId, settle.signal);
        } finally {
          settle.dispose();
        }
        if (signal.aborted) throw abortError(signal);
        // A run cancelled while it waited for a slot never started, so nothing recorded it.
        const run = await store.get(runId, signal);
        return run === undefined ? AgentStatus.AGENT_STATUS_CANCELLED : run.status;
      }
      const status = await statusOf(runId, signal);
      if (isFinalStatus(status)) return status;
      if (redis === undefined) {
        logger.warn({ run_id: runId, status: AgentStatus[status] }, "cancel of a run this process does not hold, with no Redis to reach other replicas; reporting its record");
        return status;
      }
      const message: CancelMessage = { runId, reason };
      try {
        await redis.publish(channel, JSON.stringify(message));
      } catch (error: unknown) {
        throw new ServerError(
          Status.UNAVAILABLE,
          `run ${runId} runs on another replica, which cannot be reached: Redis failed (${error instanceof Error ? error.message : String(error)}); retry`,
        );
      }
      return settledStatus(runId, signal);
    },

    async close() {
      await subscription?.close();
    },
  };
}

async function subscribe(
  redis: Redis,
  channel: string,
  activeRuns: ActiveRuns,
  logger: Logger,
  timeoutMs: number,
): Promise<{ close(): Promise<void> }> {
  const log = logger.child({ redis_channel: channel });
  const throttle = createLogThrottle();
  // A connection in subscriber mode can send nothing else, hence a connection of its own. Unlike
  // the request path's, it queues commands while disconnected and retries them without limit, so
  // that a SUBSCRIBE sent while Redis is down takes effect when it is back (and ioredis subscribes
  // again after each reconnection).
  const subscriber = redis.duplicate({
    connectionName: `${redis.options.connectionName ?? "orchestrator"}-cancel-subscriber`,
    lazyConnect: true,
    enableOfflineQueue: true,
    maxRetriesPerRequest: null,
    autoResubscribe: true,
    commandTimeout: undefined,
  });
  subscriber.on("error", (error: Error) => {
    const suppressed = throttle();
    if (suppressed !== undefined) log.warn({ err: error, suppressed }, "redis subscription for run cancels failed; reconnecting");
  });
  subscriber.on("message", (from: string, text: string) => {
    if (from !== channel) return;
    const message = parseCancel(text);
    if (message === undefined) {
      log.warn({ message: text.slice(0, 200) }, "ignored a malformed run cancel message");
      return;
    }
    if (activeRuns.cancel(message.runId, message.reason)) log.info({ run_id: message.runId }, "cancelled a run on request of another replica");
  });
  // The 'error' listener reports connection failures; the promises need only be settled.
  subscriber.connect().catch(() => undefined);
  const subscribed = subscriber.subscribe(channel).then(
    () => true,
    (error: unknown) => {
      log.error({ err: error }, "could not subscribe to run cancels: this replica's runs can only be cancelled through it");
      return false;
    },
  );
  const startWait = new AbortController();
  const inTime = await Promise.race([subscribed, delay(timeoutMs, startWait.signal).then(() => undefined)]);
  // Clears the timer of the wait that lost, which would otherwise hold the process for its length.
  startWait.abort();
  if (inTime === undefined) {
    log.warn({ timeout_ms: timeoutMs }, "redis is not reachable yet: cancels from other replicas reach this one once it is");
  }
  let closing: Promise<void> | undefined;
  return {
    close() {
      closing ??= (async () => {
        // QUIT ends a pending SUBSCRIBE too; disconnect stops the reconnection attempts.
        if (subscriber.status === "ready") await subscriber.quit().catch(() => undefined);
        subscriber.disconnect();
        await subscribed;
      })();
      return closing;
    },
  };
}

function parseCancel(text: string): CancelMessage | undefined {
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value !== "object" || value === null) return undefined;
    const { runId, reason } = value as Record<string, unknown>;
    if (typeof runId !== "string" || runId === "") return undefined;
    return { runId, reason: typeof reason === "string" ? reason : "" };
  } catch {
    return undefined;
  }
}

function abortError(signal: AbortSignal): Error {
  const error = new Error("the cancel request was aborted", { cause: signal.reason });
  error.name = "AbortError";
  return error;
}

/** Resolves after `ms`, or at once when `signal` aborts (the caller checks the signal). */
function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
