import { WorkerHealth, type WorkerStatus } from "@vlinders/proto";
import type { ModelCatalog, ModelEntry, WorkerEndpoint } from "../registry/model-registry";
import { Worker } from "./worker";

export interface PoolSettings {
  /** Consecutive failed requests or probes that take a worker out of rotation. */
  ejectAfterFailures: number;
  /** How long an ejected worker stays out before a passing probe may bring it back. */
  ejectCooldownMs: number;
  /** Scraped metrics older than this count as missing (the worker is then treated as saturated). */
  metricsStaleAfterMs: number;
}

export const defaultPoolSettings: PoolSettings = { ejectAfterFailures: 3, ejectCooldownMs: 10_000, metricsStaleAfterMs: 15_000 };

/** One request's hold on a worker; `release` must be called exactly once when the request ends. */
export interface WorkerLease {
  worker: Worker;
  /** Aborted if the worker is removed by force while the request runs. */
  signal: AbortSignal;
  release(outcome: "success" | "failure" | "neutral", reason?: string): void;
}

/** Called when a worker changes state, for metrics and logs. */
export type PoolObserver = (event: { worker: Worker; change: "added" | "removed" | "healthy" | "ejected" | "recovered" | "draining" }) => void;

/**
 * The live state of every worker: health, load, the models it serves. Workers can be added,
 * drained and removed while requests run: a removed worker leaves the pool once its last request
 * has ended, unless removed by force.
 */
export class WorkerPool {
  private readonly workers = new Map<string, Worker>();
  /** Workers leaving the pool, with the callbacks waiting for their last request. */
  private readonly leaving = new Map<string, Array<() => void>>();

  constructor(
    readonly settings: PoolSettings = defaultPoolSettings,
    private readonly observe: PoolObserver = () => {},
  ) {}

  get(id: string): Worker | undefined {
    return this.workers.get(id);
  }

  all(): Worker[] {
    return [...this.workers.values()];
  }

  /**
   * The workers that may take a new request for this model. When every one of them is ejected,
   * all of them are (Envoy's "panic mode"): probes that time out under heavy load must not turn a
   * busy fleet into an empty one. Draining and leaving workers are never candidates.
   */
  candidatesFor(model: ModelEntry): Worker[] {
    const candidates: Worker[] = [];
    let ejected: Worker[] | undefined;
    for (const endpoint of model.workers) {
      const worker = this.workers.get(endpoint.id);
      if (!worker || this.leaving.has(worker.id)) continue;
      if (worker.routable) candidates.push(worker);
      else if (worker.health === WorkerHealth.WORKER_HEALTH_EJECTED) (ejected ??= []).push(worker);
    }
    return candidates.length > 0 ? candidates : (ejected ?? candidates);
  }

  /**
   * Brings the pool in line with a catalog: new workers join (as UNKNOWN until probed), changed
   * endpoints are updated in place, and workers no longer listed drain and leave when idle.
   */
  sync(catalog: ModelCatalog): { added: string[]; removed: string[] } {
    const wanted = new Map<string, { endpoint: WorkerEndpoint; models: Set<string> }>();
    for (const model of catalog.models) {
      for (const endpoint of model.workers) {
        const entry = wanted.get(endpoint.id) ?? { endpoint, models: new Set<string>() };
        entry.models.add(model.id);
        wanted.set(endpoint.id, entry);
      }
    }
    const added: string[] = [];
    for (const [id, { endpoint, models }] of wanted) {
      if (!this.workers.has(id)) added.push(id);
      // A reload keeps an operator's drain; it only takes back a worker it had itself let go.
      this.add(endpoint, [], this.leaving.has(id)).models = models;
    }
    const removed = [...this.workers.keys()].filter((id) => !wanted.has(id) && !this.leaving.has(id));
    for (const id of removed) void this.remove(id, false);
    return { added, removed };
  }

  /**
   * Adds a worker, or updates the one with the same id; a draining or leaving worker is taken
   * back into rotation (its pending removal resolves as cancelled).
   */
  add(endpoint: WorkerEndpoint, models: Iterable<string> = [], readmit = true): Worker {
    const existing = this.workers.get(endpoint.id);
    if (existing) {
      existing.endpoint = endpoint;
      for (const model of models) existing.models.add(model);
      if (readmit && existing.health === WorkerHealth.WORKER_HEALTH_DRAINING) existing.health = WorkerHealth.WORKER_HEALTH_UNKNOWN;
      const waiters = this.leaving.get(endpoint.id) ?? [];
      this.leaving.delete(endpoint.id);
      for (const resolve of waiters) resolve();
      return existing;
    }
    const worker = new Worker(endpoint);
    for (const model of models) worker.models.add(model);
    this.workers.set(endpoint.id, worker);
    this.observe({ worker, change: "added" });
    return worker;
  }

  /** No new requests go to the worker; those in flight finish. */
  drain(id: string): Worker | undefined {
    const worker = this.workers.get(id);
    if (!worker) return undefined;
    worker.health = WorkerHealth.WORKER_HEALTH_DRAINING;
    this.observe({ worker, change: "draining" });
    return worker;
  }

  /**
   * Takes the worker out: at once with `force` (its requests in flight are aborted), otherwise
   * when its last request in flight ends. Resolves once it is gone.
   */
  remove(id: string, force: boolean): Promise<void> {
    const worker = this.workers.get(id);
    if (!worker) return Promise.resolve();
    worker.health = WorkerHealth.WORKER_HEALTH_DRAINING;
    if (force || worker.inFlight === 0) {
      if (force) worker.removal.abort(new Error(`worker ${id} was removed`));
      this.forget(worker);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const waiters = this.leaving.get(id) ?? [];
      waiters.push(resolve);
      this.leaving.set(id, waiters);
    });
  }

  /** Starts a request on the worker. */
  lease(worker: Worker): WorkerLease {
    worker.inFlight += 1;
    let released = false;
    return {
      worker,
      signal: worker.removal.signal,
      release: (outcome, reason) => {
        if (released) return;
        released = true;
        worker.inFlight -= 1;
        if (outcome === "success") this.recordSuccess(worker);
        else if (outcome === "failure") this.recordFailure(worker, reason ?? "request failed");
        if (worker.inFlight === 0 && this.leaving.has(worker.id) && this.workers.get(worker.id) === worker) this.forget(worker);
      },
    };
  }

  recordSuccess(worker: Worker): void {
    worker.consecutiveFailures = 0;
    worker.lastHeartbeat = new Date();
  }

  /** Passive health: enough failures in a row eject the worker for the cooldown. */
  recordFailure(worker: Worker, reason: string): void {
    worker.consecutiveFailures += 1;
    worker.lastError = reason;
    if (worker.consecutiveFailures >= this.settings.ejectAfterFailures && worker.routable) {
      worker.health = WorkerHealth.WORKER_HEALTH_EJECTED;
      worker.ejectedUntil = performance.now() + this.settings.ejectCooldownMs;
      this.observe({ worker, change: "ejected" });
    }
  }

  /**
   * Active health: a passing probe marks a new worker healthy and readmits an ejected one after its
   * cooldown. `heard` false: nothing was heard from the worker (a remote provider, which is not
   * probed), so its last heartbeat stays the last answer it gave.
   */
  recordProbeSuccess(worker: Worker, heard = true): void {
    if (heard) worker.lastHeartbeat = new Date();
    if (worker.health === WorkerHealth.WORKER_HEALTH_UNKNOWN) {
      worker.health = WorkerHealth.WORKER_HEALTH_HEALTHY;
      worker.consecutiveFailures = 0;
      this.observe({ worker, change: "healthy" });
    } else if (worker.health === WorkerHealth.WORKER_HEALTH_EJECTED && performance.now() >= worker.ejectedUntil) {
      worker.health = WorkerHealth.WORKER_HEALTH_HEALTHY;
      worker.consecutiveFailures = 0;
      this.observe({ worker, change: "recovered" });
    }
  }

  status(): WorkerStatus[] {
    const now = performance.now();
    return this.all()
      .map((worker) => worker.status(now, this.settings.metricsStaleAfterMs))
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  /** True while this very worker (not a later one with the same id) is in the pool. */
  holds(worker: Worker): boolean {
    return this.workers.get(worker.id) === worker;
  }

  private forget(worker: Worker): void {
    // A worker removed by force may end its last request after another took its id.
    if (!this.holds(worker)) return;
    this.workers.delete(worker.id);
    const waiters = this.leaving.get(worker.id) ?? [];
    this.leaving.delete(worker.id);
    this.observe({ worker, change: "removed" });
    for (const resolve of waiters) resolve();
  }
}
