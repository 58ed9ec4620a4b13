import { ServerSentEventReader } from "./sse";

const bytes = (text: string) => new TextEncoder().encode(text);

describe("ServerSentEventReader", () => {
  it("yields the data of each event once its blank line has arrived, across chunk boundaries", () => {
    const reader = new ServerSentEventReader();
    expect(reader.push(bytes('data: {"a":1}\n\ndata: {"b"'))).toEqual(['{"a":1}']);
    expect(reader.push(bytes(":2}\n"))).toEqual([]);
    expect(reader.push(bytes("\ndata: [DONE]\n\n"))).toEqual(['{"b":2}', "[DONE]"]);
    expect(reader.end()).toEqual([]);
  });

  it("accepts CRLF line ends split between chunks, multi-line data and other fields", () => {
    const reader = new ServerSentEventReader();
    expect(reader.push(bytes("event: x\r\ndata: one\r\ndata:two\r"))).toEqual([]);
    expect(reader.push(bytes("\n\r\n: comment\r\n\r\n"))).toEqual(["one\ntwo"]);
  });

  it("keeps a multi-byte character split between chunks whole, and delivers a last event without its blank line", () => {
    const reader = new ServerSentEventReader();
    const encoded = bytes("data: vlinder 🦋");
    expect(reader.push(encoded.subarray(0, encoded.length - 2))).toEqual([]);
    expect(reader.push(encoded.subarray(encoded.length - 2))).toEqual([]);
    expect(reader.end()).toEqual(["vlinder 🦋"]);
  });
});
