import { scaledLatency } from "./latency";
import { requestSeed, SeededRandom } from "./random";

const calm = { loadLatencyFactor: 0, maxNumSeqs: 256, jitterRatio: 0 };

describe("SeededRandom", () => {
  it("gives the same numbers for the same seed, in [0, 1)", () => {
    const draw = (seed: number) => {
      const random = new SeededRandom(seed);
      return Array.from({ length: 1000 }, () => random.next());
    };
    const numbers = draw(42);
    expect(draw(42)).toEqual(numbers);
    expect(draw(43)).not.toEqual(numbers);
    expect(numbers.every((value) => value >= 0 && value < 1)).toBe(true);
    // Uniform enough: the mean of 1000 draws is near 0.5.
    expect(Math.abs(numbers.reduce((sum, value) => sum + value, 0) / numbers.length - 0.5)).toBeLessThan(0.05);
  });

  it("gives each request of a seeded simulator its own repeatable sequence", () => {
    expect(requestSeed(7, 0)).toBe(requestSeed(7, 0));
    expect(new Set(Array.from({ length: 100 }, (_, ordinal) => requestSeed(7, ordinal))).size).toBe(100);
    expect(requestSeed(7, 3)).not.toBe(requestSeed(8, 3));
  });
});

describe("scaledLatency", () => {
  it("is the base latency without load growth or jitter", () => {
    expect(scaledLatency(20, calm, 200, new SeededRandom(1))).toBe(20);
  });

  it("grows with the running sequences: * (1 + factor * running / maxNumSeqs)", () => {
    const options = { ...calm, loadLatencyFactor: 2, maxNumSeqs: 4 };
    expect(scaledLatency(10, options, 0, new SeededRandom(1))).toBe(10);
    expect(scaledLatency(10, options, 2, new SeededRandom(1))).toBe(20);
    expect(scaledLatency(10, options, 4, new SeededRandom(1))).toBe(30);
  });

  it("jitters uniformly within ±jitterRatio, repeatably for a seed", () => {
    const options = { ...calm, jitterRatio: 0.1 };
    const draw = (seed: number) => {
      const random = new SeededRandom(seed);
      return Array.from({ length: 500 }, () => scaledLatency(100, options, 0, random));
    };
    const latencies = draw(9);
    expect(draw(9)).toEqual(latencies);
    expect(Math.min(...latencies)).toBeGreaterThanOrEqual(90);
    expect(Math.max(...latencies)).toBeLessThan(110);
    // Spread over the whole range, not bunched.
    expect(Math.min(...latencies)).toBeLessThan(92);
    expect(Math.max(...latencies)).toBeGreaterThan(108);
  });
});
