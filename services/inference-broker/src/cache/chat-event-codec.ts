import { ChatEvent } from "@vlinders/proto";

/**
 * The stored form of a cached response: a format byte, the model shared by the events, then each
 * event as protobuf bytes, every part preceded by its length as a varint. A streamed answer is
 * dozens to thousands of small events; protobuf keeps each a few bytes, and writing the model once
 * (it is the same on every event) saves more than the events themselves weigh.
 */
const formatVersion = 1;
const utf8Decoder = new TextDecoder();
const utf8Encoder = new TextEncoder();

/** Encodes the events of one response for the cache. */
export function encodeChatEvents(events: readonly ChatEvent[]): Uint8Array {
  const first = events[0]?.model ?? "";
  const model = events.every((event) => event.model === first) ? first : "";
  const parts: Uint8Array[] = [utf8Encoder.encode(model)];
  for (const event of events) {
    parts.push(ChatEvent.encode(model === "" ? event : { event: event.event, model: "" }).finish());
  }
  let size = 1;
  for (const part of parts) size += varintSize(part.length) + part.length;
  // Not Buffer.allocUnsafe: a small one is a slice of a shared 8 KiB slab, which an entry kept in
  // the in-process cache would hold on to, unaccounted for.
  const out = new Uint8Array(size);
  out[0] = formatVersion;
  let offset = 1;
  for (const part of parts) {
    offset = writeVarint(out, offset, part.length);
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Decodes what {@link encodeChatEvents} wrote. Throws on bytes it did not write. */
export function decodeChatEvents(bytes: Uint8Array): ChatEvent[] {
  if (bytes[0] !== formatVersion) throw new Error(`cached response: unknown format ${String(bytes[0])}`);
  let offset = 1;
  const next = (): Uint8Array => {
    const [length, start] = readVarint(bytes, offset);
    const end = start + length;
    if (end > bytes.length) throw new Error("cached response: truncated");
    offset = end;
    return bytes.subarray(start, end);
  };
  const model = utf8Decoder.decode(next());
  const events: ChatEvent[] = [];
  while (offset < bytes.length) {
    const event = ChatEvent.decode(next());
    if (model !== "") event.model = model;
    events.push(event);
  }
  return events;
}

function varintSize(value: number): number {
  let size = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    size += 1;
  }
  return size;
}

function writeVarint(out: Uint8Array, offset: number, value: number): number {
  while (value >= 0x80) {
    out[offset++] = (value % 0x80) | 0x80;
    value = Math.floor(value / 0x80);
  }
  out[offset++] = value;
  return offset;
}

function readVarint(bytes: Uint8Array, offset: number): [value: number, next: number] {
  let value = 0;
  let scale = 1;
  for (let position = offset; position < bytes.length && position < offset + 5; position += 1) {
    const byte = bytes[position] ?? 0;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, position + 1];
    scale *= 0x80;
  }
  throw new Error("cached response: bad length");
}
