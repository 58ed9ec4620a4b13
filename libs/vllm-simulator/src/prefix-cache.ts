import { createHash } from "node:crypto";

/**
 * The keys of a conversation's prefixes in whole messages: key k stands for messages 0..k, chained
 * so that equal keys mean equal prefixes. Messages are compared as their JSON.
 */
export function messagePrefixKeys(messages: readonly unknown[]): string[] {
  const keys: string[] = [];
  let previous = "";
  for (const message of messages) {
    previous = createHash("sha256").update(previous).update("\u0000").update(JSON.stringify(message) ?? "null").digest("base64");
    keys.push(previous);
  }
  return keys;
}

/**
 * A stand-in for vLLM's automatic prefix cache, in whole messages instead of 16-token blocks: it
 * remembers the message prefixes of recent prompts (a bounded LRU) and answers how many leading
 * messages of a new prompt were seen, which is what prefix-affine routing makes a difference to.
 */
export class PrefixCache {
  private readonly entries = new Map<string, true>();

  constructor(private capacity: number) {}

  setCapacity(capacity: number): void {
    this.capacity = capacity;
    this.evict();
  }

  /**
   * The number of leading messages whose prefix was seen before; then remembers every prefix of
   * this prompt. Shorter prefixes are touched last, so that they outlive the longer ones built on
   * them, as vLLM evicts the leaves of its block tree first.
   */
  lookupAndRecord(keys: readonly string[]): number {
    let matched = 0;
    while (matched < keys.length && this.entries.has(keys[matched] as string)) matched += 1;
    for (let index = keys.length - 1; index >= 0; index -= 1) {
      const key = keys[index] as string;
      this.entries.delete(key);
      this.entries.set(key, true);
    }
    this.evict();
    return matched;
  }

  private evict(): void {
    // A Map iterates in insertion order: the first keys are the least recently used.
    for (const key of this.entries.keys()) {
      if (this.entries.size <= this.capacity) break;
      this.entries.delete(key);
    }
  }
}
