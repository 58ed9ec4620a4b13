import { withRetryAfter } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/** A run slot, held from admission until released. */
export interface AdmissionTicket {
  /** How long the request waited in the queue, in milliseconds (0 when a slot was free). */
  readonly waitedMs: number;
  /** Gives the slot back (to the next queued request, if any). Idempotent. */
  release(): void;
}

/** What health and /metrics report. */
export interface AdmissionStats {
  /** Runs holding a slot. */
  active: number;
  /** Requests waiting for one. */
  queued: number;
  maxConcurrentRuns: number;
  maxQueuedRuns: number;
}

/** Admission of agent runs in this process. */
export interface AdmissionController {
  /**
   * Resolves with a slot, at once when one is free, otherwise after waiting in the queue. Rejects:
   * - at once with RESOURCE_EXHAUSTED when the queue is full;
   * - with RESOURCE_EXHAUSTED when no slot came within queueTimeoutMs;
   * - with an AbortError (CANCELLED at the error boundary) as soon as `signal` aborts, leaving the queue.
   * Both RESOURCE_EXHAUSTED messages end with "retry after ~N ms". The caller releases the ticket in a `finally`.
   * `onQueued` is called, before this returns, when the run has to wait, with the runs waiting.
   */
  admit(userId: string, signal: AbortSignal, onQueued?: (queuedRuns: number) => void): Promise<AdmissionTicket>;
  stats(): AdmissionStats;
}

/** Options of {@link createAdmissionController}. */
export interface AdmissionControllerOptions {
  /** Runs that execute at once (MAX_CONCURRENT_RUNS); at least 1. */
  maxConcurrentRuns: number;
  /** Requests that may wait for a slot; 0: none, refused when every slot is busy. */
  maxQueuedRuns: number;
  /** The longest a request waits in the queue. */
  queueTimeoutMs: number;
  /** Where the admission metrics are registered (once per registry); none without it. */
  registry?: Registry | undefined;
  /** The retry hint before any run has ended: the assumed length of a run (default 5000). */
  assumedRunMs?: number | undefined;
}

interface Waiter {
  readonly userId: string;
  grant(): void;
}

/** An error named AbortError, which the error boundary maps to CANCELLED (or UNAVAILABLE at shutdown). */
function abortError(signal: AbortSignal): Error {
  const error = new Error("the request was cancelled while waiting for a run slot", { cause: signal.reason });
  error.name = "AbortError";
  return error;
}

// The retry hint stays within these bounds: below, clients would hammer; above, a hint is a guess.
const minRetryHintMs = 100;
const maxRetryHintMs = 60_000;
// Weight of the newest run in the average run length: about the last ten runs count.
const runLengthSmoothing = 0.1;

/**
 * MAX_CONCURRENT_RUNS slots and a bounded queue in front of them, fair across users: each user has
 * a FIFO queue of their own, and a freed slot goes to the user at the head of a round-robin ring,
 * who then moves to its back. One user's thousand queued runs thus delay another user's one by at
 * most one run per user ahead of it, not by a thousand.
 *
 * The retry hint is an estimate: the average length of recent runs (an exponential moving average
 * of the time tickets were held; `assumedRunMs` before any ended) times the rounds of
 * `maxConcurrentRuns` runs the queue ahead needs, within 100 ms .. 60 s.
 *
 * A request that waited queueTimeoutMs gets RESOURCE_EXHAUSTED rather than DEADLINE_EXCEEDED: the
 * server is overloaded, the client's own deadline has not passed (that one aborts `signal`), and
 * RESOURCE_EXHAUSTED tells a client to back off and retry.
 *
 * All state lives in this object, touched synchronously on the event loop: no locks, no other
 * shared state on the hot path.
 */
export function createAdmissionController(options: AdmissionControllerOptions): AdmissionController {
  const { maxConcurrentRuns, maxQueuedRuns, queueTimeoutMs } = options;
  if (!Number.isInteger(maxConcurrentRuns) || maxConcurrentRuns < 1) {
    throw new Error(`createAdmissionController: maxConcurrentRuns must be a positive integer (got ${maxConcurrentRuns})`);
  }
  if (!Number.isInteger(maxQueuedRuns) || maxQueuedRuns < 0) {
    throw new Error(`createAdmissionController: maxQueuedRuns must be a non-negative integer (got ${maxQueuedRuns})`);
  }
  if (!(queueTimeoutMs > 0)) throw new Error(`createAdmissionController: queueTimeoutMs must be positive (got ${queueTimeoutMs})`);

  let active = 0;
  let queued = 0;
  let averageRunMs = options.assumedRunMs ?? 5_000;
  /** Per user, its waiters in arrival order; the Map's order is the round-robin ring. */
  const queues = new Map<string, Set<Waiter>>();

  const metrics = options.registry === undefined ? undefined : createAdmissionMetrics(options.registry, () => ({ active, queued }));

  function retryHintMs(): number {
    const rounds = Math.ceil((queued + 1) / maxConcurrentRuns);
    return Math.round(Math.min(maxRetryHintMs, Math.max(minRetryHintMs, averageRunMs * rounds)));
  }

  function limits(): string {
    return `${active} running, ${queued} queued (MAX_CONCURRENT_RUNS=${maxConcurrentRuns}, MAX_QUEUED_RUNS=${maxQueuedRuns})`;
  }

  function removeWaiter(waiter: Waiter): void {
    const queue = queues.get(waiter.userId);
    if (queue === undefined || !queue.delete(waiter)) return;
    queued -= 1;
    if (queue.size === 0) queues.delete(waiter.userId);
  }

  /** The next waiter by round-robin over users, taken out of the queue. */
  function nextWaiter(): Waiter | undefined {
    const first = queues.entries().next();
    if (first.done === true) return undefined;
    const [userId, queue] = first.value;
    const waiter = queue.values().next().value;
    if (waiter === undefined) {
      queues.delete(userId);
      return undefined;
    }
    queue.delete(waiter);
    queued -= 1;
    // To the back of the ring: every other waiting user goes before this one's next run.
    queues.delete(userId);
    if (queue.size > 0) queues.set(userId, queue);
    return waiter;
  }

  function issueTicket(waitedMs: number): AdmissionTicket {
    const admittedAt = performance.now();
    let released = false;
    metrics?.admitted.inc();
    metrics?.queueWait.observe(waitedMs / 1000);
    return {
      waitedMs,
      release() {
        if (released) return;
        released = true;
        averageRunMs += runLengthSmoothing * (performance.now() - admittedAt - averageRunMs);
        // The slot passes straight to the next waiter, so `active` never dips below the limit
        // while requests wait (nobody arriving meanwhile can jump the queue).
        const next = nextWaiter();
        if (next === undefined) active -= 1;
        else next.grant();
      },
    };
  }

  return {
    admit(userId, signal, onQueued) {
      if (signal.aborted) return Promise.reject(abortError(signal));
      if (active < maxConcurrentRuns && queued === 0) {
        active += 1;
        return Promise.resolve(issueTicket(0));
      }
      if (queued >= maxQueuedRuns) {
        metrics?.rejected.inc({ reason: "queue_full" });
        const hint = retryHintMs();
        return Promise.reject(withRetryAfter(new ServerError(Status.RESOURCE_EXHAUSTED, `too many agent runs: ${limits()}; retry after ~${hint} ms`), hint));
      }
      return new Promise<AdmissionTicket>((resolve, reject) => {
        const enqueuedAt = performance.now();
        const settle = (): void => {
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          removeWaiter(waiter);
        };
        const onAbort = (): void => {
          settle();
          metrics?.rejected.inc({ reason: "cancelled" });
          reject(abortError(signal));
        };
        const waiter: Waiter = {
          userId,
          grant: () => {
            settle();
            resolve(issueTicket(performance.now() - enqueuedAt));
          },
        };
        const timer = setTimeout(() => {
          settle();
          metrics?.rejected.inc({ reason: "queue_timeout" });
          const hint = retryHintMs();
          reject(
            withRetryAfter(
              new ServerError(Status.RESOURCE_EXHAUSTED, `no agent run slot became free within ${queueTimeoutMs} ms: ${limits()}; retry after ~${hint} ms`),
              hint,
            ),
          );
        }, queueTimeoutMs);
        signal.addEventListener("abort", onAbort, { once: true });
        let queue = queues.get(userId);
        if (queue === undefined) {
          queue = new Set();
          queues.set(userId, queue);
        }
        queue.add(waiter);
        queued += 1;
        onQueued?.(queued);
      });
    },

    stats() {
      return { active, queued, maxConcurrentRuns, maxQueuedRuns };
    },
  };
}

interface AdmissionMetrics {
  admitted: Counter;
  rejected: Counter<"reason">;
  queueWait: Histogram;
}

function createAdmissionMetrics(registry: Registry, read: () => { active: number; queued: number }): AdmissionMetrics {
  // Gauges read the controller when scraped: no second copy of the counts to keep in step.
  new Gauge({
    name: "orchestrator_runs_active",
    help: "Agent runs holding a run slot.",
    registers: [registry],
    collect() {
      this.set(read().active);
    },
  });
  new Gauge({
    name: "orchestrator_runs_queued",
    help: "Agent runs waiting for a run slot.",
    registers: [registry],
    collect() {
      this.set(read().queued);
    },
  });
  return {
    admitted: new Counter({ name: "orchestrator_runs_admitted_total", help: "Agent runs given a run slot.", registers: [registry] }),
    rejected: new Counter({
      name: "orchestrator_runs_rejected_total",
      help: "Agent runs refused a slot: queue_full (at once), queue_timeout, cancelled (the caller gave up while queued).",
      labelNames: ["reason"],
      registers: [registry],
    }),
    queueWait: new Histogram({
      name: "orchestrator_admission_queue_wait_seconds",
      help: "Time admitted runs waited for a run slot, in seconds (0 when one was free).",
      buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: [registry],
    }),
  };
}
