/** One model the simulator serves. */
export interface SimulatedModel {
  id: string;
  maxModelLen: number;
}

/** How tool-call continuation chunks look: vLLM changed this, and clients meet both. */
export type ToolCallStyle = "current" | "legacy";

export const toolCallStyles: readonly ToolCallStyle[] = ["current", "legacy"];

export interface VllmSimulatorOptions {
  models: SimulatedModel[];
  /** Time from admission (a free sequence slot) to first token; time spent queued comes on top. */
  timeToFirstTokenMs: number;
  /** Time between two tokens. */
  interTokenLatencyMs: number;
  /** Uniform jitter on every latency: 0.1 makes each one 90 % to 110 % of its value. 0 to 1. */
  jitterRatio: number;
  /**
   * Makes jitter and random failures repeatable: request number n of a simulator always draws the
   * same numbers. Setting it (again) through `configure` restarts the numbering. Unset: random.
   */
  randomSeed?: number | undefined;
  /**
   * Growth of latency under load, as on a real GPU where a bigger batch makes every step slower:
   * each latency is multiplied by `1 + loadLatencyFactor * running / maxNumSeqs`. 0 turns it off.
   */
  loadLatencyFactor: number;
  /** vLLM's `--max-num-seqs`: at most this many requests generate at once; the rest wait, first come first served. */
  maxNumSeqs: number;
  /**
   * Tokens the KV cache holds. A running request holds its prompt and the tokens generated so far;
   * a waiting request is admitted only when its prompt fits (or nothing runs). Reported as
   * `vllm:kv_cache_usage_perc`.
   */
  kvCacheCapacityTokens: number;
  /** Message prefixes the simulated prefix cache remembers (least recently used go first). */
  prefixCacheEntries: number;
  toolCallStyle: ToolCallStyle;
  /**
   * Streams the argument fragments of parallel tool calls round-robin (call 0, call 1, call 0, …)
   * instead of one call after the other as vLLM does, so that clients prove they accumulate by index.
   */
  interleaveToolCalls: boolean;
  /** `GET /health` answers 503 when false, so that health probes eject the worker. */
  healthy: boolean;
  /**
   * Replay: when set, every chat completion answers with exactly these raw SSE payloads, each sent
   * as `data: <payload>` and a blank line, the first after the time to first token and then one per
   * inter-token latency. Nothing is added (include `[DONE]` if the capture had it).
   */
  script?: readonly string[] | undefined;
  /** Length of each embedding vector. */
  embeddingDimensions: number;
  /** When set, POSTs to /v1/* need `Authorization: Bearer <apiKey>` (vLLM's --api-key), else HTTP 401. */
  apiKey?: string | undefined;
}

/** What a randomly failing request does (see `SimulatorFaults.failureRate`). */
export type SimulatedFailureKind =
  /** HTTP 500 with an OpenAI error body, before any stream. */
  | "http_500"
  /** HTTP 429 with an OpenAI error body and `retry-after`. */
  | "http_429"
  /** vLLM's `data: {"error":{…}}` event after some tokens, then `data: [DONE]`. */
  | "mid_stream_error"
  /** Headers sent, then nothing, ever: a hung worker. */
  | "hang"
  /** Nothing at all, not even headers. */
  | "hang_before_headers"
  /** The socket is destroyed after some tokens, without a proper end of the stream. */
  | "disconnect"
  /** One `data:` line that is not JSON, among the tokens. */
  | "malformed_sse"
  /** Inter-token latency multiplied by `slowFactor`. */
  | "slow";

export const simulatedFailureKinds: readonly SimulatedFailureKind[] = [
  "http_500",
  "http_429",
  "mid_stream_error",
  "hang",
  "hang_before_headers",
  "disconnect",
  "malformed_sse",
  "slow",
];

/** Failures the simulator can be told to produce, as a real worker sometimes does. */
export interface SimulatorFaults {
  /** After this many content tokens, send vLLM's mid-stream `{"error":…}` event and `[DONE]`. */
  midStreamErrorAfterTokens?: number;
  /** Answer every chat request with this HTTP status and an OpenAI error body. */
  httpErrorStatus?: number;
  /** After this many tokens, end with `finish_reason: "abort"` (vLLM aborted the request), usage and `[DONE]`. */
  abortAfterTokens?: number;
  /** Share of chat requests (0 to 1) that fail in one of `kinds`; repeatable with `randomSeed`. */
  failureRate?: number;
  /** The kinds a failing request picks from, uniformly. Default: all of them. */
  kinds?: readonly SimulatedFailureKind[];
  /** Inter-token latency multiplier of the `slow` kind. Default 10. */
  slowFactor?: number;
  /** `GET /health` answers 503 (as does the `healthy: false` option). */
  unhealthy?: boolean;
}

export const defaultSimulatorOptions: VllmSimulatorOptions = {
  models: [
    { id: "vlinders-sim-chat", maxModelLen: 32_768 },
    { id: "vlinders-sim-embed", maxModelLen: 8_192 },
  ],
  timeToFirstTokenMs: 40,
  interTokenLatencyMs: 10,
  jitterRatio: 0,
  loadLatencyFactor: 0,
  maxNumSeqs: 256,
  // About what a 7B model with grouped-query attention gets on an 80 GB GPU.
  kvCacheCapacityTokens: 1_048_576,
  prefixCacheEntries: 10_000,
  toolCallStyle: "current",
  interleaveToolCalls: false,
  healthy: true,
  embeddingDimensions: 64,
};

export const defaultSlowFactor = 10;

function describe(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

function check(ok: boolean, name: string, rule: string, value: unknown): void {
  if (!ok) throw new RangeError(`${name}: ${rule} (got ${describe(value)})`);
}

const isNonNegative = (value: unknown) => typeof value === "number" && Number.isFinite(value) && value >= 0;
const isRatio = (value: unknown) => isNonNegative(value) && (value as number) <= 1;
const isPositiveInteger = (value: unknown) => Number.isSafeInteger(value) && (value as number) > 0;
const isNonNegativeInteger = (value: unknown) => Number.isSafeInteger(value) && (value as number) >= 0;

/** Throws a RangeError naming the first option that is out of range. */
export function validateOptions(options: Partial<VllmSimulatorOptions>): void {
  const { timeToFirstTokenMs, interTokenLatencyMs, jitterRatio, randomSeed, loadLatencyFactor } = options;
  if (timeToFirstTokenMs !== undefined) check(isNonNegative(timeToFirstTokenMs), "timeToFirstTokenMs", "must be a non-negative number", timeToFirstTokenMs);
  if (interTokenLatencyMs !== undefined) check(isNonNegative(interTokenLatencyMs), "interTokenLatencyMs", "must be a non-negative number", interTokenLatencyMs);
  if (jitterRatio !== undefined) check(isRatio(jitterRatio), "jitterRatio", "must be between 0 and 1", jitterRatio);
  if (randomSeed !== undefined) check(Number.isSafeInteger(randomSeed), "randomSeed", "must be an integer", randomSeed);
  if (loadLatencyFactor !== undefined) check(isNonNegative(loadLatencyFactor), "loadLatencyFactor", "must be a non-negative number", loadLatencyFactor);
  if (options.maxNumSeqs !== undefined) check(isPositiveInteger(options.maxNumSeqs), "maxNumSeqs", "must be a positive integer", options.maxNumSeqs);
  if (options.kvCacheCapacityTokens !== undefined) {
    check(isPositiveInteger(options.kvCacheCapacityTokens), "kvCacheCapacityTokens", "must be a positive integer", options.kvCacheCapacityTokens);
  }
  if (options.prefixCacheEntries !== undefined) {
    check(isNonNegativeInteger(options.prefixCacheEntries), "prefixCacheEntries", "must be a non-negative integer", options.prefixCacheEntries);
  }
  if (options.toolCallStyle !== undefined) {
    check(toolCallStyles.includes(options.toolCallStyle), "toolCallStyle", `must be one of ${toolCallStyles.join(", ")}`, options.toolCallStyle);
  }
  if (options.script !== undefined) {
    check(Array.isArray(options.script) && options.script.every((line) => typeof line === "string"), "script", "must be a list of strings", options.script);
  }
  if (options.models !== undefined) check(Array.isArray(options.models) && options.models.length > 0, "models", "must not be empty", options.models);
}

/** Throws a RangeError naming the first fault that is out of range. */
export function validateFaults(faults: SimulatorFaults): void {
  for (const name of ["midStreamErrorAfterTokens", "abortAfterTokens"] as const) {
    if (faults[name] !== undefined) check(isNonNegativeInteger(faults[name]), name, "must be a non-negative integer", faults[name]);
  }
  if (faults.httpErrorStatus !== undefined) {
    const status = faults.httpErrorStatus;
    check(Number.isInteger(status) && status >= 400 && status <= 599, "httpErrorStatus", "must be an HTTP error status (400 to 599)", status);
  }
  if (faults.failureRate !== undefined) check(isRatio(faults.failureRate), "failureRate", "must be between 0 and 1", faults.failureRate);
  if (faults.kinds !== undefined) {
    for (const kind of faults.kinds) {
      check(simulatedFailureKinds.includes(kind), "kinds", `must each be one of ${simulatedFailureKinds.join(", ")}`, kind);
    }
  }
  if (faults.slowFactor !== undefined) check(isNonNegative(faults.slowFactor), "slowFactor", "must be a non-negative number", faults.slowFactor);
}
