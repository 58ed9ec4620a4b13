import { setMaxListeners } from "node:events";
import { linkSignals, type Logger } from "@vlinders/service-runtime";
import { sumPrometheusSamples } from "./prometheus-text";
import type { Worker } from "./worker";
import type { WorkerPool } from "./worker-pool";

export interface HealthProberSettings {
  intervalMs: number;
  /** Each probe and scrape must answer within this. */
  timeoutMs: number;
}

const runningMetric = "vllm:num_requests_running";
const waitingMetric = "vllm:num_requests_waiting";
// vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc; either may be served.
const kvMetrics = ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"] as const;

/**
 * Active health: every interval each worker's /health is probed and its /metrics scraped (load
 * for routing). Workers of remote providers have neither endpoint; only passive health (request
 * failures) applies to them, and they are readmitted once their cooldown is over.
 */
export function startHealthProber(pool: WorkerPool, settings: HealthProberSettings, logger: Logger): { probeNow(): Promise<void>; stop(): void } {
  const controller = new AbortController();
  setMaxListeners(0, controller.signal);
  let running: Promise<void> | undefined;

  async function probe(worker: Worker): Promise<void> {
    if (worker.endpoint.provider !== undefined) {
      pool.recordProbeSuccess(worker, false);
      return;
    }
    const linked = linkSignals(controller.signal, AbortSignal.timeout(settings.timeoutMs));
    const signal = linked.signal;
    const inFlightAtScrape = worker.inFlight;
    try {
      const [healthAnswer, metricsAnswer] = await Promise.allSettled([
        fetch(`${worker.endpoint.url}/health`, { signal }).then(async (response) => {
          await response.body?.cancel();
          return response.status;
        }),
        fetch(`${worker.endpoint.url}/metrics`, { signal }).then(async (response) => {
          if (response.ok) return response.text();
          await response.body?.cancel();
          return undefined;
        }),
      ]);
      if (healthAnswer.status === "rejected") throw healthAnswer.reason;
      if (healthAnswer.value < 200 || healthAnswer.value >= 300) throw new Error(`/health answered HTTP ${healthAnswer.value}`);
      const metrics = metricsAnswer.status === "fulfilled" ? metricsAnswer.value : undefined;
      if (metrics !== undefined) {
        const samples = sumPrometheusSamples(metrics, [runningMetric, waitingMetric, ...kvMetrics]);
        worker.running = samples.get(runningMetric) ?? 0;
        worker.waiting = samples.get(waitingMetric) ?? 0;
        worker.kvCacheUsage = Math.max(...kvMetrics.map((name) => samples.get(name) ?? 0));
        worker.inFlightAtScrape = inFlightAtScrape;
        worker.scrapedAt = performance.now();
      }
      pool.recordProbeSuccess(worker);
    } catch (error: unknown) {
      if (controller.signal.aborted) return;
      const reason = `health probe failed: ${error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error)}`;
      const wasRoutable = worker.routable;
      pool.recordFailure(worker, reason);
      if (wasRoutable && !worker.routable) logger.warn({ worker: worker.id, reason }, "worker ejected");
    } finally {
      linked.dispose();
    }
  }

  const probeAll = async () => {
    await Promise.all(pool.all().map((worker) => probe(worker)));
  };

  const timer = setInterval(() => {
    if (running) return; // The previous round is still waiting on a slow worker.
    running = probeAll().finally(() => {
      running = undefined;
    });
  }, settings.intervalMs);
  timer.unref();

  return {
    probeNow: async () => {
      running ??= probeAll().finally(() => {
        running = undefined;
      });
      await running;
    },
    stop: () => {
      clearInterval(timer);
      controller.abort();
    },
  };
}
