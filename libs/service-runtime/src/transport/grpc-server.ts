import { once } from "node:events";
import {
  createServer as createHttp2Server,
  type Http2Server,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import { isAbortError } from "abort-controller-x";
import type { CompatServiceDefinition, ServiceImplementation } from "nice-grpc";
import { Metadata, ServerError, Status, type CallContext } from "nice-grpc-common";
import { bindDeadline, CallDeadlineError, deadlineOf } from "../call-deadline";
import { FrameDecoder, frameMessage } from "./grpc-frames";
import { addMetadataHeaders, encodeGrpcMessage, metadataFromHeaders, parseGrpcTimeout } from "./grpc-metadata";
import { wireMethodsOf, type WireMethod } from "./service-definition";

/** What an interceptor knows of the call it wraps. */
export interface CallDescription {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
}

/**
 * Wraps a whole call, not each of its messages: `invoke` runs the handler to its end (every
 * response written). An interceptor may refuse the call by throwing before invoking, replace the
 * context (a linked signal), and map what the handler throws to a ServerError. Nothing here runs
 * per streamed message: on a token stream, a per-message wrapper would cost more than the relay.
 */
export type CallInterceptor = (
  call: CallDescription,
  context: CallContext,
  invoke: (context: CallContext) => Promise<void>,
) => Promise<void>;

export interface GrpcServerOptions {
  /** Runs around every call of every service, outermost. */
  interceptor?: CallInterceptor;
  /** Largest request message accepted (gRPC's usual 4 MiB). */
  maxReceiveMessageBytes?: number;
}

export interface GrpcServer {
  add<Definition extends CompatServiceDefinition>(
    definition: Definition,
    implementation: ServiceImplementation<Definition>,
    options?: { interceptor?: CallInterceptor },
  ): void;
  /** Listens on `host:port` (port 0 picks one); resolves with the port. */
  listen(host: string, port: number): Promise<number>;
  /** Refuses new calls (GOAWAY) and resolves when the calls in flight have ended. */
  shutdown(): Promise<void>;
  /** Ends every connection now. */
  forceShutdown(): void;
}

interface RegisteredMethod {
  wire: WireMethod;
  handler: (...args: never[]) => unknown;
  interceptor: CallInterceptor | undefined;
}

const grpcContentType = "application/grpc";
/** How close to its deadline a cancelled call counts as one that ran out of time (clocks, transit). */
const deadlineSlackMs = 50;
const defaultMaxReceiveMessageBytes = 4 * 1024 * 1024;

/**
 * A gRPC server on node:http2, in place of grpc-js's: the same handlers (nice-grpc's
 * ServiceImplementation), the same wire protocol (length-prefixed messages, status in trailers,
 * grpc-timeout deadlines, metadata with base64 `-bin` values, trailers-only errors), without the
 * layers that grpc-js and nice-grpc put around every message. Streamed responses are framed and
 * written straight to the HTTP/2 stream; HTTP/2 itself coalesces the frames of all streams that
 * were written in one turn of the event loop into one socket write.
 *
 * Not supported, as the mesh never uses them: message compression (a compressed request is
 * answered UNIMPLEMENTED; responses are never compressed) and TLS (the mesh's transport security
 * is the network's, as in a service mesh).
 */
export function createGrpcServer(options: GrpcServerOptions = {}): GrpcServer {
  const methods = new Map<string, RegisteredMethod>();
  const maxReceiveMessageBytes = options.maxReceiveMessageBytes ?? defaultMaxReceiveMessageBytes;
  const sessions = new Set<ServerHttp2Session>();
  const activeCalls = new Set<Promise<void>>();
  const sockets = new Set<Socket>();
  let http2Server: Http2Server | undefined;
  let shuttingDown = false;
  let forced = false;
  let resolveForced: () => void = () => {};
  const forcedSignal = new Promise<void>((resolve) => (resolveForced = resolve));

  function destroyConnections(): void {
    for (const session of sessions) session.destroy();
    for (const socket of sockets) socket.destroy();
  }

  function handleStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    // Errors of a stream (a reset by the peer, a write after close) end in its "close"; a listener
    // is needed so that they are not thrown.
    stream.on("error", () => {});
    const contentType = headers["content-type"];
    if (typeof contentType !== "string" || !contentType.startsWith(grpcContentType)) {
      stream.respond({ ":status": 415, "content-type": "text/plain" }, { endStream: false });
      stream.end(`content-type must be ${grpcContentType}`);
      return;
    }
    const path = headers[":path"] ?? "";
    const method = methods.get(path);
    if (shuttingDown) {
      sendTrailersOnly(stream, Status.UNAVAILABLE, "the server is shutting down; retry on another instance");
      return;
    }
    if (!method) {
      sendTrailersOnly(stream, Status.UNIMPLEMENTED, `the method ${path} is not implemented by this server`);
      return;
    }
    const encoding = headers["grpc-encoding"];
    if (encoding !== undefined && encoding !== "identity") {
      sendTrailersOnly(stream, Status.UNIMPLEMENTED, `grpc-encoding ${String(encoding)} is not supported; send identity`);
      return;
    }
    const call = runCall(new ServerCall(stream, headers, method, maxReceiveMessageBytes), method, options.interceptor);
    activeCalls.add(call);
    void call.finally(() => activeCalls.delete(call));
  }

  return {
    add(definition, implementation, serviceOptions = {}) {
      if (http2Server) throw new Error("add() must be called before listen()");
      for (const wire of wireMethodsOf(definition)) {
        const handler = (implementation as Record<string, unknown>)[wire.name];
        if (typeof handler !== "function") throw new Error(`${wire.path}: the implementation has no method ${wire.name}`);
        methods.set(wire.path, {
          wire,
          handler: (handler as (...args: never[]) => unknown).bind(implementation),
          interceptor: serviceOptions.interceptor,
        });
      }
    },

    async listen(host, port) {
      if (http2Server) throw new Error("listen() has already been called");
      const server = createHttp2Server({
        // Thousands of concurrent streams on a few connections is the normal case for the relays:
        // nghttp2's default session memory (10 MB) would refuse them with ENHANCE_YOUR_CALM.
        maxSessionMemory: 1024,
        settings: {
          // Larger windows: a stream of small messages then never waits for a WINDOW_UPDATE.
          initialWindowSize: 1024 * 1024,
          maxConcurrentStreams: 1_000_000,
        },
      });
      http2Server = server;
      server.on("session", (session) => {
        sessions.add(session);
        session.on("close", () => sessions.delete(session));
        session.on("error", () => {});
        if (shuttingDown) session.close();
        else session.setLocalWindowSize(16 * 1024 * 1024);
      });
      server.on("stream", handleStream);
      server.on("connection", (socket: Socket) => {
        sockets.add(socket);
        socket.once("close", () => sockets.delete(socket));
      });
      server.listen(port, host);
      await once(server, "listening");
      return (server.address() as AddressInfo).port;
    },

    async shutdown() {
      shuttingDown = true;
      const server = http2Server;
      if (!server) return;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // GOAWAY: clients open no new streams here; those in flight run to their end.
      for (const session of sessions) session.close();
      // forceShutdown ends the wait for handlers that ignore their signal.
      while (activeCalls.size > 0 && !forced) await Promise.race([Promise.allSettled([...activeCalls]), forcedSignal]);
      // Every call has ended, so nothing is lost by closing what is left: a session whose peer keeps
      // its connection open (or one Node never reports closed) must not hold the shutdown.
      const lingering = setTimeout(() => destroyConnections(), 200);
      await closed;
      clearTimeout(lingering);
      http2Server = undefined;
    },

    forceShutdown() {
      shuttingDown = true;
      forced = true;
      resolveForced();
      http2Server?.close();
      destroyConnections();
      http2Server = undefined;
    },
  };
}

function sendTrailersOnly(stream: ServerHttp2Stream, code: Status, details: string, trailer?: Metadata): void {
  if (stream.destroyed || stream.headersSent) return;
  const headers: OutgoingHttpHeaders = {
    ":status": 200,
    "content-type": "application/grpc+proto",
    "grpc-status": String(code),
    "grpc-message": encodeGrpcMessage(details),
  };
  stream.respond(addMetadataHeaders(headers, trailer), { endStream: true });
}

/** One call: its stream, its context, the request messages read and the response messages written. */
class ServerCall {
  readonly controller = new AbortController();
  readonly context: CallContext;
  private readonly decoder: FrameDecoder;
  private headerSent = false;
  private ended = false;
  private deadlineTimer: NodeJS.Timeout | undefined;
  /** Set when the deadline passed: the status to report instead of the handler's. */
  deadlineExceeded = false;

  constructor(
    readonly stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    readonly method: RegisteredMethod,
    maxReceiveMessageBytes: number,
  ) {
    this.decoder = new FrameDecoder(maxReceiveMessageBytes);
    const socket = stream.session?.socket;
    this.context = {
      metadata: metadataFromHeaders(headers),
      peer: socket ? `${socket.remoteAddress ?? ""}:${socket.remotePort ?? ""}` : "",
      header: Metadata(),
      sendHeader: () => this.sendHeader(),
      trailer: Metadata(),
      signal: this.controller.signal,
    };
    const timeoutMs = parseGrpcTimeout(headers["grpc-timeout"]);
    stream.once("close", () => {
      clearTimeout(this.deadlineTimer);
      if (this.ended) return;
      // The caller's side cancels the stream when its deadline passes, and that cancel usually
      // arrives before this side's timer fires: a cancel at the deadline is the deadline.
      const deadline = deadlineOf(this.controller.signal);
      if (deadline !== undefined && Date.now() >= deadline - deadlineSlackMs) {
        this.deadlineExceeded = true;
        this.controller.abort(new CallDeadlineError(timeoutMs ?? 0));
      } else {
        this.controller.abort(new Error("the client cancelled the call"));
      }
    });
    if (timeoutMs !== undefined) {
      const deadline = Date.now() + timeoutMs;
      bindDeadline(this.controller.signal, deadline);
      this.deadlineTimer = setTimeout(() => {
        this.deadlineExceeded = true;
        this.controller.abort(new CallDeadlineError(timeoutMs));
      }, timeoutMs);
    }
  }

  sendHeader(): void {
    if (this.headerSent || this.stream.destroyed) return;
    this.headerSent = true;
    const headers: OutgoingHttpHeaders = { ":status": 200, "content-type": "application/grpc+proto", "grpc-accept-encoding": "identity" };
    this.stream.respond(addMetadataHeaders(headers, this.context.header), { waitForTrailers: true });
  }

  /** Writes one response; resolves at once unless the stream's buffer is full. */
  write(message: Uint8Array): Promise<void> | undefined {
    if (this.stream.destroyed || this.controller.signal.aborted) throw abortErrorOf(this.controller.signal);
    if (!this.headerSent) this.sendHeader();
    if (this.stream.write(frameMessage(message))) return undefined;
    return this.drained();
  }

  private async drained(): Promise<void> {
    const signal = this.controller.signal;
    await new Promise<void>((resolve, reject) => {
      const onDrain = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        this.stream.off("drain", onDrain);
        reject(abortErrorOf(signal));
      };
      this.stream.once("drain", onDrain);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Sends the status; the first call wins. */
  finish(code: Status, details: string): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.deadlineTimer);
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    if (!this.headerSent) {
      sendTrailersOnly(stream, code, details, this.context.trailer);
      return;
    }
    const trailers = addMetadataHeaders({ "grpc-status": String(code), "grpc-message": encodeGrpcMessage(details) }, this.context.trailer);
    stream.once("wantTrailers", () => stream.sendTrailers(trailers));
    stream.end();
  }

  /** The single request of a unary or server-streaming call. */
  readSingleRequest(): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      const stream = this.stream;
      const messages: Buffer[] = [];
      const push = (message: Buffer) => messages.push(message);
      const onData = (chunk: Buffer) => {
        try {
          this.decoder.push(chunk, push);
        } catch (error: unknown) {
          settle(error);
        }
      };
      const onEnd = () => {
        if (this.decoder.hasPartialMessage) settle(new ServerError(Status.INTERNAL, "the request ended inside a message"));
        else if (messages.length !== 1) settle(new ServerError(Status.UNIMPLEMENTED, `expected one request message, got ${messages.length}`));
        else settle(undefined, messages[0]);
      };
      // The error is made only when the stream closes before the request was read: building one
      // (with its stack) for every call would cost more than reading the request.
      const onClose = () => settle(abortErrorOf(this.controller.signal));
      const settle = (error: unknown, message?: Buffer) => {
        stream.off("data", onData);
        stream.off("end", onEnd);
        stream.off("close", onClose);
        if (message === undefined) reject(error);
        else resolve(message);
      };
      stream.on("data", onData);
      stream.once("end", onEnd);
      stream.once("close", onClose);
    });
  }

  /** The requests of a client- or bidi-streaming call, read as the handler asks for them. */
  async *requestStream(deserialize: (bytes: Uint8Array) => unknown): AsyncGenerator<unknown, void, undefined> {
    const queue: Buffer[] = [];
    let done = false;
    let failure: unknown;
    let wake: (() => void) | undefined;
    const notify = () => {
      wake?.();
      wake = undefined;
    };
    this.stream.on("data", (chunk: Buffer) => {
      try {
        this.decoder.push(chunk, (message) => queue.push(message));
      } catch (error: unknown) {
        failure = error;
      }
      if (queue.length > 64) this.stream.pause();
      notify();
    });
    this.stream.once("end", () => {
      done = true;
      if (this.decoder.hasPartialMessage) failure ??= new ServerError(Status.INTERNAL, "the request ended inside a message");
      notify();
    });
    this.stream.once("close", () => {
      done = true;
      notify();
    });
    for (;;) {
      if (failure !== undefined) throw failure;
      const next = queue.shift();
      if (next !== undefined) {
        if (queue.length < 16) this.stream.resume();
        yield deserialize(next);
        continue;
      }
      if (this.controller.signal.aborted) throw abortErrorOf(this.controller.signal);
      if (done) return;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  }
}

function abortErrorOf(signal: AbortSignal): Error {
  const error = new Error(signal.reason instanceof Error ? signal.reason.message : "the call was aborted");
  error.name = "AbortError";
  return error;
}

type AnyHandler = (request: unknown, context: CallContext) => unknown;

async function invokeHandler(call: ServerCall, context: CallContext): Promise<void> {
  const { wire } = call.method;
  const handler = call.method.handler as unknown as AnyHandler;
  const request = wire.requestStream ? call.requestStream((bytes) => wire.deserializeRequest(bytes)) : wire.deserializeRequest(await call.readSingleRequest());
  if (!wire.responseStream) {
    const response = await (handler(request, context) as Promise<unknown>);
    const pending = call.write(wire.serializeResponse(response));
    if (pending) await pending;
    return;
  }
  const responses = handler(request, context) as AsyncIterable<unknown>;
  for await (const response of responses) {
    const pending = call.write(wire.serializeResponse(response));
    if (pending) await pending;
  }
}

async function runCall(call: ServerCall, method: RegisteredMethod, outer: CallInterceptor | undefined): Promise<void> {
  const description: CallDescription = { path: method.wire.path, requestStream: method.wire.requestStream, responseStream: method.wire.responseStream };
  const inner = method.interceptor;
  const invokeInner: (context: CallContext) => Promise<void> = inner
    ? (context) => inner(description, context, (innerContext) => invokeHandler(call, innerContext))
    : (context) => invokeHandler(call, context);
  try {
    await (outer ? outer(description, call.context, invokeInner) : invokeInner(call.context));
    // A handler that returned quietly once its signal aborted still missed its deadline.
    if (call.deadlineExceeded) call.finish(Status.DEADLINE_EXCEEDED, "deadline exceeded");
    else call.finish(Status.OK, "");
  } catch (error: unknown) {
    if (call.deadlineExceeded) call.finish(Status.DEADLINE_EXCEEDED, "deadline exceeded");
    else if (error instanceof ServerError) call.finish(error.code, error.details);
    else if (isAbortError(error)) call.finish(Status.CANCELLED, "the call was cancelled");
    else call.finish(Status.UNKNOWN, "unknown server error");
  }
}
