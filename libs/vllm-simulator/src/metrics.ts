/**
 * The simulator's Prometheus metrics, under vLLM's names and `model_name` label. They are plain
 * numbers updated in place (recording a token allocates nothing, unlike a labelled prom-client
 * observation) and rendered at scrape time, so gauges show the engine's state at that instant.
 */

/** A Prometheus histogram with fixed buckets. */
export class Histogram {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(readonly buckets: readonly number[]) {
    this.counts = new Float64Array(buckets.length);
  }

  observe(value: number): void {
    this.sum += value;
    this.count += 1;
    // Counts are per bucket here and made cumulative when rendered.
    for (let index = 0; index < this.buckets.length; index += 1) {
      if (value <= (this.buckets[index] as number)) {
        this.counts[index] = (this.counts[index] ?? 0) + 1;
        return;
      }
    }
  }
}

const ttftBuckets = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];
const itlBuckets = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5];
const e2eBuckets = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60];
const queueBuckets = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Everything measured for one model. State (running, waiting, kvTokens) is kept by the engine. */
export class ModelMetrics {
  running = 0;
  waiting = 0;
  /** KV-cache tokens held by this model's running requests. */
  kvTokens = 0;
  promptTokens = 0;
  generationTokens = 0;
  prefixCacheQueries = 0;
  prefixCacheHits = 0;
  readonly successByReason = new Map<string, number>();
  readonly timeToFirstToken = new Histogram(ttftBuckets);
  readonly interTokenLatency = new Histogram(itlBuckets);
  readonly e2eLatency = new Histogram(e2eBuckets);
  readonly queueTime = new Histogram(queueBuckets);

  constructor(readonly modelName: string) {}

  countSuccess(finishedReason: string): void {
    this.successByReason.set(finishedReason, (this.successByReason.get(finishedReason) ?? 0) + 1);
  }
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function formatNumber(value: number): string {
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

type Sample = (metrics: ModelMetrics) => number;

/** The Prometheus text exposition (version 0.0.4) of all models' metrics. */
export function renderMetrics(models: Iterable<ModelMetrics>, kvCacheCapacityTokens: number): string {
  const all = [...models];
  const lines: string[] = [];
  const scalar = (name: string, type: "gauge" | "counter", help: string, sample: Sample) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const model of all) lines.push(`${name}{model_name="${escapeLabel(model.modelName)}"} ${formatNumber(sample(model))}`);
  };
  const histogram = (name: string, help: string, pick: (metrics: ModelMetrics) => Histogram) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    for (const model of all) {
      const label = `model_name="${escapeLabel(model.modelName)}"`;
      const data = pick(model);
      let cumulative = 0;
      data.buckets.forEach((bound, index) => {
        cumulative += data.counts[index] ?? 0;
        lines.push(`${name}_bucket{${label},le="${formatNumber(bound)}"} ${cumulative}`);
      });
      lines.push(`${name}_bucket{${label},le="+Inf"} ${data.count}`, `${name}_sum{${label}} ${data.sum}`, `${name}_count{${label}} ${data.count}`);
    }
  };

  scalar("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", (model) => model.running);
  scalar("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", (model) => model.waiting);
  // Each model's share, so that summing over model_name (as routers do) gives the cache's usage.
  scalar("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", (model) =>
    Math.min(1, model.kvTokens / kvCacheCapacityTokens),
  );
  scalar("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", (model) => model.promptTokens);
  scalar("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", (model) => model.generationTokens);
  scalar("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in terms of number of queried tokens.", (model) => model.prefixCacheQueries);
  scalar("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.", (model) => model.prefixCacheHits);

  lines.push("# HELP vllm:request_success_total Count of successfully processed requests.", "# TYPE vllm:request_success_total counter");
  for (const model of all) {
    for (const [reason, count] of model.successByReason) {
      lines.push(`vllm:request_success_total{model_name="${escapeLabel(model.modelName)}",finished_reason="${escapeLabel(reason)}"} ${count}`);
    }
  }

  histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", (model) => model.timeToFirstToken);
  histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", (model) => model.interTokenLatency);
  histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", (model) => model.e2eLatency);
  histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", (model) => model.queueTime);
  return `${lines.join("\n")}\n`;
}

export const metricsContentType = "text/plain; version=0.0.4; charset=utf-8";
