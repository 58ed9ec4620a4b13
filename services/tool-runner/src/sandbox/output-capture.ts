/** Marks where the middle of a long output was dropped. */
export function cutMarker(droppedBytes: number): string {
  return `\n… [${droppedBytes} bytes cut] …\n`;
}

/**
 * Collects a command's output as it arrives (stdout and stderr in arrival order) keeping only the
 * first and last `limitBytes / 2` bytes, so memory stays bounded however much a command writes.
 * Once more than `killBytes` have arrived `onKillLimit` is called, once: reading gigabytes only to
 * drop them wastes the host, so the backend kills the command.
 */
export class OutputCapture {
  readonly #headLimit: number;
  readonly #tailLimit: number;
  readonly #killBytes: number;
  readonly #onKillLimit: () => void;
  readonly #head: Buffer[] = [];
  #headBytes = 0;
  // The tail is a queue of chunks trimmed from the front; a chunk is sliced, never copied whole.
  readonly #tail: Buffer[] = [];
  #tailBytes = 0;
  #totalBytes = 0;
  #killLimitPassed = false;

  constructor(options: { limitBytes: number; killBytes: number; onKillLimit: () => void }) {
    const limit = Math.max(0, Math.floor(options.limitBytes));
    this.#headLimit = Math.ceil(limit / 2);
    this.#tailLimit = limit - this.#headLimit;
    this.#killBytes = options.killBytes;
    this.#onKillLimit = options.onKillLimit;
  }

  /** Bytes received so far, kept or not. */
  get totalBytes(): number {
    return this.#totalBytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#totalBytes += chunk.length;
    let rest = chunk;
    if (this.#headBytes < this.#headLimit) {
      const taken = rest.subarray(0, this.#headLimit - this.#headBytes);
      this.#head.push(taken);
      this.#headBytes += taken.length;
      rest = rest.subarray(taken.length);
    }
    if (rest.length > 0 && this.#tailLimit > 0) {
      // A chunk bigger than the whole tail replaces it; copy so a huge chunk is not kept alive.
      if (rest.length >= this.#tailLimit) {
        this.#tail.length = 0;
        this.#tail.push(Buffer.from(rest.subarray(rest.length - this.#tailLimit)));
        this.#tailBytes = this.#tailLimit;
      } else {
        this.#tail.push(rest);
        this.#tailBytes += rest.length;
        while (this.#tailBytes > this.#tailLimit) {
          const first = this.#tail[0] as Buffer;
          const excess = this.#tailBytes - this.#tailLimit;
          if (first.length <= excess) {
            this.#tail.shift();
            this.#tailBytes -= first.length;
          } else {
            this.#tail[0] = first.subarray(excess);
            this.#tailBytes -= excess;
          }
        }
      }
    }
    if (!this.#killLimitPassed && this.#totalBytes > this.#killBytes) {
      this.#killLimitPassed = true;
      this.#onKillLimit();
    }
  }

  /** The kept output as text, with the cut marked when bytes were dropped. */
  result(): { output: string; truncated: boolean } {
    const head = Buffer.concat(this.#head);
    const tail = Buffer.concat(this.#tail);
    const dropped = this.#totalBytes - head.length - tail.length;
    if (dropped <= 0) return { output: Buffer.concat([head, tail]).toString("utf8"), truncated: false };
    // Cut at character boundaries so a split multi-byte character does not become U+FFFD noise.
    const headEnd = utf8BoundaryBefore(head, head.length);
    const tailStart = utf8BoundaryAfter(tail, 0);
    const droppedBytes = dropped + (head.length - headEnd) + tailStart;
    return {
      output: head.subarray(0, headEnd).toString("utf8") + cutMarker(droppedBytes) + tail.subarray(tailStart).toString("utf8"),
      truncated: true,
    };
  }
}

const isContinuationByte = (byte: number | undefined) => byte !== undefined && (byte & 0xc0) === 0x80;

/** The largest index ≤ end where a UTF-8 character starts and the character before it is whole. */
function utf8BoundaryBefore(buffer: Buffer, end: number): number {
  let start = end;
  // Walk back over at most three continuation bytes to the lead byte of the last character.
  while (start > 0 && end - start < 4 && isContinuationByte(buffer[start - 1])) start -= 1;
  if (start === 0) return end;
  const lead = buffer[start - 1] as number;
  const length = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return end - (start - 1) >= length ? end : start - 1;
}

/** The first index ≥ start that is not in the middle of a UTF-8 character. */
function utf8BoundaryAfter(buffer: Buffer, start: number): number {
  let index = start;
  while (index < buffer.length && index - start < 3 && isContinuationByte(buffer[index])) index += 1;
  return index;
}
