/** Text cut to a byte budget, and whether anything was cut. */
export interface TruncatedText {
  readonly text: string;
  readonly truncated: boolean;
}

/**
 * Cuts `text` to at most `limitBytes` bytes of UTF-8, keeping its head and its tail (where a
 * build's first error and its summary usually are) and marking the cut with
 * `\n… [N bytes cut] …\n`. Never splits a character. A limit too small for the marker keeps only
 * the head.
 */
export function truncateMiddle(text: string, limitBytes: number): TruncatedText {
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= limitBytes) return { text, truncated: false };
  // The marker's length depends on the number it shows, which is at most the whole length.
  const budget = limitBytes - Buffer.byteLength(marker(bytes.length));
  if (budget <= 0) return { text: bytes.subarray(0, characterStart(bytes, Math.max(limitBytes, 0))).toString("utf8"), truncated: true };
  const headEnd = characterStart(bytes, Math.ceil(budget / 2));
  // The tail starts at a character boundary at or after its ideal start, so it never takes more than its share.
  let tailStart = bytes.length - Math.floor(budget / 2);
  while (tailStart < bytes.length && isContinuationByte(bytes[tailStart]!)) tailStart += 1;
  const cut = tailStart - headEnd;
  return {
    text: bytes.subarray(0, headEnd).toString("utf8") + marker(cut) + bytes.subarray(tailStart).toString("utf8"),
    truncated: true,
  };
}

/** Cuts `text` to at most `limitBytes` bytes of UTF-8 from its start, at a character boundary. */
export function truncateEnd(text: string, limitBytes: number): TruncatedText {
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= limitBytes) return { text, truncated: false };
  return { text: bytes.subarray(0, characterStart(bytes, limitBytes)).toString("utf8"), truncated: true };
}

function marker(cutBytes: number): string {
  return `\n… [${cutBytes} bytes cut] …\n`;
}

/** The largest index <= `index` that starts a character (so that [0, result) holds whole characters). */
function characterStart(bytes: Buffer, index: number): number {
  let position = Math.min(index, bytes.length);
  while (position > 0 && position < bytes.length && isContinuationByte(bytes[position]!)) position -= 1;
  return position;
}

function isContinuationByte(byte: number): boolean {
  return (byte & 0b1100_0000) === 0b1000_0000;
}
