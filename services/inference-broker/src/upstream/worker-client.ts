import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { linkSignals, readLimitedBody } from "@vlinders/service-runtime";
import { AbortError, isAbortError } from "abort-controller-x";
import { ServerError, Status } from "nice-grpc-common";
import type { WorkerEndpoint } from "../registry/model-registry";
import { apiKeyRejectedError, boundedWorkerMessage, isApiKeyRejection, statusForWorkerErrorCode } from "./chat-chunk-translator";
import { ServerSentEventParser, ServerSentEventTooLargeError } from "./server-sent-events";

export interface WorkerTimeouts {
  /** From sending the request to the response headers. */
  connectMs: number;
  /** From the response headers to the first event of a stream (prefill can be long). */
  firstEventMs: number;
  /** Longest silence between two events of a stream. */
  idleMs: number;
}

export const defaultWorkerTimeouts: WorkerTimeouts = { connectMs: 10_000, firstEventMs: 120_000, idleMs: 30_000 };

/**
 * How long a stream's response may take to end after [DONE]. Reading it to its end lets the
 * connection go back to the keep-alive pool; a worker or proxy that holds it open instead gets its
 * connection closed after this, and the answer, complete at [DONE], is returned all the same.
 */
export const doneGraceMs = 1_000;

/** Characters of events read ahead of a slow consumer, past which the worker's socket is paused. */
const maxQueuedCharacters = 4 * 1024 * 1024;

/** The most of a worker's error answer that is read: its message is in the first bytes. */
const maxErrorBodyBytes = 1024 * 1024;

/**
 * The largest JSON answer read (embeddings): about 770 vectors of 4096 dimensions. Their gRPC
 * answer, some 12 MB, is already past the 4 MiB that gRPC clients accept by default.
 */
export const defaultMaxJsonAnswerBytes = 64 * 1024 * 1024;

/**
 * How soon after a request was sent on a kept-alive connection its reset still means the worker
 * had closed the connection as idle, before reading the request. A later one may come from a
 * worker that took the request and died working on it: sending it again would run it twice.
 */
const staleConnectionWindowMs = 250;

/**
 * Talks HTTP to one OpenAI-compatible worker. Every request is tied to the caller's signal, so that
 * a cancelled gRPC call closes the HTTP connection and the worker stops generating; each wait has
 * its own timeout on top, so a hung worker fails the call instead of stalling it.
 */
export class WorkerClient {
  constructor(
    private readonly timeouts: WorkerTimeouts = defaultWorkerTimeouts,
    private readonly maxJsonAnswerBytes = defaultMaxJsonAnswerBytes,
  ) {}

  async getJson(worker: WorkerEndpoint, path: string, signal: AbortSignal, apiKey?: string): Promise<unknown> {
    const guard = new RequestGuard(worker, signal);
    try {
      guard.arm(this.timeouts.connectMs, "answer");
      const headers: Record<string, string> = { accept: "application/json" };
      if (apiKey !== undefined) headers.authorization = `Bearer ${apiKey}`;
      const response = await guard.run(fetch(`${worker.url}${path}`, { signal: guard.signal, headers }));
      if (!response.ok) throw await errorFromResponse(worker, response, apiKey !== undefined);
      return await guard.run(response.json() as Promise<unknown>);
    } finally {
      guard.dispose();
    }
  }

  /**
   * POSTs and parses the JSON answer (embeddings). Through node:http like streams, so that a
   * kept-alive connection the worker closed is sent again on a new one here too, and the answer is
   * read up to a bound.
   */
  async postJson(worker: WorkerEndpoint, path: string, body: unknown, signal: AbortSignal, apiKey?: string): Promise<unknown> {
    const guard = new RequestGuard(worker, signal);
    let completed = false;
    try {
      // A non-streamed answer comes only when the work is done.
      guard.arm(this.timeouts.firstEventMs, "answer");
      const response = await this.postAccepted(worker, path, body, guard, apiKey);
      const text = await guard.run(readText(response, this.maxJsonAnswerBytes));
      // The request's size, not the worker: not failed over (every worker would answer as much).
      if (text === undefined) {
        throw new ServerError(Status.OUT_OF_RANGE, `worker ${worker.id} answered with more than ${this.maxJsonAnswerBytes} bytes; send fewer inputs at once`);
      }
      completed = true;
      try {
        return JSON.parse(text) as unknown;
      } catch {
        throw new ServerError(Status.INTERNAL, `worker ${worker.id} answered with what is not JSON: ${text.slice(0, 120)}`);
      }
    } finally {
      guard.dispose(completed);
    }
  }

  // Streams go through node:http rather than fetch: reading a Node stream costs a fraction of a
  // WHATWG ReadableStream per chunk, and the broker reads one chunk per token of every stream.
  // Idle connections are closed after 4 s, before the 5 s after which uvicorn (vLLM's server) and
  // Node close theirs: a request then rarely meets a connection the worker is closing.
  private readonly agents = { "http:": new HttpAgent({ keepAlive: true, timeout: 4_000 }), "https:": new HttpsAgent({ keepAlive: true, timeout: 4_000 }) };

  /**
   * POSTs and returns the response once the worker accepted the request (HTTP 2xx); any other
   * status is thrown as the worker's error, from its body. The guard then counts the response as
   * under way: a transport failure from here on breaks an answer, it does not miss the worker.
   */
  private async postAccepted(worker: WorkerEndpoint, path: string, body: unknown, guard: RequestGuard, apiKey: string | undefined): Promise<IncomingMessage> {
    const response = await guard.run(this.post(worker, path, body, guard.signal, apiKey));
    const status = response.statusCode ?? 0;
    if (status < 200 || status >= 300) {
      const text = await guard.run(readText(response));
      throw errorFromBody(worker, status, response.statusMessage ?? "", text, apiKey !== undefined);
    }
    guard.streaming = true;
    return response;
  }

  private post(worker: WorkerEndpoint, path: string, body: unknown, signal: AbortSignal, apiKey: string | undefined): Promise<IncomingMessage> {
    const url = new URL(`${worker.url}${path}`);
    const payload = JSON.stringify(body);
    const pooled = url.protocol === "https:" ? this.agents["https:"] : this.agents["http:"];
    const send = (onStaleSocket: "retry" | "fail"): Promise<IncomingMessage> =>
      new Promise((resolve, reject) => {
        const request = (url.protocol === "https:" ? httpsRequest : httpRequest)(url, {
          method: "POST",
          headers: jsonRequestHeaders(apiKey),
          // The retry gets a connection of its own: after an idle spell the worker closed every
          // pooled connection, and the pool would hand it the next closed one.
          agent: onStaleSocket === "retry" ? pooled : false,
          signal,
        });
        const sentAt = performance.now();
        let answered = false;
        request.once("response", (response) => {
          answered = true;
          // Errors of the body reach whoever reads it; once nobody does (the consumer stopped and
          // the request was aborted on purpose) they are expected and must not crash the process.
          response.on("error", () => {});
          resolve(response);
        });
        // Not once: an abort after the response came also emits here (rejecting then is a no-op).
        request.on("error", (error: NodeJS.ErrnoException) => {
          // A kept-alive connection the worker closed as it idled (its keep-alive timeout) fails the
          // next request sent on it before the worker read a byte: nothing ran, so it is sent again
          // once on a new connection instead of counting against a healthy worker.
          const soon = performance.now() - sentAt < staleConnectionWindowMs;
          if (!answered && soon && onStaleSocket === "retry" && request.reusedSocket && (error.code === "ECONNRESET" || error.code === "EPIPE") && !signal.aborted) {
            resolve(send("fail"));
            return;
          }
          reject(error);
        });
        request.end(payload);
      });
    return send("retry");
  }

  /** POSTs and yields the parsed data of each server-sent event until `[DONE]`. */
  async *streamJson(
    worker: WorkerEndpoint,
    path: string,
    body: unknown,
    signal: AbortSignal,
    apiKey?: string,
  ): AsyncGenerator<unknown, void, undefined> {
    const guard = new RequestGuard(worker, signal);
    let completed = false;
    try {
      guard.arm(this.timeouts.connectMs, "answer");
      const response = await this.postAccepted(worker, path, body, guard, apiKey);
      guard.arm(this.timeouts.firstEventMs, "first token");
      const events = new EventQueue(response, worker);
      for (;;) {
        const data = events.shift();
        if (data === undefined) {
          if (events.ended) {
            // Rejects with the parser's failure, if the end of the body was what broke it.
            await guard.run(events.wait());
            throw new ServerError(Status.UNAVAILABLE, `worker ${worker.id} closed the stream before [DONE]`);
          }
          await guard.run(events.wait());
          continue;
        }
        if (data === "[DONE]") break;
        let parsed: unknown;
        try {
          parsed = JSON.parse(data);
        } catch {
          throw new ServerError(Status.INTERNAL, `worker ${worker.id} sent an event that is not JSON: ${data.slice(0, 120)}`);
        }
        // The worker is not waited on while the consumer holds this event (a slow client's
        // backpressure must not count as the worker's silence).
        guard.disarm();
        yield parsed;
        guard.arm(this.timeouts.idleMs, "next token");
      }
      // The answer is complete: nothing that happens from here on may fail it. The end of the
      // response is awaited here, not in the background, so that the connection's fate is settled
      // before the call returns and the guard stays the one owner of the request; the price is that
      // a worker holding the connection open delays the end of the stream by doneGraceMs.
      guard.disarm();
      completed = await events.drain(doneGraceMs);
    } finally {
      // Reached early when the consumer stops reading, or when the response did not end in time after
      // [DONE]: aborting closes the connection to the worker, which is then not reused.
      guard.dispose(completed);
    }
  }
}

/**
 * The events of a streamed response, parsed as its chunks arrive and queued for one reader. A
 * reader that falls behind pauses the socket, so TCP flow control reaches the worker.
 */
class EventQueue {
  private readonly queue: string[] = [];
  private readonly parser = new ServerSentEventParser();
  private wake: (() => void) | undefined;
  private failure: Error | undefined;
  /** Characters of the events queued: a reader that falls behind pauses the socket past a bound. */
  private queuedCharacters = 0;
  /** Set after [DONE]: the rest of the body is read (for the connection's sake) and dropped. */
  private draining = false;
  ended = false;

  constructor(
    private readonly response: IncomingMessage,
    private readonly worker: WorkerEndpoint,
  ) {
    const enqueue = (data: string) => {
      this.queue.push(data);
      this.queuedCharacters += data.length;
    };
    response.on("data", (chunk: Buffer) => {
      if (this.draining) return;
      // Inline, not through a closure: this runs once per token of every stream.
      try {
        this.parser.push(chunk, enqueue);
      } catch (error: unknown) {
        this.failParsing(error);
        return;
      }
      // By count and by size: 256 events of a megabyte each would be a quarter of a gigabyte.
      if (this.queue.length > 256 || this.queuedCharacters > maxQueuedCharacters) response.pause();
      this.notify();
    });
    response.once("end", () => {
      if (!this.draining) {
        try {
          this.parser.end(enqueue);
        } catch (error: unknown) {
          this.failParsing(error);
        }
      }
      this.ended = true;
      this.notify();
    });
    response.once("close", () => {
      if (!this.ended) this.failure ??= new Error("the connection closed before the end of the response");
      this.notify();
    });
    response.on("error", (error: Error) => {
      this.failure ??= error;
      this.notify();
    });
  }

  /**
   * Fails the stream with what the parser threw: a throw would escape the socket's event listener
   * and crash the process.
   */
  private failParsing(error: unknown): void {
    // INTERNAL rather than UNAVAILABLE: the worker answered, but not in the protocol (like an event
    // that is not JSON), and a client that retries UNAVAILABLE on its own should not retry this.
    // Before the first token the dispatcher still fails over and counts it against the worker.
    this.failure ??=
      error instanceof ServerSentEventTooLargeError
        ? new ServerError(Status.INTERNAL, `worker ${this.worker.id} sent an event stream the broker does not read on: ${error.message}`)
        : error instanceof Error
          ? error
          : new Error(String(error));
    // Nothing more of this body is read: the connection is closed, and never reused.
    this.response.destroy();
    this.notify();
  }

  /**
   * After [DONE]: drops what else the body holds, still reading it so that the connection can be
   * reused, and resolves true once the response ended, false when it broke off or did not end
   * within `ms` (the caller then closes the connection).
   */
  drain(ms: number): Promise<boolean> {
    this.draining = true;
    this.queue.length = 0;
    this.queuedCharacters = 0;
    if (this.response.isPaused()) this.response.resume();
    if (this.ended || this.failure) return Promise.resolve(this.ended && !this.failure);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        resolve(false);
      }, ms);
      // Woken only by the end, the close or an error of the response: data is not announced while draining.
      this.wake = () => {
        clearTimeout(timer);
        resolve(this.ended && !this.failure);
      };
    });
  }

  shift(): string | undefined {
    const data = this.queue.shift();
    if (data === undefined) return undefined;
    this.queuedCharacters -= data.length;
    if (this.queue.length < 64 && this.queuedCharacters <= maxQueuedCharacters / 2 && this.response.isPaused()) this.response.resume();
    return data;
  }

  /** Resolves when there is more to read; rejects when the response broke off. */
  wait(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.queue.length > 0 || this.ended) return Promise.resolve();
    return new Promise<void>((resolve) => (this.wake = () => resolve())).then(() => {
      if (this.queue.length === 0 && !this.ended && this.failure) throw this.failure;
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

function jsonRequestHeaders(apiKey: string | undefined): Record<string, string> {
  const headers: Record<string, string> = { "content-type": "application/json", accept: "application/json, text/event-stream" };
  // The key travels only in this header: it is never part of a log line or an error message.
  if (apiKey !== undefined) headers.authorization = `Bearer ${apiKey}`;
  return headers;
}

/** The body of an error response, bounded: a worker's error page is not read without end. */
async function readText(response: IncomingMessage): Promise<string>;
/** The whole body of a response, or undefined when it is longer than `limitBytes`. */
async function readText(response: IncomingMessage, limitBytes: number): Promise<string | undefined>;
async function readText(response: IncomingMessage, limitBytes?: number): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of response) {
    const buffer = chunk as Buffer;
    if (limitBytes !== undefined) {
      if (bytes + buffer.length > limitBytes) return undefined;
      chunks.push(buffer);
      bytes += buffer.length;
      continue;
    }
    // Whole chunks up to the bound: the last one is cut, never added past it.
    const room = maxErrorBodyBytes - bytes;
    chunks.push(buffer.subarray(0, room));
    bytes += Math.min(room, buffer.length);
    if (bytes >= maxErrorBodyBytes) break;
  }
  return Buffer.concat(chunks).toString("utf8");
}

/**
 * One upstream request's abort signal: the caller's signal plus a resettable timer. When the timer
 * fires, the request is aborted and the waiting code gets UNAVAILABLE naming the worker and the wait.
 */
class RequestGuard {
  private readonly controller = new AbortController();
  private readonly linked: { signal: AbortSignal; dispose(): void };
  // A watchdog rather than a timer per event: re-arming is two assignments on the hot path, and
  // the one timer, when it fires early, sleeps again for what is left.
  private timer: NodeJS.Timeout | undefined;
  private timerAt = 0;
  private deadline = 0;
  private armed = false;
  private limitMs = 0;
  private waitingFor = "";
  private timeoutError: ServerError | undefined;
  readonly signal: AbortSignal;
  /** Set once the response headers arrived: a transport failure is then a lost stream, not an unreachable worker. */
  streaming = false;

  constructor(
    private readonly worker: WorkerEndpoint,
    callerSignal: AbortSignal,
  ) {
    this.linked = linkSignals(callerSignal, this.controller.signal);
    this.signal = this.linked.signal;
  }

  arm(ms: number, waitingFor: string): void {
    this.deadline = performance.now() + ms;
    this.limitMs = ms;
    this.waitingFor = waitingFor;
    this.armed = true;
    // A shorter wait than the one the timer was set for (e.g. idle after connect) needs it sooner.
    if (this.timer === undefined || this.timerAt > this.deadline) this.schedule(ms);
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timerAt = performance.now() + ms;
    this.timer = setTimeout(() => this.check(), ms);
  }

  disarm(): void {
    this.armed = false;
  }

  private check(): void {
    this.timer = undefined;
    if (this.controller.signal.aborted) return;
    const remaining = this.deadline - performance.now();
    if (!this.armed || remaining > 0) {
      // Not waiting now (or not for long enough yet): look again when the current wait could end.
      this.schedule(this.armed ? remaining : this.limitMs);
      return;
    }
    this.timeoutError = new ServerError(Status.UNAVAILABLE, `worker ${this.worker.id} did not send the ${this.waitingFor} within ${this.limitMs} ms`);
    this.controller.abort(this.timeoutError);
  }

  /** Awaits a step of the request, turning transport failures into gRPC statuses. */
  async run<T>(step: Promise<T>): Promise<T> {
    try {
      return await step;
    } catch (error: unknown) {
      throw this.translate(error);
    }
  }

  /**
   * Ends the guard. The request is aborted unless it `completed` (its response read to the end):
   * the connection of a completed request goes back to the keep-alive pool.
   */
  dispose(completed = false): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!completed) this.controller.abort();
    this.linked.dispose();
  }

  private translate(error: unknown): unknown {
    if (this.timeoutError) return this.timeoutError;
    if (error instanceof ServerError) return error;
    // The caller's abort (cancel, deadline, shutdown) ends the call as an abort, whatever the
    // transport made of it ("aborted", "socket hang up"): the error boundary maps it quietly,
    // where a raw transport error would be logged as a fault of this service.
    if (this.signal.aborted) return isAbortError(error) ? error : new AbortError();
    const cause = error instanceof Error && error.cause instanceof Error ? error.cause.message : error instanceof Error ? error.message : String(error);
    return this.streaming
      ? new ServerError(Status.UNAVAILABLE, `worker ${this.worker.id} broke off the stream: ${cause}`)
      : new ServerError(Status.UNAVAILABLE, `worker ${this.worker.id} at ${this.worker.url} is unreachable: ${cause}`);
  }
}

async function errorFromResponse(worker: WorkerEndpoint, response: Response, keySent: boolean): Promise<ServerError> {
  let text = "";
  try {
    // Bounded: an error page need not be small; past the bound the status text says enough.
    text = (await readLimitedBody(response, maxErrorBodyBytes)) ?? "";
  } catch {
    // No body: the status text says enough.
  }
  return errorFromBody(worker, response.status, response.statusText, text, keySent);
}

/**
 * The status for an HTTP error answer, with the worker's message when it gives one: OpenAI's
 * {"error":{"message":…}}, vLLM's top-level {"object":"error","message":…}, or a bare
 * {"error":"…"}. `keySent` says whether the request carried an API key.
 */
function errorFromBody(worker: WorkerEndpoint, status: number, statusText: string, text: string, keySent: boolean): ServerError {
  // Before the body is looked at: it may quote the refused key.
  if (isApiKeyRejection(status)) return apiKeyRejectedError(worker, status, keySent);
  let message = statusText;
  try {
    const body = JSON.parse(text) as { error?: { message?: unknown } | string | null; message?: unknown } | null;
    const found = typeof body?.error === "string" ? body.error : (body?.error?.message ?? body?.message);
    // A message that is not a string is shown as JSON; a body without one is shown whole.
    message = typeof found === "string" ? found || text : found === undefined || found === null ? text : JSON.stringify(found);
  } catch {
    // Not JSON (an error page of a proxy, or a body cut at the read limit): the status text says enough.
  }
  return new ServerError(statusForWorkerErrorCode(status), `worker ${worker.id} answered HTTP ${status}: ${boundedWorkerMessage(message)}`);
}
