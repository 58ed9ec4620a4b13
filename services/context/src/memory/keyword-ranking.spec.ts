import { keywordsOf, overlapScore, rankByOverlap } from "./keyword-ranking";

describe("keyword overlap ranking", () => {
  it("takes distinct lower-case words, without stop words and single characters", () => {
    expect(keywordsOf("What is the BUILD command? The build uses pnpm, v10 x")).toEqual(["build", "command", "uses", "pnpm", "v10"]);
    expect(keywordsOf("Größe überprüfen")).toEqual(["größe", "überprüfen"]);
  });

  it("scores whole words, and word starts for keywords of four characters or more", () => {
    expect(overlapScore(["test", "jest"], "Runs the tests with jest")).toBe(2);
    expect(overlapScore(["te"], "Runs the tests")).toBe(0);
    expect(overlapScore(["build"], "rebuild everything")).toBe(0);
  });

  it("ranks by score, newer first on a tie, leaves out non-matches and keeps to the limit", () => {
    const at = (minute: number) => new Date(Date.UTC(2025, 0, 1, 0, minute));
    const memories = [
      { text: "uses pnpm", createdAt: at(1) },
      { text: "build with pnpm and turbo", createdAt: at(2) },
      { text: "likes coffee", createdAt: at(3) },
      { text: "pnpm store lives in /cache", createdAt: at(4) },
    ];
    expect(rankByOverlap("pnpm build", memories, 10).map((memory) => memory.text)).toEqual([
      "build with pnpm and turbo",
      "pnpm store lives in /cache",
      "uses pnpm",
    ]);
    expect(rankByOverlap("pnpm build", memories, 1)).toHaveLength(1);
    expect(rankByOverlap("tea", memories, 10)).toEqual([]);
  });
});
