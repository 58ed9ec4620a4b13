import { deterministicEmbedding } from "./simulator";

function norm(vector: readonly number[]): number {
  return Math.sqrt(vector.reduce((sum, value) => sum + value * value, 0));
}

function cosine(a: readonly number[], b: readonly number[]): number {
  return a.reduce((sum, value, index) => sum + value * (b[index] ?? 0), 0) / (norm(a) * norm(b));
}

describe("deterministicEmbedding", () => {
  it("gives the same vector for the same text, call after call", () => {
    const first = deterministicEmbedding("The quick brown fox", 64);
    expect(deterministicEmbedding("The quick brown fox", 64)).toEqual(first);
  });

  it.each([1, 3, 16, 17, 64, 1024])("has the requested length (%d) and unit norm", (dimensions) => {
    const vector = deterministicEmbedding("hello", dimensions);
    expect(vector).toHaveLength(dimensions);
    expect(norm(vector)).toBeCloseTo(1, 10);
    expect(vector.every((value) => Number.isFinite(value) && value >= -1 && value <= 1)).toBe(true);
  });

  it("gives different vectors for different texts, even texts that differ by one character", () => {
    const texts = ["hello", "hello ", "Hello", "hellp", "", "🦋"];
    const vectors = texts.map((text) => deterministicEmbedding(text, 64));
    for (let i = 0; i < vectors.length; i += 1) {
      for (let j = i + 1; j < vectors.length; j += 1) {
        // Unrelated pseudo-random unit vectors in 64 dimensions are nearly orthogonal.
        expect(Math.abs(cosine(vectors[i] ?? [], vectors[j] ?? []))).toBeLessThan(0.9);
      }
    }
  });

  it("does not repeat itself after the first 16 values (one SHA-256 block)", () => {
    const vector = deterministicEmbedding("long vector", 64);
    expect(vector.slice(16, 32)).not.toEqual(vector.slice(0, 16));
    expect(vector.slice(32, 48)).not.toEqual(vector.slice(16, 32));
  });

  it("gives an empty vector for zero dimensions", () => {
    expect(deterministicEmbedding("hello", 0)).toEqual([]);
  });
});
