/**
 * The most characters (UTF-16 code units: at most 4 MiB of UTF-8, 2 MiB of memory) of one event's
 * data. A vLLM chunk is a few hundred bytes; what passes this is a worker that never ends its line
 * or its event, and without a bound it would grow the buffer until the idle timeout, which every
 * chunk it sends starts again.
 */
export const maxServerSentEventCharacters = 1024 * 1024;

/** A line may hold an event's whole data after its field name ("data: "). */
const maxLineCharacters = maxServerSentEventCharacters + "data: ".length;

/** A text/event-stream body with a line or an event past the bound; the parser is not usable after it. */
export class ServerSentEventTooLargeError extends Error {
  constructor(readonly what: "line" | "event") {
    super(
      what === "line"
        ? `a line passed ${maxLineCharacters} characters without its line ending`
        : `an event's data passed ${maxServerSentEventCharacters} characters without the blank line that ends it`,
    );
    this.name = "ServerSentEventTooLargeError";
  }
}

/**
 * Cuts a text/event-stream body into the data of each event (multi-line data joined with "\n"), as
 * the WHATWG spec says. Comments and other fields are skipped. Push-based, so that the broker's
 * hot path reads a worker's chunks from the socket's "data" events without an async iterator per
 * chunk and per event.
 */
export class ServerSentEventParser {
  private readonly decoder = new TextDecoder();
  private buffer = "";
  private dataLines: string[] = [];
  private dataCharacters = 0;

  /**
   * Feeds a chunk of the body; calls `onData` for every event it completes. Throws
   * ServerSentEventTooLargeError when a line or an event grows past maxServerSentEventCharacters.
   */
  push(chunk: Uint8Array, onData: (data: string) => void): void {
    this.buffer += this.decoder.decode(chunk, { stream: true });
    this.takeLines(false, onData);
    // What is left is one unfinished line: it grows by at most one chunk past the bound.
    if (this.buffer.length > maxLineCharacters) throw new ServerSentEventTooLargeError("line");
  }

  /** The body ended: delivers a final event even without its blank line. */
  end(onData: (data: string) => void): void {
    this.buffer += this.decoder.decode();
    this.takeLines(true, onData);
    if (this.buffer.startsWith("data:")) this.addDataLine(this.buffer);
    this.buffer = "";
    if (this.dataLines.length > 0) onData(this.dataLines.join("\n"));
    this.dataLines = [];
    this.dataCharacters = 0;
  }

  private takeLines(final: boolean, onData: (data: string) => void): void {
    const buffer = this.buffer;
    // Workers end lines with "\n" alone: then the native indexOf finds each line end, instead of a
    // look at every character (a chunk per token of every stream passes through here).
    if (buffer.indexOf("\r") === -1) {
      let start = 0;
      for (let end = buffer.indexOf("\n"); end !== -1; end = buffer.indexOf("\n", start)) {
        this.takeLine(buffer.slice(start, end), onData);
        start = end + 1;
      }
      this.buffer = start === 0 ? buffer : buffer.slice(start);
      return;
    }
    let start = 0;
    for (let index = 0; index < buffer.length; index++) {
      const code = buffer.charCodeAt(index);
      if (code !== 10 && code !== 13) continue;
      // A lone "\r" at the end may be the first half of "\r\n": wait for more input.
      if (code === 13 && index === buffer.length - 1 && !final) break;
      this.takeLine(buffer.slice(start, index), onData);
      if (code === 13 && buffer.charCodeAt(index + 1) === 10) index++;
      start = index + 1;
    }
    this.buffer = start === 0 ? buffer : buffer.slice(start);
  }

  private takeLine(line: string, onData: (data: string) => void): void {
    if (line === "") {
      if (this.dataLines.length === 1) onData(this.dataLines[0]!);
      else if (this.dataLines.length > 1) onData(this.dataLines.join("\n"));
      this.dataLines = [];
      this.dataCharacters = 0;
    } else if (line.startsWith("data:")) {
      this.addDataLine(line);
    }
  }

  private addDataLine(line: string): void {
    const value = line.slice(5);
    const data = value.charCodeAt(0) === 32 ? value.slice(1) : value;
    // Many short data lines without the blank line that ends the event grow it as surely as one
    // long line. Counted as joined: the data and a "\n" before every line but the first.
    this.dataCharacters += data.length + (this.dataLines.length > 0 ? 1 : 0);
    if (this.dataCharacters > maxServerSentEventCharacters) throw new ServerSentEventTooLargeError("event");
    this.dataLines.push(data);
  }
}

/** The data of each event of a text/event-stream body, as an async iterable (see ServerSentEventParser). */
export async function* readServerSentEventData(body: AsyncIterable<Uint8Array>): AsyncGenerator<string, void, undefined> {
  const parser = new ServerSentEventParser();
  const events: string[] = [];
  const collect = (data: string) => events.push(data);
  for await (const chunk of body) {
    parser.push(chunk, collect);
    yield* events.splice(0);
  }
  parser.end(collect);
  yield* events.splice(0);
}
