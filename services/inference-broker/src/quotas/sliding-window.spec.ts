import { quotaChecks, quotaWindow, slidingWindowWait, tokenCount } from "./sliding-window";

describe("slidingWindowWait", () => {
  // One-second buckets, 60 per window; now is 500 ms into bucket 1010.
  const window = { bucketMs: 1000, buckets: 60 };
  const now = 1_010_500;

  it.each<[string, Array<[number, number]>, number, number, number | undefined]>([
    ["an empty window admits", [], 5, 1, undefined],
    ["room for exactly the cost admits", [[1000, 4]], 5, 1, undefined],
    // Bucket 1000 leaves the window when bucket 1060 starts: 1_060_000 - now.
    ["a full window waits for its oldest bucket to leave", [[1000, 3], [1005, 2]], 5, 1, 49_500],
    ["a cost needing two buckets waits for the second", [[1000, 1], [1005, 2], [1010, 2]], 5, 3, 54_500],
    ["a cost above the whole limit waits for an empty window", [[1000, 1], [1009, 1]], 5, 500, 58_500],
    ["a cost above the whole limit is admitted by an empty window", [], 5, 500, undefined],
    ["the current bucket alone waits the whole window", [[1010, 5]], 5, 1, 59_500],
    // A negative correction in a younger bucket: once it is the only one left, nothing is used.
    ["negative counts lower the use", [[1000, 6], [1005, -2]], 5, 1, undefined],
    ["a negative count left alone counts as nothing", [[1000, 7], [1005, -1]], 5, 1, 49_500],
    ["a cost of zero waits only while the limit is exceeded", [[1000, 6]], 5, 0, 49_500],
    ["a cost of zero is admitted at the limit", [[1000, 5]], 5, 0, undefined],
  ])("%s", (_, buckets, max, cost, wait) => {
    expect(slidingWindowWait(new Map(buckets), max, cost, now, window)).toBe(wait);
  });

  it("never asks for more than the window, nor for nothing", () => {
    for (let offset = 0; offset < 1000; offset += 37) {
      const time = 1_010_000 + offset;
      const wait = slidingWindowWait(new Map([[1010, 1]]), 1, 1, time, window);
      expect(wait).toBeGreaterThan(0);
      expect(wait).toBeLessThanOrEqual(60_000);
    }
  });
});

describe("quotaWindow", () => {
  it("is a minute of 60 one-second buckets by default", () => {
    expect(quotaWindow({})).toEqual({ windowMs: 60_000, buckets: 60, bucketMs: 1000 });
  });

  it.each([
    [{ windowMs: 1000, buckets: 3 }],
    [{ windowMs: 0 }],
    [{ buckets: 0 }],
    [{ windowMs: 30, buckets: 60 }],
  ])("refuses %p", (options) => {
    expect(() => quotaWindow(options)).toThrow(/quotas: windowMs \(\d+\) must be a positive multiple of buckets \(\d+\)/);
  });
});

describe("quotaChecks", () => {
  it("lists every set limit in order, a request costing 1 against rpm and its tokens against tpm", () => {
    expect(quotaChecks([{ key: "provider:openai", rpm: 60, tpm: 10_000 }, { key: "model:gpt" }, { key: "model:mini", tpm: 500 }], 120.2)).toEqual([
      { key: "provider:openai", limit: "rpm", max: 60, cost: 1 },
      { key: "provider:openai", limit: "tpm", max: 10_000, cost: 121 },
      { key: "model:mini", limit: "tpm", max: 500, cost: 121 },
    ]);
  });

  it.each([0, -1, Number.NaN, Number.POSITIVE_INFINITY])("refuses the limit %p", (limit) => {
    expect(() => quotaChecks([{ key: "provider:x", rpm: limit }], 1)).toThrow(`quotas: provider:x: rpm must be a positive number (got ${limit})`);
  });
});

describe("tokenCount", () => {
  it.each([
    [0, 0],
    [10, 10],
    [10.1, 11],
    [-5, 0],
    [Number.NaN, 0],
  ])("%p -> %p", (tokens, count) => {
    expect(tokenCount(tokens)).toBe(count);
  });
});
