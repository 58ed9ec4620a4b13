/**
 * A small seeded generator (mulberry32): the same seed gives the same numbers, and drawing one
 * allocates nothing, so a stream may draw one per token.
 */
export class SeededRandom {
  private state: number;

  constructor(seed: number) {
    this.state = seed | 0;
  }

  /** A number in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) | 0;
    let t = Math.imul(this.state ^ (this.state >>> 15), 1 | this.state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }
}

/**
 * The seed of request number `ordinal` of a simulator seeded with `seed`: each request draws from
 * its own sequence, so what request n gets does not depend on how the others interleave with it.
 */
export function requestSeed(seed: number, ordinal: number): number {
  // murmur3's finaliser spreads neighbouring ordinals over unrelated seeds.
  let h = (seed ^ Math.imul(ordinal + 1, 0x9e3779b1)) | 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}
