/**
 * Recall ranks memories by keyword overlap with the query: no embeddings yet (they would need an
 * embedding model call per Remember and per Recall, and a vector index). Good enough for "what do
 * we know about X" over a few hundred memories per user or workspace; a semantic match ("tabs" for
 * "indentation") is not found.
 */

/** Words too common to tell memories apart. */
const stopWords = new Set(
  "a an and are as at be but by can do does for from has have how i in is it its me my of on or our so that the their them there these this to was we were what when where which who why will with you your".split(" "),
);

/** The distinct keywords of a text: lower-case runs of letters and digits, stop words and single characters left out. */
export function keywordsOf(text: string): string[] {
  const words = text.toLowerCase().match(/[\p{L}\p{N}_]+/gu) ?? [];
  return [...new Set(words.filter((word) => word.length > 1 && !stopWords.has(word)))];
}

/**
 * How well a memory matches the query's keywords: one point per query keyword the memory contains
 * as a word, or as the start of a word for keywords of four characters or more ("test" finds
 * "tests"); 0 when none.
 */
export function overlapScore(queryKeywords: readonly string[], memoryText: string): number {
  const words = keywordsOf(memoryText);
  let score = 0;
  for (const keyword of queryKeywords) {
    if (words.some((word) => word === keyword || (keyword.length >= 4 && word.startsWith(keyword)))) score += 1;
  }
  return score;
}

/** The `limit` best matches, best first; ties go to the newer memory. Memories matching nothing are left out. */
export function rankByOverlap<T extends { text: string; createdAt: Date }>(query: string, memories: readonly T[], limit: number): T[] {
  const keywords = keywordsOf(query);
  return memories
    .map((memory) => ({ memory, score: overlapScore(keywords, memory.text) }))
    .filter(({ score }) => score > 0)
    .sort((a, b) => b.score - a.score || b.memory.createdAt.getTime() - a.memory.createdAt.getTime())
    .slice(0, limit)
    .map(({ memory }) => memory);
}
