import type { ModelMetrics } from "./metrics";

/** Where a request is in the engine. */
export type EngineState = "new" | "waiting" | "running" | "gone";

/** What the engine needs of a request. */
export interface EngineSequence {
  engineState: EngineState;
  readonly promptTokens: number;
  /** KV-cache tokens it holds while running: its prompt, then one more per generated token. */
  kvTokens: number;
  readonly metrics: ModelMetrics;
  /** Called when it gets a sequence slot; it schedules its own prefill. */
  admitted(now: number): void;
}

export interface EngineLimits {
  maxNumSeqs: number;
  kvCacheCapacityTokens: number;
}

/**
 * vLLM's scheduler, reduced to what clients can observe: at most `maxNumSeqs` requests run at once,
 * the others wait first come first served, and a waiting request is admitted only when its prompt
 * fits in the KV cache (or nothing else runs). One engine serves all of a simulator's models, like
 * one GPU; the counts it keeps per model are what `/metrics` reports.
 */
export class SimulatedEngine {
  running = 0;
  kvTokens = 0;
  /** A Set keeps insertion order and removes a request that leaves the queue in O(1). */
  private readonly waiting = new Set<EngineSequence>();

  constructor(private readonly limits: () => EngineLimits) {}

  get waitingCount(): number {
    return this.waiting.size;
  }

  /** Queues the request and admits it at once if there is room. */
  submit(sequence: EngineSequence, now: number): void {
    sequence.engineState = "waiting";
    sequence.metrics.waiting += 1;
    this.waiting.add(sequence);
    this.admitWaiting(now);
  }

  /** The request holds one more KV-cache token. */
  grow(sequence: EngineSequence, tokens: number): void {
    sequence.kvTokens += tokens;
    sequence.metrics.kvTokens += tokens;
    this.kvTokens += tokens;
  }

  /** The request is done, failed or abandoned: it leaves the queue or frees its slot. */
  leave(sequence: EngineSequence, now: number): void {
    if (sequence.engineState === "waiting") {
      this.waiting.delete(sequence);
      sequence.metrics.waiting -= 1;
    } else if (sequence.engineState === "running") {
      this.running -= 1;
      sequence.metrics.running -= 1;
      this.kvTokens -= sequence.kvTokens;
      sequence.metrics.kvTokens -= sequence.kvTokens;
      sequence.kvTokens = 0;
    }
    sequence.engineState = "gone";
    this.admitWaiting(now);
  }

  /** Admits waiting requests while there is room; also after the limits were raised. */
  admitWaiting(now: number): void {
    const { maxNumSeqs, kvCacheCapacityTokens } = this.limits();
    while (this.running < maxNumSeqs) {
      const next = this.waiting.values().next();
      if (next.done === true) return;
      const sequence = next.value;
      // First come first served: the head waits for room rather than being overtaken.
      if (this.running > 0 && this.kvTokens + sequence.promptTokens > kvCacheCapacityTokens) return;
      this.waiting.delete(sequence);
      sequence.metrics.waiting -= 1;
      sequence.engineState = "running";
      this.running += 1;
      sequence.metrics.running += 1;
      this.grow(sequence, sequence.promptTokens);
      sequence.admitted(now);
    }
  }
}
