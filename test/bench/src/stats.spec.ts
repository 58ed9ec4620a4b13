import { percentileOfSorted, Samples, summarize } from "./stats";

describe("percentiles", () => {
  it("are nearest-rank values of the samples, never interpolated", () => {
    const sorted = Array.from({ length: 100 }, (_, index) => index + 1);
    expect(percentileOfSorted(sorted, 0.5)).toBe(50);
    expect(percentileOfSorted(sorted, 0.99)).toBe(99);
    expect(percentileOfSorted(sorted, 1)).toBe(100);
    expect(percentileOfSorted([7], 0.99)).toBe(7);
    expect(percentileOfSorted([], 0.5)).toBeNaN();
  });

  it("summarise samples in any order, including more than the initial capacity", () => {
    const samples = new Samples(4);
    for (const value of [5, 1, 4, 2, 3, 10, 9, 8, 7, 6]) samples.push(value);
    expect(samples.count).toBe(10);
    expect(samples.summarize()).toMatchObject({ count: 10, mean: 5.5, p50: 5, p90: 9, p99: 10, max: 10 });
    expect(summarize([])).toMatchObject({ count: 0 });
  });

  it("stop keeping samples past the bound but still count them", () => {
    const samples = new Samples(2, 4);
    for (let value = 0; value < 10; value += 1) samples.push(value);
    expect(samples.count).toBe(4);
    expect(samples.offered).toBe(10);
  });
});
