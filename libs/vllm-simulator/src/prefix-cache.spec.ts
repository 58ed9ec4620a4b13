import { messagePrefixKeys, PrefixCache } from "./prefix-cache";

const system = { role: "system", content: "You are terse." };
const question = { role: "user", content: "What is a butterfly?" };
const answer = { role: "assistant", content: "An insect." };
const followUp = { role: "user", content: "And a moth?" };

describe("PrefixCache", () => {
  it("answers how many leading messages were seen before", () => {
    const cache = new PrefixCache(100);
    expect(cache.lookupAndRecord(messagePrefixKeys([system, question]))).toBe(0);
    expect(cache.lookupAndRecord(messagePrefixKeys([system, question, answer, followUp]))).toBe(2);
    expect(cache.lookupAndRecord(messagePrefixKeys([system, question, answer, followUp]))).toBe(4);
    expect(cache.lookupAndRecord(messagePrefixKeys([system, followUp]))).toBe(1);
  });

  it("matches whole messages only, from the start", () => {
    const cache = new PrefixCache(100);
    cache.lookupAndRecord(messagePrefixKeys([system, question]));
    expect(cache.lookupAndRecord(messagePrefixKeys([{ ...system, content: "You are verbose." }, question]))).toBe(0);
    expect(cache.lookupAndRecord(messagePrefixKeys([question]))).toBe(0);
  });

  it("forgets the least recently used prefixes beyond its capacity, longest first", () => {
    const cache = new PrefixCache(3);
    cache.lookupAndRecord(messagePrefixKeys([system, question, answer]));
    // A new conversation of two messages pushes out two of the three remembered prefixes: the longest.
    cache.lookupAndRecord(messagePrefixKeys([followUp, answer]));
    expect(cache.lookupAndRecord(messagePrefixKeys([system, question, answer]))).toBe(1);
  });

  it("remembers nothing with capacity 0", () => {
    const cache = new PrefixCache(0);
    cache.lookupAndRecord(messagePrefixKeys([system]));
    expect(cache.lookupAndRecord(messagePrefixKeys([system]))).toBe(0);
  });
});
