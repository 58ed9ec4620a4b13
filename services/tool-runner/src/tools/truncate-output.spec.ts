import { truncateEnd, truncateMiddle } from "./truncate-output";

const bytes = (text: string): number => Buffer.byteLength(text, "utf8");

describe("truncateMiddle", () => {
  it("leaves text within the limit as it is", () => {
    expect(truncateMiddle("hello", 5)).toEqual({ text: "hello", truncated: false });
    expect(truncateMiddle("", 0)).toEqual({ text: "", truncated: false });
  });

  it("keeps the head and the tail and says how many bytes were cut", () => {
    const text = `${"a".repeat(500)}${"b".repeat(1000)}${"c".repeat(500)}`;
    const { text: cut, truncated } = truncateMiddle(text, 200);
    expect(truncated).toBe(true);
    expect(bytes(cut)).toBeLessThanOrEqual(200);
    const match = /^(a+)\n… \[(\d+) bytes cut\] …\n(c+)$/.exec(cut);
    expect(match).not.toBeNull();
    const [, head, cutBytes, tail] = match!;
    expect(head!.length + Number(cutBytes) + tail!.length).toBe(text.length);
    expect(Math.abs(head!.length - tail!.length)).toBeLessThanOrEqual(1);
  });

  it("never splits a multi-byte character, at the head's end or the tail's start", () => {
    // Each "€" is three bytes, so almost every cut point falls inside one.
    const text = "€".repeat(1000);
    for (const limit of [40, 41, 42, 43, 100, 101]) {
      const { text: cut } = truncateMiddle(text, limit);
      expect(bytes(cut)).toBeLessThanOrEqual(limit);
      expect(cut).not.toContain("\uFFFD");
      const [head, tail] = cut.split(/\n… \[\d+ bytes cut\] …\n/);
      expect(head).toMatch(/^€+$/);
      expect(tail).toMatch(/^€+$/);
      const cutBytes = Number(/\[(\d+) bytes cut\]/.exec(cut)![1]);
      expect(bytes(head!) + cutBytes + bytes(tail!)).toBe(bytes(text));
    }
  });

  it("keeps only a head, without a marker, when the limit cannot hold the marker", () => {
    expect(truncateMiddle("€€€€€€€€€€", 7)).toEqual({ text: "€€", truncated: true });
  });
});

describe("truncateEnd", () => {
  it("keeps the head at a character boundary", () => {
    expect(truncateEnd("ab€cd", 4)).toEqual({ text: "ab", truncated: true });
    expect(truncateEnd("ab€cd", 5)).toEqual({ text: "ab€", truncated: true });
    expect(truncateEnd("ab€cd", 7)).toEqual({ text: "ab€cd", truncated: false });
  });
});
