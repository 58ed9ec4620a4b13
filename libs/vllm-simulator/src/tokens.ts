/**
 * The simulator's stand-in for a tokenizer: a token is a word with the whitespace before it, so
 * that joining the tokens gives back the text exactly.
 */
export function splitIntoTokens(text: string): string[] {
  // Whitespace after the last word belongs to the last token; without it the echo lost a final "\n".
  return text.match(/\s*\S+\s*$|\s*\S+/g) ?? [];
}

export function countTokens(text: string): number {
  return splitIntoTokens(text).length;
}
