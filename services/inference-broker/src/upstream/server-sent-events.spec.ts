import { ServerSentEventParser, ServerSentEventTooLargeError, maxServerSentEventCharacters, readServerSentEventData } from "./server-sent-events";

const encoder = new TextEncoder();

async function* bodyOf(chunks: readonly Uint8Array[]): AsyncGenerator<Uint8Array, void, undefined> {
  for (const chunk of chunks) yield chunk;
}

/** Splits the UTF-8 bytes of `text` at the given byte offsets. */
function splitAt(text: string, offsets: readonly number[]): Uint8Array[] {
  const bytes = encoder.encode(text);
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const offset of offsets) {
    chunks.push(bytes.subarray(start, offset));
    start = offset;
  }
  chunks.push(bytes.subarray(start));
  return chunks;
}

function byteByByte(text: string): Uint8Array[] {
  return Array.from(encoder.encode(text), (byte) => Uint8Array.of(byte));
}

async function collect(chunks: readonly Uint8Array[]): Promise<string[]> {
  const events: string[] = [];
  for await (const data of readServerSentEventData(bodyOf(chunks))) events.push(data);
  return events;
}

// What vLLM sends for a short streamed completion, with the line ending of the test.
function vllmStream(lineEnding: string): string {
  return [
    'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
    "",
    'data: {"choices":[{"index":0,"delta":{"content":"Héllo 🦋"}}]}',
    "",
    "data: [DONE]",
    "",
    "",
  ].join(lineEnding);
}

const vllmEvents = [
  '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
  '{"choices":[{"index":0,"delta":{"content":"Héllo 🦋"}}]}',
  "[DONE]",
];

describe("readServerSentEventData", () => {
  it.each([
    ["LF", "\n"],
    ["CRLF", "\r\n"],
    ["CR", "\r"],
  ])("yields the data of each event with %s line endings", async (_name, lineEnding) => {
    expect(await collect([encoder.encode(vllmStream(lineEnding))])).toEqual(vllmEvents);
  });

  it.each([
    ["LF", "\n"],
    ["CRLF", "\r\n"],
    ["CR", "\r"],
  ])("gives the same events when the %s stream arrives one byte at a time", async (_name, lineEnding) => {
    // One byte per chunk splits every line, every "\r\n" pair and every multi-byte character.
    expect(await collect(byteByByte(vllmStream(lineEnding)))).toEqual(vllmEvents);
  });

  it("reassembles a multi-byte UTF-8 character split across chunks", async () => {
    const text = "data: 🦋é\n\n";
    // "🦋" is 4 bytes starting at byte 6; cut after its first and third byte, then inside "é".
    expect(await collect(splitAt(text, [7, 9, 11]))).toEqual(["🦋é"]);
  });

  it('treats "\\r" at the end of a chunk and "\\n" at the start of the next as one line ending', async () => {
    // Were the pair read as two line endings, the "\n" would end the event early, and "data: b"
    // would be a second event instead of the second line of the first.
    const events = await collect([encoder.encode("data: a\r"), encoder.encode("\ndata: b\r"), encoder.encode("\n\r"), encoder.encode("\n")]);
    expect(events).toEqual(["a\nb"]);
  });

  it('reads "\\r\\r\\n" as a CR line ending followed by a CRLF blank line', async () => {
    expect(await collect([encoder.encode("data: x\r\r"), encoder.encode("\ndata: y\r\n\r\n")])).toEqual(["x", "y"]);
  });

  it("splits a line in the middle and still yields it whole", async () => {
    const text = 'data: {"choices":[]}\n\n';
    expect(await collect(splitAt(text, [3, 10, 20]))).toEqual(['{"choices":[]}']);
  });

  it('joins the lines of a multi-line data field with "\\n"', async () => {
    expect(await collect([encoder.encode("data: first\ndata: second\ndata:third\n\n")])).toEqual(["first\nsecond\nthird"]);
  });

  it('removes one space after "data:" and no more, and accepts "data:" without a space', async () => {
    expect(await collect([encoder.encode("data:{}\n\ndata: {}\n\ndata:  two\n\n")])).toEqual(["{}", "{}", " two"]);
  });

  it("skips comments such as keep-alives, and the event, id and retry fields", async () => {
    const text = ": keepalive\n\nevent: message\nid: 7\nretry: 1000\n: ping\ndata: payload\n\n:\n\n";
    expect(await collect([encoder.encode(text)])).toEqual(["payload"]);
  });

  it("yields nothing for blank lines that end no event", async () => {
    expect(await collect([encoder.encode("\n\n\r\n\r\n: only a comment\n\n")])).toEqual([]);
  });

  it('yields an empty string for an event whose data is empty ("data:")', async () => {
    expect(await collect([encoder.encode("data:\n\n")])).toEqual([""]);
  });

  it("delivers a final event that has no trailing blank line", async () => {
    expect(await collect([encoder.encode("data: one\n\ndata: [DONE]\n")])).toEqual(["one", "[DONE]"]);
  });

  it("delivers a final event whose last line has no line ending at all", async () => {
    expect(await collect([encoder.encode("data: a\ndata: "), encoder.encode("[DONE]")])).toEqual(["a\n[DONE]"]);
  });

  it('delivers a final event that ends with a lone "\\r"', async () => {
    expect(await collect([encoder.encode("data: [DONE]\r")])).toEqual(["[DONE]"]);
  });

  it("ignores a final comment without a line ending", async () => {
    expect(await collect([encoder.encode("data: a\n\n: bye")])).toEqual(["a"]);
  });

  it("yields nothing for an empty body", async () => {
    expect(await collect([])).toEqual([]);
    expect(await collect([new Uint8Array(0)])).toEqual([]);
  });

  it("yields each event as soon as its blank line arrives, before the body ends", async () => {
    let releaseRest: () => void = () => undefined;
    const rest = new Promise<void>((resolve) => {
      releaseRest = resolve;
    });
    async function* slowBody(): AsyncGenerator<Uint8Array, void, undefined> {
      yield encoder.encode("data: first\n\n");
      await rest;
      yield encoder.encode("data: second\n\n");
    }
    const events = readServerSentEventData(slowBody());
    // Would hang (and time out) if the reader buffered until the end of the body.
    await expect(events.next()).resolves.toEqual({ value: "first", done: false });
    releaseRest();
    await expect(events.next()).resolves.toEqual({ value: "second", done: false });
    await expect(events.next()).resolves.toEqual({ value: undefined, done: true });
  });
});

describe("ServerSentEventParser bounds", () => {
  /** Feeds `chunks` until the parser throws; says how many it took, and what it threw. */
  function feedUntilThrow(chunks: Iterable<Uint8Array>): { fed: number; events: string[]; error: unknown } {
    const parser = new ServerSentEventParser();
    const events: string[] = [];
    let fed = 0;
    try {
      for (const chunk of chunks) {
        fed += 1;
        parser.push(chunk, (data) => events.push(data));
      }
      parser.end((data) => events.push(data));
    } catch (error: unknown) {
      return { fed, events, error };
    }
    return { fed, events, error: undefined };
  }

  const piece = 64 * 1024;
  /** At most four times the bound: enough to see where the parser stops, and a deadline of its own. */
  function* repeated(first: string, then: string): Generator<Uint8Array> {
    yield encoder.encode(first);
    for (let sent = 0; sent < 4 * maxServerSentEventCharacters; sent += then.length) yield encoder.encode(then);
  }

  it("throws once a line passes the bound without its line ending, without reading on", () => {
    const { fed, events, error } = feedUntilThrow(repeated("data: ok\n\ndata: ", "x".repeat(piece)));
    expect(events).toEqual(["ok"]);
    expect(error).toBeInstanceOf(ServerSentEventTooLargeError);
    expect((error as ServerSentEventTooLargeError).what).toBe("line");
    // Stops within one chunk of the bound.
    expect(fed).toBeLessThanOrEqual(maxServerSentEventCharacters / piece + 2);
  });

  it("throws once an event's data lines pass the bound without the blank line that ends the event", () => {
    const line = `data: ${"y".repeat(1_000)}\n`;
    const { fed, error } = feedUntilThrow(repeated("", line));
    expect(error).toBeInstanceOf(ServerSentEventTooLargeError);
    expect((error as ServerSentEventTooLargeError).what).toBe("event");
    expect(fed).toBeLessThanOrEqual(maxServerSentEventCharacters / 1_000 + 2);
  });

  it("still delivers an event whose data is exactly at the bound, in one line or in many", () => {
    const data = "z".repeat(maxServerSentEventCharacters);
    expect(feedUntilThrow([encoder.encode(`data: ${data}\n\n`)])).toEqual({ fed: 1, events: [data], error: undefined });
    expect(feedUntilThrow([encoder.encode(`data: ${data}z\n\n`)]).error).toBeInstanceOf(ServerSentEventTooLargeError);
    // 1024 lines joined by "\n": 1024 + 1023 × (1 + 1023) characters, exactly the bound.
    const lines = Array.from({ length: 1024 }, (_, index) => (index === 0 ? "a".repeat(1_024) : "b".repeat(1_023)));
    const event = (dataLines: string[]) => encoder.encode(`${dataLines.map((line) => `data: ${line}`).join("\n")}\n\n`);
    expect(feedUntilThrow([event(lines)]).events).toEqual([lines.join("\n")]);
    expect(feedUntilThrow([event([...lines.slice(0, -1), `${lines.at(-1)}b`])]).error).toBeInstanceOf(ServerSentEventTooLargeError);
  });

  it("fails the async iterable too", async () => {
    await expect(collect([encoder.encode(`data: ${"x".repeat(maxServerSentEventCharacters + 10)}`)])).rejects.toBeInstanceOf(ServerSentEventTooLargeError);
  });
});
