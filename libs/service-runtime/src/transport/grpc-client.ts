import { lookup, type LookupAddress } from "node:dns";
import {
  connect as connectHttp2,
  constants as http2Constants,
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from "node:http2";
import { connect as connectTcp, isIP, type Socket } from "node:net";
import { AbortError } from "abort-controller-x";
import { ClientError, type Metadata, Status } from "nice-grpc-common";
import { parseRetryAfter, retryAfterTrailer, withRetryAfter } from "../retry-hint";
import { FrameDecoder, frameMessage } from "./grpc-frames";
import { addMetadataHeaders, decodeGrpcMessage, formatGrpcTimeout, grpcStatusOf, metadataFromHeaders, statusOfHttpStatus } from "./grpc-metadata";

/** A call as the transport sends it: the request already encoded. */
export interface WireCall {
  path: string;
  request: Uint8Array;
  metadata: Metadata;
  /** Absolute deadline (epoch ms): sent as grpc-timeout and enforced here too. */
  deadline: number;
  /** The deadline as the caller gave it, for the message when it passes. */
  timeoutMs: number;
  signal: AbortSignal | undefined;
  onHeader?: (header: Metadata) => void;
  onTrailer?: (trailer: Metadata) => void;
  /** Called once when the call ends, with its status (CANCELLED when the signal aborted it). */
  onEnd?: (code: Status, details: string | undefined) => void;
}

/** How often an idle connection is pinged, and how long its answer may take. */
export interface KeepaliveSettings {
  intervalMs: number;
  timeoutMs: number;
}

const defaultKeepalive: KeepaliveSettings = { intervalMs: 30_000, timeoutMs: 10_000 };
/** Messages read ahead of a slow consumer before the stream is paused (HTTP/2 flow control takes over). */
const highWaterMessages = 64;

/**
 * HTTP/2 connections to one address of the mesh ("host:port", "dns:///host:port"), opened when
 * first needed and again after they close. With several connections, each resolves the name anew
 * and takes the next address: behind a headless Service, calls spread over the pods.
 */
export class Http2Channel {
  private readonly host: string;
  private readonly port: number;
  private readonly sessions: Array<ClientHttp2Session | undefined>;
  private nextSlot = 0;
  private closed = false;

  constructor(
    readonly address: string,
    connections = 1,
    private readonly keepalive: KeepaliveSettings = defaultKeepalive,
  ) {
    const target = address.replace(/^dns:(\/\/[^/]*\/)?/, "");
    const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(target);
    if (!match) throw new Error(`${address}: expected host:port`);
    this.host = match[1] ?? match[2]!;
    this.port = Number(match[3]);
    this.sessions = new Array<ClientHttp2Session | undefined>(Math.max(1, connections)).fill(undefined);
  }

  /** Opens a stream for a call on the next connection. */
  request(headers: OutgoingHttpHeaders): ClientHttp2Stream {
    if (this.closed) throw new ClientError(String(headers[":path"]), Status.UNAVAILABLE, `the channel to ${this.address} is closed`);
    const slot = this.nextSlot;
    this.nextSlot = (slot + 1) % this.sessions.length;
    let session = this.sessions[slot];
    if (!session || session.closed || session.destroyed) {
      session = this.connect(slot);
      this.sessions[slot] = session;
    }
    return session.request(headers, { endStream: false });
  }

  close(): void {
    this.closed = true;
    for (const session of this.sessions) session?.close();
    this.sessions.fill(undefined);
  }

  private connect(slot: number): ClientHttp2Session {
    const { host, port } = this;
    const { intervalMs: keepaliveIntervalMs, timeoutMs: keepaliveTimeoutMs } = this.keepalive;
    const pickAddress = (
      hostname: string,
      _options: unknown,
      callback: (error: NodeJS.ErrnoException | null, address: string, family: number) => void,
    ) => {
      lookup(hostname, { all: true }, (error, addresses: LookupAddress[]) => {
        if (error || addresses.length === 0) return callback(error ?? new Error(`${hostname}: no address`), "", 4);
        const chosen = addresses[slot % addresses.length]!;
        callback(null, chosen.address, chosen.family);
      });
    };
    let socket: Socket | undefined;
    const session = connectHttp2(`http://${isIP(host) === 6 ? `[${host}]` : host}:${port}`, {
      maxSessionMemory: 1024,
      settings: { initialWindowSize: 1024 * 1024, enablePush: false },
      createConnection: () => {
        socket = connectTcp({ host, port, lookup: isIP(host) === 0 ? pickAddress : undefined });
        socket.setNoDelay(true);
        socket.setKeepAlive(true, keepaliveIntervalMs);
        return socket;
      },
    });
    const forget = () => {
      if (this.sessions[slot] === session) this.sessions[slot] = undefined;
    };
    session.on("error", forget);
    session.on("close", forget);
    // A connection the server is leaving (GOAWAY) takes no new streams; those on it run on.
    session.on("goaway", forget);
    session.once("connect", () => session.setLocalWindowSize(16 * 1024 * 1024));
    // Pings find a peer that vanished without closing the connection, which would hold a long
    // stream open forever. Anything read from the peer proves it alive as well as a ping's answer
    // does: a connection that is receiving is never pinged, and a ping is not held against a peer
    // that keeps sending (under heavy load its answer waits behind the data of thousands of streams).
    let bytesReadAtLastCheck = 0;
    const receivedSinceLastCheck = (): boolean => {
      const bytesRead = socket?.bytesRead ?? 0;
      const received = bytesRead !== bytesReadAtLastCheck;
      bytesReadAtLastCheck = bytesRead;
      return received;
    };
    const keepalive = setInterval(() => {
      if (session.closed || session.destroyed || receivedSinceLastCheck()) return;
      const timeout = setTimeout(() => {
        if (!receivedSinceLastCheck()) session.destroy(new Error(`${this.address} did not answer a ping within ${keepaliveTimeoutMs} ms`));
      }, keepaliveTimeoutMs);
      session.ping((error) => {
        clearTimeout(timeout);
        if (error && !session.destroyed) session.destroy(error);
      });
    }, keepaliveIntervalMs);
    keepalive.unref();
    session.once("close", () => clearInterval(keepalive));
    session.unref();
    return session;
  }
}

/**
 * One call on the wire, yielding the response messages as they arrive (a unary call yields one).
 * Ends with a ClientError carrying the status when the call fails, an AbortError when `signal`
 * aborts it, and DEADLINE_EXCEEDED when its deadline passes.
 */
export async function* callOverHttp2<Message>(
  channel: Http2Channel,
  call: WireCall,
  decode: (bytes: Buffer) => Message,
): AsyncGenerator<Message, void, undefined> {
  const { path, signal } = call;
  if (signal?.aborted) {
    call.onEnd?.(Status.CANCELLED, undefined);
    throw new AbortError();
  }
  const headers = addMetadataHeaders(
    {
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc+proto",
      te: "trailers",
      "grpc-accept-encoding": "identity",
      "grpc-timeout": formatGrpcTimeout(call.deadline - Date.now()),
    },
    call.metadata,
  );
  const stream = channel.request(headers);
  stream.end(frameMessage(call.request));

  const queue: Buffer[] = [];
  const decoder = new FrameDecoder(Number.MAX_SAFE_INTEGER);
  let outcome: { code: Status; details: string } | undefined;
  let failure: unknown;
  let closed = false;
  let ended = false;
  /** Whether the server sent response headers: a connection lost before them is UNAVAILABLE. */
  let answered = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    const resolve = wake;
    wake = undefined;
    resolve?.();
  };
  /** A downstream's retry hint (its `retry-after-ms`), passed on with the ClientError. */
  let retryAfterMs: number | undefined;
  const settle = (code: Status, details: string, statusHeaders?: IncomingHttpHeaders) => {
    outcome ??= { code, details };
    if (statusHeaders) retryAfterMs ??= parseRetryAfter(statusHeaders[retryAfterTrailer]);
  };

  stream.on("response", (responseHeaders: IncomingHttpHeaders) => {
    answered = true;
    const httpStatus = Number(responseHeaders[":status"]);
    if (httpStatus !== 200) {
      settle(statusOfHttpStatus(httpStatus), `${channel.address} answered HTTP ${httpStatus}, not gRPC`);
      return;
    }
    const code = grpcStatusOf(responseHeaders);
    // Trailers-only: the status came in the headers.
    if (code !== undefined) {
      call.onTrailer?.(metadataFromHeaders(responseHeaders));
      settle(code, decodeGrpcMessage(responseHeaders["grpc-message"]), responseHeaders);
    } else {
      call.onHeader?.(metadataFromHeaders(responseHeaders));
    }
  });
  stream.on("data", (chunk: Buffer) => {
    try {
      decoder.push(chunk, (message) => queue.push(message));
    } catch (error: unknown) {
      failure = new ClientError(path, Status.INTERNAL, `${channel.address} sent a malformed response: ${(error as Error).message}`);
      stream.close(http2Constants.NGHTTP2_CANCEL);
    }
    if (queue.length > highWaterMessages) stream.pause();
    notify();
  });
  stream.on("trailers", (trailers: IncomingHttpHeaders) => {
    call.onTrailer?.(metadataFromHeaders(trailers));
    settle(grpcStatusOf(trailers) ?? Status.UNKNOWN, decodeGrpcMessage(trailers["grpc-message"]), trailers);
  });
  stream.on("error", (error: Error) => {
    // A refused connection surfaces as "the pending stream has been canceled", caused by the connect error.
    const cause = /\(caused by: (.*)\)$/.exec(error.message)?.[1] ?? error.message;
    failure ??= new ClientError(path, Status.UNAVAILABLE, `${channel.address}: ${cause}`);
  });
  stream.on("close", () => {
    closed = true;
    notify();
  });

  const startedAt = Date.now();
  const onAbort = () => stream.close(http2Constants.NGHTTP2_CANCEL);
  signal?.addEventListener("abort", onAbort);
  const deadlineTimer = setTimeout(() => {
    failure ??= new ClientError(path, Status.DEADLINE_EXCEEDED, `deadline of ${Math.round(call.timeoutMs)} ms exceeded`);
    stream.close(http2Constants.NGHTTP2_CANCEL);
  }, Math.max(0, call.deadline - startedAt));

  try {
    for (;;) {
      const message = queue.shift();
      if (message !== undefined) {
        if (queue.length <= highWaterMessages / 2 && stream.isPaused()) stream.resume();
        yield decode(message);
        continue;
      }
      if (signal?.aborted) throw new AbortError();
      if (failure !== undefined) throw failure;
      if (closed) break;
      await new Promise<void>((resolve) => (wake = resolve));
    }
    if (outcome === undefined) {
      const reset = stream.rstCode;
      // Refused, or the whole connection gone before the server answered (a server that stopped,
      // a proxy that dropped it): the server is unavailable, as gRPC's own clients report it. A
      // stream reset once the answer had begun is the server's failure mid-call.
      const unavailable = reset === http2Constants.NGHTTP2_REFUSED_STREAM || (!answered && (stream.session === undefined || stream.session.destroyed || stream.session.closed));
      throw new ClientError(
        path,
        unavailable ? Status.UNAVAILABLE : Status.INTERNAL,
        unavailable && reset !== http2Constants.NGHTTP2_REFUSED_STREAM
          ? `${channel.address} closed the connection before answering`
          : `${channel.address} closed the stream without a status (HTTP/2 code ${reset ?? "none"})`,
      );
    }
    if (outcome.code !== Status.OK) {
      const failed = new ClientError(path, outcome.code, outcome.details);
      throw retryAfterMs === undefined ? failed : withRetryAfter(failed, retryAfterMs);
    }
    ended = true;
    call.onEnd?.(Status.OK, undefined);
  } catch (error: unknown) {
    ended = true;
    if (error instanceof ClientError) call.onEnd?.(error.code, error.details);
    else call.onEnd?.(Status.CANCELLED, undefined);
    throw error;
  } finally {
    // The consumer stopped reading early (break, return).
    if (!ended) call.onEnd?.(Status.CANCELLED, undefined);
    clearTimeout(deadlineTimer);
    signal?.removeEventListener("abort", onAbort);
    if (!closed) stream.close(http2Constants.NGHTTP2_CANCEL);
  }
}
