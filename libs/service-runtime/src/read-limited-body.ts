/**
 * A fetch response's body as UTF-8 text, or undefined as soon as it passes `maxBytes` (the rest is
 * not read, and the stream is cancelled): for bodies from peers that are not trusted to be small.
 */
export async function readLimitedBody(response: Response, maxBytes: number): Promise<string | undefined> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}
