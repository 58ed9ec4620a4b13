/**
 * Reads a text/event-stream body and yields the data of each event (multi-line data joined with
 * "\n"), as the WHATWG spec says. Comments and other fields are skipped; a final event without its
 * blank line is still delivered.
 */
export async function* readServerSentEventData(body: AsyncIterable<Uint8Array>): AsyncGenerator<string, void, undefined> {
  const decoder = new TextDecoder();
  let buffer = "";
  let dataLines: string[] = [];

  function* takeLines(final: boolean): Generator<string, void, undefined> {
    for (;;) {
      const match = /\r\n|\r|\n/.exec(buffer);
      // A lone "\r" at the end may be the first half of "\r\n": wait for more input.
      if (!match || (match[0] === "\r" && match.index === buffer.length - 1 && !final)) break;
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (dataLines.length > 0) yield dataLines.join("\n");
        dataLines = [];
      } else if (line.startsWith("data:")) {
        const value = line.slice(5);
        dataLines.push(value.startsWith(" ") ? value.slice(1) : value);
      }
    }
  }

  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    yield* takeLines(false);
  }
  buffer += decoder.decode();
  yield* takeLines(true);
  if (buffer.startsWith("data:")) {
    const value = buffer.slice(5);
    dataLines.push(value.startsWith(" ") ? value.slice(1) : value);
  }
  if (dataLines.length > 0) yield dataLines.join("\n");
}
