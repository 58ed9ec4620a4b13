import type { MetricObjectWithValues, MetricValueWithName, Registry } from "prom-client";

/** What one label value of a HotPathHistogram counts. */
export interface HotPathHistogramChild {
  observe(value: number): void;
}

interface Series {
  readonly labelValue: string;
  /** Observations per bucket (not cumulative); the last slot is +Inf. */
  readonly counts: Float64Array;
  sum: number;
}

/**
 * A Prometheus histogram with one label, for observations made once per token of every stream.
 * prom-client's Histogram checks and hashes the labels and looks the bucket up by property name on
 * every observation; here a child holds its counts in a typed array, and an observation is a loop
 * over the bounds and two additions. The series are rendered as any histogram when scraped.
 */
export class HotPathHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly name: string;
  readonly help: string;
  private readonly labelName: string;
  private readonly bounds: readonly number[];
  private readonly series = new Map<string, Series>();

  constructor(options: { name: string; help: string; labelName: string; buckets: readonly number[]; registers: readonly Registry[] }) {
    if (options.buckets.some((bound, index) => index > 0 && !(bound > (options.buckets[index - 1] as number)))) {
      throw new Error(`${options.name}: buckets must be increasing`);
    }
    this.name = options.name;
    this.help = options.help;
    this.labelName = options.labelName;
    this.bounds = [...options.buckets];
    for (const registry of options.registers) registry.registerMetric(this as never);
  }

  labels(labelValue: string): HotPathHistogramChild {
    let series = this.series.get(labelValue);
    if (!series) {
      series = { labelValue, counts: new Float64Array(this.bounds.length + 1), sum: 0 };
      this.series.set(labelValue, series);
    }
    const { bounds } = this;
    const counts = series.counts;
    const target = series;
    return {
      observe(value) {
        if (!Number.isFinite(value)) return;
        let bucket = 0;
        while (bucket < bounds.length && value > (bounds[bucket] as number)) bucket += 1;
        counts[bucket] = (counts[bucket] as number) + 1;
        target.sum += value;
      },
    };
  }

  /** The series as prom-client renders a histogram: cumulative buckets, +Inf, sum and count. */
  async get(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
    const values: Array<MetricValueWithName<string>> = [];
    for (const series of this.series.values()) {
      let cumulative = 0;
      for (let bucket = 0; bucket <= this.bounds.length; bucket += 1) {
        cumulative += series.counts[bucket] as number;
        const le = bucket < this.bounds.length ? (this.bounds[bucket] as number) : "+Inf";
        values.push({ metricName: `${this.name}_bucket`, labels: { le, [this.labelName]: series.labelValue }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_sum`, labels: { [this.labelName]: series.labelValue }, value: series.sum });
      values.push({ metricName: `${this.name}_count`, labels: { [this.labelName]: series.labelValue }, value: cumulative });
    }
    return { name: this.name, help: this.help, type: this.type as never, aggregator: this.aggregator, collect: () => undefined, values };
  }

  /** Zeroes every series in place: children handed out before keep counting into it. */
  reset(): void {
    for (const series of this.series.values()) {
      series.counts.fill(0);
      series.sum = 0;
    }
  }
}
