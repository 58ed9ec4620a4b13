import { countTokens, splitIntoTokens } from "./tokens";

describe("splitIntoTokens", () => {
  it.each([
    "Hello, world!",
    "  leading spaces and trailing ones  ",
    "lines\nand\ttabs\r\n  mixed",
    "Héllo 🦋 wörld — ünïcode",
    "function add(a, b) {\n  return a + b;\n}\n",
  ])("gives tokens that join back to the text exactly: %j", (text) => {
    expect(splitIntoTokens(text).join("")).toBe(text);
  });

  it("makes a token of each word with the whitespace before it", () => {
    expect(splitIntoTokens("The quick  brown\nfox")).toEqual(["The", " quick", "  brown", "\nfox"]);
  });

  it("keeps whitespace after the last word in the last token, so it is not counted as a token", () => {
    expect(splitIntoTokens("Done.\n\n")).toEqual(["Done.\n\n"]);
    expect(splitIntoTokens("a b ")).toEqual(["a", " b "]);
  });

  it("gives no tokens for empty or blank text", () => {
    expect(splitIntoTokens("")).toEqual([]);
    expect(splitIntoTokens(" \n\t ")).toEqual([]);
  });
});

describe("countTokens", () => {
  it("counts the words", () => {
    expect(countTokens("one two  three\nfour")).toBe(4);
    expect(countTokens("  one two \n")).toBe(2);
    expect(countTokens("")).toBe(0);
  });
});
