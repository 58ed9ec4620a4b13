import { ServerError, Status } from "nice-grpc-common";

/** Bytes of the prefix of every gRPC message: a compressed flag, then the length (big-endian). */
const prefixBytes = 5;

/** A message framed for the wire: one allocation, one copy. */
export function frameMessage(message: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(prefixBytes + message.length);
  frame[0] = 0;
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, prefixBytes);
  return frame;
}

/**
 * Cuts a stream of DATA chunks into gRPC messages. A chunk usually holds whole messages, which are
 * handed on as views of it; only a message split across chunks is copied.
 */
export class FrameDecoder {
  private pending: Buffer | undefined;

  constructor(private readonly maxMessageBytes: number) {}

  /** Calls `onMessage` for every message completed by `chunk`; throws a ServerError on bad frames. */
  push(chunk: Buffer, onMessage: (message: Buffer) => void): void {
    let buffer = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    let offset = 0;
    while (buffer.length - offset >= prefixBytes) {
      const compressed = buffer[offset];
      const length = buffer.readUInt32BE(offset + 1);
      if (compressed !== 0) {
        throw new ServerError(Status.UNIMPLEMENTED, "compressed messages are not supported; send grpc-encoding identity");
      }
      if (length > this.maxMessageBytes) {
        throw new ServerError(Status.RESOURCE_EXHAUSTED, `message of ${length} bytes is over the limit of ${this.maxMessageBytes} bytes`);
      }
      if (buffer.length - offset - prefixBytes < length) break;
      const start = offset + prefixBytes;
      offset = start + length;
      onMessage(buffer.subarray(start, offset));
    }
    if (offset < buffer.length) {
      buffer = buffer.subarray(offset);
      // A copy, so that the rest of a large chunk is not kept alive by a few pending bytes.
      this.pending = Buffer.from(buffer);
    }
  }

  /** Whether a message was cut off by the end of the stream. */
  get hasPartialMessage(): boolean {
    return this.pending !== undefined;
  }
}
