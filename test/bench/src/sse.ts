/**
 * An incremental reader of `text/event-stream` bodies for the direct path: feed it chunks as they
 * arrive, get back the `data` of every event completed by that chunk. Events end with a blank line
 * ("\n\n", or "\r\n\r\n"); multi-line data is joined with "\n"; other fields and comments are skipped.
 */
export class ServerSentEventReader {
  private readonly decoder = new TextDecoder();
  private buffer = "";

  push(chunk: Uint8Array): string[] {
    this.buffer += this.decoder.decode(chunk, { stream: true });
    return this.takeEvents();
  }

  /** The end of the body: an event without its blank line still counts. */
  end(): string[] {
    this.buffer += this.decoder.decode();
    const events = this.takeEvents();
    if (this.buffer.trim() !== "") {
      const data = dataOf(this.buffer);
      if (data !== undefined) events.push(data);
    }
    this.buffer = "";
    return events;
  }

  private takeEvents(): string[] {
    const events: string[] = [];
    if (this.buffer.includes("\r")) {
      // A "\r" at the very end may be the first half of a "\r\n" split across chunks: keep it as is.
      const tail = this.buffer.endsWith("\r") ? "\r" : "";
      this.buffer = this.buffer.slice(0, this.buffer.length - tail.length).replace(/\r\n?/g, "\n") + tail;
    }
    for (;;) {
      const end = this.buffer.indexOf("\n\n");
      if (end < 0) break;
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = dataOf(block);
      if (data !== undefined) events.push(data);
    }
    return events;
  }
}

function dataOf(block: string): string | undefined {
  let data: string | undefined;
  for (const line of block.split("\n")) {
    if (!line.startsWith("data:")) continue;
    const value = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
    data = data === undefined ? value : `${data}\n${value}`;
  }
  return data;
}
