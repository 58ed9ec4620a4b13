import { HotPathHistogram } from "@vlinders/service-runtime";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

const latencyBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const tokenGapBuckets = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5];
const overheadBuckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

/** The broker's own metrics, on top of every server's gRPC metrics. */
export function createBrokerMetrics(registry: Registry) {
  const registers = [registry];
  return {
    timeToFirstToken: new Histogram({
      name: "broker_time_to_first_token_seconds",
      help: "From the request reaching the broker to its first token leaving it.",
      labelNames: ["model"],
      buckets: latencyBuckets,
      registers,
    }),
    // Observed once per token of every stream: the cheap histogram.
    interTokenLatency: new HotPathHistogram({
      name: "broker_inter_token_latency_seconds",
      help: "Time between two streamed events sent to the client.",
      labelName: "model",
      buckets: tokenGapBuckets,
      registers,
    }),
    requestDuration: new Histogram({
      name: "broker_request_duration_seconds",
      help: "End-to-end duration of a request in the broker, by outcome.",
      labelNames: ["model", "status"],
      buckets: latencyBuckets,
      registers,
    }),
    queueTime: new Histogram({
      name: "broker_queue_seconds",
      help: "From the request reaching the broker to its dispatch to a worker (validation, cache, quota, routing).",
      labelNames: ["model"],
      buckets: overheadBuckets,
      registers,
    }),
    addedLatency: new Histogram({
      name: "broker_added_latency_seconds",
      help: "The broker's own share of the time to first token: queue time plus relaying the worker's first token.",
      labelNames: ["model"],
      buckets: overheadBuckets,
      registers,
    }),
    tokens: new Counter({
      name: "broker_tokens_total",
      help: "Tokens by model and kind (prompt, completion).",
      labelNames: ["model", "kind"],
      registers,
    }),
    requests: new Counter({
      name: "broker_requests_total",
      help: "Requests by model, method and final status.",
      labelNames: ["model", "method", "status"],
      registers,
    }),
    failovers: new Counter({
      name: "broker_failovers_total",
      help: "Requests retried on another worker before their first token, by reason.",
      labelNames: ["model", "reason"],
      registers,
    }),
    cache: new Counter({
      name: "broker_cache_requests_total",
      help: "Response cache look-ups by result (hit, miss, bypass).",
      labelNames: ["result"],
      registers,
    }),
    workerInFlight: new Gauge({
      name: "broker_worker_in_flight",
      help: "Requests in flight on each worker.",
      labelNames: ["worker"],
      registers,
    }),
    workerHealthy: new Gauge({
      name: "broker_worker_healthy",
      help: "1 when the worker takes traffic, 0 when ejected, draining or unprobed.",
      labelNames: ["worker"],
      registers,
    }),
  };
}

export type BrokerMetrics = ReturnType<typeof createBrokerMetrics>;
