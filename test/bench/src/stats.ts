/**
 * Latency samples and their percentiles. Every sample is kept (a growable Float64Array, so a
 * million samples cost 8 MB and no per-sample allocation) and percentiles are exact nearest-rank
 * values over the sorted samples: no histogram buckets that would round a 1 ms difference away.
 */
export class Samples {
  private values: Float64Array;
  private size = 0;

  constructor(
    initialCapacity = 1024,
    /** Samples beyond this are counted but not kept (a bound on memory, never reached in practice). */
    private readonly maxKept = 20_000_000,
  ) {
    this.values = new Float64Array(initialCapacity);
  }

  /** Samples offered, kept or not. */
  offered = 0;

  get count(): number {
    return this.size;
  }

  push(value: number): void {
    this.offered += 1;
    if (this.size === this.values.length) {
      if (this.size >= this.maxKept) return;
      const grown = new Float64Array(Math.min(this.maxKept, this.values.length * 2));
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.size] = value;
    this.size += 1;
  }

  summarize(): Summary {
    return summarize(this.values.subarray(0, this.size));
  }
}

export interface Summary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

export const emptySummary: Summary = { count: 0, mean: NaN, p50: NaN, p90: NaN, p99: NaN, p999: NaN, max: NaN };

/** Nearest-rank percentile of sorted values: the smallest value with at least q of the samples at or below it. */
export function percentileOfSorted(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil(q * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] ?? NaN;
}

export function summarize(values: ArrayLike<number>): Summary {
  if (values.length === 0) return emptySummary;
  const sorted = Float64Array.from(values).sort();
  let total = 0;
  for (const value of sorted) total += value;
  return {
    count: sorted.length,
    mean: total / sorted.length,
    p50: percentileOfSorted(sorted, 0.5),
    p90: percentileOfSorted(sorted, 0.9),
    p99: percentileOfSorted(sorted, 0.99),
    p999: percentileOfSorted(sorted, 0.999),
    max: sorted[sorted.length - 1] ?? NaN,
  };
}

/** Rounds for reports: milliseconds to 0.01 ms, NaN to null (JSON has no NaN). */
export function round(value: number, digits = 2): number | null {
  if (!Number.isFinite(value)) return null;
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
