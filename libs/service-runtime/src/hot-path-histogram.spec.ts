import { Histogram, Registry } from "prom-client";
import { HotPathHistogram } from "./hot-path-histogram";

const buckets = [0.001, 0.005, 0.01, 0.05, 0.1, 1];

describe("HotPathHistogram", () => {
  it("renders exactly what prom-client's Histogram renders for the same observations", async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const fast = new HotPathHistogram({ name: "gap_seconds", help: "Time between two tokens.", labelName: "model", buckets, registers: [ours] });
    const reference = new Histogram({ name: "gap_seconds", help: "Time between two tokens.", labelNames: ["model"], buckets, registers: [theirs] });
    // On a bound, between bounds, below the first, above the last; two label values.
    const observations: Array<[string, number]> = [
      ["a", 0.001], ["a", 0.0007], ["a", 0.02], ["a", 0.1], ["a", 3], ["b", 0.05], ["b", 0.0051], ["a", 0.02],
    ];
    const children = new Map<string, ReturnType<HotPathHistogram["labels"]>>();
    for (const [model, value] of observations) {
      if (!children.has(model)) children.set(model, fast.labels(model));
      children.get(model)?.observe(value);
      reference.labels(model).observe(value);
    }
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it("ignores a value that is not a number, and resets in place", async () => {
    const registry = new Registry();
    const fast = new HotPathHistogram({ name: "gap_seconds", help: "h", labelName: "model", buckets, registers: [registry] });
    const child = fast.labels("a");
    child.observe(Number.NaN);
    child.observe(0.002);
    expect(await registry.metrics()).toContain('gap_seconds_count{model="a"} 1');
    fast.reset();
    child.observe(0.5);
    const text = await registry.metrics();
    expect(text).toContain('gap_seconds_count{model="a"} 1');
    expect(text).toContain('gap_seconds_sum{model="a"} 0.5');
  });

  it("refuses buckets that do not increase", () => {
    expect(() => new HotPathHistogram({ name: "x", help: "h", labelName: "l", buckets: [0.1, 0.1], registers: [] })).toThrow(/increasing/);
  });
});
