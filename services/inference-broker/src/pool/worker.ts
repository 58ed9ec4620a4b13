import { setMaxListeners } from "node:events";
import { WorkerHealth, type WorkerStatus } from "@vlinders/proto";
import type { WorkerEndpoint } from "../registry/model-registry";

/** What the broker knows about one worker right now. Mutated only by the pool and its prober. */
export class Worker {
  health: WorkerHealth = WorkerHealth.WORKER_HEALTH_UNKNOWN;
  /** Requests this broker has in flight on the worker. */
  inFlight = 0;
  /** From the last scrape of the worker's /metrics. */
  running = 0;
  waiting = 0;
  kvCacheUsage = 0;
  /** This broker's in-flight count at the moment of the last scrape, to tell our load from others'. */
  inFlightAtScrape = 0;
  /** performance.now() of the last successful scrape; undefined before the first. */
  scrapedAt: number | undefined;
  lastHeartbeat: Date | undefined;
  consecutiveFailures = 0;
  /** Ejected workers come back no earlier than this (performance.now()). */
  ejectedUntil = 0;
  lastError = "";
  /** Aborted when the worker is removed by force: its requests in flight end at once. */
  readonly removal = new AbortController();
  models = new Set<string>();

  constructor(public endpoint: WorkerEndpoint) {
    // Every request in flight on the worker listens to its removal.
    setMaxListeners(0, this.removal.signal);
  }

  get id(): string {
    return this.endpoint.id;
  }

  get capacity(): number {
    return this.endpoint.maxNumSeqs ?? 256;
  }

  /** Takes new requests: healthy, or not probed yet (a new worker is tried rather than idle). */
  get routable(): boolean {
    return this.health === WorkerHealth.WORKER_HEALTH_HEALTHY || this.health === WorkerHealth.WORKER_HEALTH_UNKNOWN;
  }

  /** Metrics older than this are not trusted: the worker then counts as saturated. */
  metricsStale(now: number, staleAfterMs: number): boolean {
    return this.scrapedAt === undefined || now - this.scrapedAt > staleAfterMs;
  }

  /**
   * Load as a fraction of capacity: our own in-flight requests (always current) plus what the last
   * scrape showed beyond ours (other broker replicas, queued requests), plus half the KV-cache
   * pressure. A worker without fresh metrics is treated as full.
   */
  load(now: number, staleAfterMs: number): number {
    if (this.metricsStale(now, staleAfterMs)) return 1 + this.inFlight / this.capacity;
    const others = Math.max(0, this.running + this.waiting - this.inFlightAtScrape);
    return (this.inFlight + others) / this.capacity + 0.5 * this.kvCacheUsage;
  }

  status(now: number, staleAfterMs: number): WorkerStatus {
    return {
      id: this.id,
      url: this.endpoint.url,
      health: this.health,
      models: [...this.models].sort(),
      inFlight: this.inFlight,
      running: this.running,
      waiting: this.waiting,
      kvCacheUsage: this.kvCacheUsage,
      metricsStale: this.metricsStale(now, staleAfterMs),
      lastHeartbeat: this.lastHeartbeat,
      consecutiveFailures: this.consecutiveFailures,
      maxNumSeqs: this.endpoint.maxNumSeqs ?? 0,
      lastError: this.lastError,
    };
  }
}
