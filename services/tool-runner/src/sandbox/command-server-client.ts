import type { Duplex } from "node:stream";
import { SandboxContainerDiedError } from "./sandbox";

/**
 * The tool-runner's side of sandbox-agent/command-server.py, the sandbox container's main process:
 * JSON-line requests go to its stdin, binary frames (type u8, id u32 BE, length u32 BE, payload)
 * come back on its stdout, all over the container's attach stream (Docker's 8-byte stream headers
 * around them, since the container has no TTY).
 */

const frameType = { stdout: 1, stderr: 2, exit: 3, error: 4, ready: 5 } as const;
const dockerStream = { stdout: 1, stderr: 2 } as const;
const frameHeaderBytes = 9;
// A frame bigger than this is not something the server sends (it reads 64 KiB at a time): the stream is garbage.
const maxFramePayloadBytes = 16 * 1024 * 1024;

/** How a command ended, as the server reports it. */
export interface ServerExit {
  readonly code: number | null;
  readonly signal: number | null;
  /** Background processes still held the command's output open when its shell exited; the server killed its group. */
  readonly lingering?: boolean;
}

/** Callbacks of one command in flight; exactly one of onExit/onFailure is called, once. */
export interface CommandListener {
  onOutput(chunk: Buffer): void;
  onExit(exit: ServerExit): void;
  /** The server could not start the command, or the connection died before it ended. */
  onFailure(error: Error): void;
}

/**
 * One container's command server: several commands in flight at once, matched by id. When the
 * stream ends or breaks, every command in flight fails with a SandboxContainerDiedError and
 * `closed` resolves with the reason.
 */
export class CommandServerConnection {
  readonly #stream: Duplex;
  readonly #listeners = new Map<number, CommandListener>();
  readonly #onServerStderr: (text: string) => void;
  readonly #onClose: (reason: string) => void;
  #nextId = 1;
  #closedReason: string | undefined;
  #resolveReady!: () => void;
  #resolveClosed!: (reason: string) => void;
  /** Resolves once the server said it is ready for commands. */
  readonly ready: Promise<void>;
  /** Resolves with the reason when the connection is gone (never rejects). */
  readonly closed: Promise<string>;

  /**
   * `stream` is the container's hijacked attach stream (stdin, stdout, stderr). `onClose` is called
   * once, after the commands in flight were failed.
   */
  constructor(stream: Duplex, options: { onServerStderr: (text: string) => void; onClose: (reason: string) => void }) {
    this.#stream = stream;
    this.#onServerStderr = options.onServerStderr;
    this.#onClose = options.onClose;
    this.ready = new Promise((resolve) => {
      this.#resolveReady = resolve;
    });
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    const parseFrames = createFrameParser((type, id, payload) => this.#onFrame(type, id, payload), (problem) => this.close(problem));
    stream.on(
      "data",
      createDemultiplexer((payload, streamType) => {
        if (streamType === dockerStream.stderr) this.#onServerStderr(payload.toString("utf8"));
        else parseFrames(payload);
      }),
    );
    stream.once("end", () => this.close("the command server's output ended"));
    stream.once("close", () => this.close("the attach stream closed"));
    stream.once("error", (error: Error) => this.close(`the attach stream failed: ${error.message}`));
  }

  /** Whether commands can still be sent. */
  get open(): boolean {
    return this.#closedReason === undefined;
  }

  /** Commands sent and not yet ended (nor abandoned). */
  get inFlight(): number {
    return this.#listeners.size;
  }

  /** Starts `command` in `cwd`; returns its id (for `kill`/`abandon`). Fails the listener at once when closed. */
  run(command: string, cwd: string, listener: CommandListener): number {
    const id = this.#nextId;
    this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1;
    if (this.#closedReason !== undefined) {
      listener.onFailure(new SandboxContainerDiedError(`the sandbox container died: ${this.#closedReason}`));
      return id;
    }
    this.#listeners.set(id, listener);
    this.#stream.write(`${JSON.stringify({ id, command, cwd })}\n`);
    return id;
  }

  /** SIGKILLs the command's process group, and stops listening to it: nothing more is reported. */
  kill(id: number): void {
    this.#listeners.delete(id);
    if (this.#closedReason === undefined) this.#stream.write(`${JSON.stringify({ id, kill: true })}\n`);
  }

  /** Ends the connection (idempotent); commands in flight fail with `reason`. */
  close(reason: string): void {
    if (this.#closedReason !== undefined) return;
    this.#closedReason = reason;
    const listeners = [...this.#listeners.values()];
    this.#listeners.clear();
    for (const listener of listeners) listener.onFailure(new SandboxContainerDiedError(`the sandbox container died: ${reason}`));
    this.#stream.destroy();
    this.#resolveClosed(reason);
    this.#onClose(reason);
  }

  #onFrame(type: number, id: number, payload: Buffer): void {
    if (type === frameType.ready) {
      this.#resolveReady();
      return;
    }
    const listener = this.#listeners.get(id);
    if (listener === undefined) {
      // Output of a killed command still on its way, or an error about a request the server could not parse.
      if (type === frameType.error) this.#onServerStderr(`command server error for request ${id}: ${payload.toString("utf8")}`);
      return;
    }
    switch (type) {
      case frameType.stdout:
      case frameType.stderr:
        listener.onOutput(payload);
        return;
      case frameType.exit: {
        this.#listeners.delete(id);
        let exit: ServerExit;
        try {
          exit = JSON.parse(payload.toString("utf8")) as ServerExit;
        } catch {
          listener.onFailure(new Error(`the command server sent a malformed exit status: ${payload.toString("utf8").slice(0, 200)}`));
          return;
        }
        listener.onExit(exit);
        return;
      }
      case frameType.error:
        this.#listeners.delete(id);
        listener.onFailure(new Error(`the sandbox could not run the command: ${payload.toString("utf8")}`));
        return;
      default:
        this.close(`the command server sent an unknown frame type ${type}`);
    }
  }
}

/** Parses the command server's frames; frames may straddle chunks. `onGarbage` is called once on nonsense. */
export function createFrameParser(onFrame: (type: number, id: number, payload: Buffer) => void, onGarbage: (problem: string) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  let broken = false;
  return (chunk: Buffer) => {
    if (broken) return;
    let data = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
    while (data.length >= frameHeaderBytes) {
      const length = data.readUInt32BE(5);
      if (length > maxFramePayloadBytes) {
        broken = true;
        onGarbage(`the command server sent a frame of ${length} bytes`);
        return;
      }
      if (data.length < frameHeaderBytes + length) break;
      onFrame(data.readUInt8(0), data.readUInt32BE(1), data.subarray(frameHeaderBytes, frameHeaderBytes + length));
      data = data.subarray(frameHeaderBytes + length);
    }
    // Copied, so a large chunk is not kept alive by the few bytes of a split header.
    pending = Buffer.from(data);
  };
}

/**
 * Splits Docker's multiplexed attach/exec stream (8-byte headers: stream type, 3 zero bytes,
 * big-endian length) into payloads with their stream type (1 stdout, 2 stderr), in arrival order;
 * headers and payloads may straddle chunks.
 */
export function createDemultiplexer(onPayload: (payload: Buffer, streamType: number) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  let payloadLeft = 0;
  let streamType = 1;
  return (chunk: Buffer) => {
    let data = chunk;
    while (data.length > 0) {
      if (payloadLeft > 0) {
        const payload = data.subarray(0, payloadLeft);
        payloadLeft -= payload.length;
        data = data.subarray(payload.length);
        onPayload(payload, streamType);
        continue;
      }
      const header = pending.length > 0 ? Buffer.concat([pending, data]) : data;
      if (header.length < 8) {
        pending = Buffer.from(header);
        return;
      }
      pending = Buffer.alloc(0);
      streamType = header.readUInt8(0);
      payloadLeft = header.readUInt32BE(4);
      data = header.subarray(8);
    }
  };
}
