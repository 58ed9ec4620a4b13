import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { ServerError, Status } from "nice-grpc-common";
import { classifyFailure } from "../dispatch/failure-classification";
import { maxWorkerMessageCharacters } from "./chat-chunk-translator";
import { maxServerSentEventCharacters } from "./server-sent-events";
import { WorkerClient, doneGraceMs } from "./worker-client";

/**
 * A worker that streams one event per request, and closes a kept-alive connection without an
 * answer when told to: what a worker does when its keep-alive timeout ends an idle connection
 * just as the broker sends the next request on it.
 */
async function startWorker(): Promise<{ url: string; closeReusedConnections: boolean; hangAfterFirstEvent: boolean; requests: number; server: Server }> {
  const state = { url: "", closeReusedConnections: false, hangAfterFirstEvent: false, requests: 0, server: undefined as unknown as Server };
  const requestsOnSocket = new WeakMap<Socket, number>();
  state.server = createServer((request, response) => {
    const onThisSocket = (requestsOnSocket.get(request.socket) ?? 0) + 1;
    requestsOnSocket.set(request.socket, onThisSocket);
    request.resume();
    request.on("end", () => {
      if (state.closeReusedConnections && onThisSocket > 1) {
        request.socket.destroy();
        return;
      }
      state.requests += 1;
      response.writeHead(200, { "content-type": "text/event-stream" });
      if (state.hangAfterFirstEvent) {
        response.write('data: {"n":0}\n\n');
        return;
      }
      response.end(`data: {"n":${state.requests}}\n\ndata: [DONE]\n\n`);
    });
  });
  await new Promise<void>((resolve) => state.server.listen(0, "127.0.0.1", resolve));
  state.url = `http://127.0.0.1:${(state.server.address() as { port: number }).port}`;
  return state;
}

async function collect(events: AsyncIterable<unknown>): Promise<unknown[]> {
  const collected: unknown[] = [];
  for await (const event of events) collected.push(event);
  return collected;
}

describe("WorkerClient streams", () => {
  it("sends a request again on a new connection when the worker closed the kept-alive one", async () => {
    const worker = await startWorker();
    const client = new WorkerClient();
    const endpoint = { id: "w", url: worker.url };
    try {
      expect(await collect(client.streamJson(endpoint, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)))).toEqual([{ n: 1 }]);
      worker.closeReusedConnections = true;
      // The first connection went back to the pool and is reused, then closed without an answer.
      expect(await collect(client.streamJson(endpoint, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)))).toEqual([{ n: 2 }]);
    } finally {
      worker.server.closeAllConnections();
      worker.server.close();
    }
  });

  it("sends it again on a new connection, not on another kept-alive one the worker closed as well", async () => {
    const worker = await startWorker();
    const client = new WorkerClient();
    const endpoint = { id: "w", url: worker.url };
    try {
      // Two requests at once leave two connections in the pool; after an idle spell a worker closes both.
      const stream = () => collect(client.streamJson(endpoint, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)));
      await Promise.all([stream(), stream()]);
      worker.closeReusedConnections = true;
      expect(await stream()).toEqual([{ n: 3 }]);
    } finally {
      worker.server.closeAllConnections();
      worker.server.close();
    }
  });

  it("fails, naming the worker, when a new connection is closed without an answer", async () => {
    const worker = await startWorker();
    const client = new WorkerClient();
    worker.closeReusedConnections = true;
    worker.server.prependListener("request", (request) => request.socket.destroy());
    try {
      const failure = await collect(client.streamJson({ id: "w", url: worker.url }, "/v1/chat/completions", {}, AbortSignal.timeout(5_000))).catch(
        (error: unknown) => error,
      );
      expect(failure).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringContaining(`worker w at ${worker.url} is unreachable`) });
    } finally {
      worker.server.closeAllConnections();
      worker.server.close();
    }
  });

  it("ends a stream the caller cancelled as an abort, not as a fault of the worker", async () => {
    const worker = await startWorker();
    worker.hangAfterFirstEvent = true;
    const client = new WorkerClient();
    const caller = new AbortController();
    try {
      const events: unknown[] = [];
      const outcome = await (async () => {
        for await (const event of client.streamJson({ id: "w", url: worker.url }, "/v1/chat/completions", {}, caller.signal)) {
          events.push(event);
          caller.abort();
        }
      })().catch((error: unknown) => error);
      expect(events).toEqual([{ n: 0 }]);
      expect(outcome).toMatchObject({ name: "AbortError" });
    } finally {
      worker.server.closeAllConnections();
      worker.server.close();
    }
  });
});

/**
 * A worker that answers every request with `answer`, and counts the connections it accepted and
 * the ones that closed (a connection reused by the client's keep-alive pool is accepted once).
 */
async function startScriptedWorker(answer: (request: IncomingMessage, response: ServerResponse) => void) {
  const sockets: Socket[] = [];
  const closed = new Set<Socket>();
  const server = createServer((request, response) => {
    request.resume();
    request.on("end", () => answer(request, response));
  });
  server.on("connection", (socket: Socket) => {
    sockets.push(socket);
    socket.once("close", () => closed.add(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    url,
    connections: () => sockets.length,
    /** Resolves once the connection accepted `index`-th (from 0) has closed; rejects after `ms`. */
    closedWithin: (index: number, ms: number) =>
      new Promise<void>((resolve, reject) => {
        const startedAt = performance.now();
        const check = setInterval(() => {
          const socket = sockets[index];
          if (socket && closed.has(socket)) {
            clearInterval(check);
            resolve();
          } else if (performance.now() - startedAt > ms) {
            clearInterval(check);
            reject(new Error(`connection ${index} still open after ${ms} ms`));
          }
        }, 5);
      }),
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** What a stream ends with: its events, or the error that ended it. */
async function outcomeOf(events: AsyncIterable<unknown>): Promise<{ events: unknown[]; error?: unknown }> {
  const collected: unknown[] = [];
  try {
    for await (const event of events) collected.push(event);
    return { events: collected };
  } catch (error: unknown) {
    return { events: collected, error };
  }
}

const live = (): AbortSignal => new AbortController().signal;

describe("WorkerClient error answers before the stream", () => {
  const answering =
    (status: number, body: string, contentType = "application/json") =>
    (_request: IncomingMessage, response: ServerResponse) => {
      response.writeHead(status, { "content-type": contentType });
      response.end(body);
    };

  async function streamError(status: number, body: string, options: { apiKey?: string; provider?: string } = {}): Promise<ServerError> {
    const worker = await startScriptedWorker(answering(status, body));
    try {
      const endpoint = { id: "gpu-7", url: worker.url, ...(options.provider === undefined ? {} : { provider: options.provider }) };
      const { error } = await outcomeOf(new WorkerClient().streamJson(endpoint, "/v1/chat/completions", {}, AbortSignal.timeout(5_000), options.apiKey));
      expect(error).toBeInstanceOf(ServerError);
      return error as ServerError;
    } finally {
      await worker.stop();
    }
  }

  it("turns HTTP 400 with vLLM's top-level error body into INVALID_ARGUMENT with the worker's message, not retried", async () => {
    const error = await streamError(
      400,
      JSON.stringify({ object: "error", message: "This model's maximum context length is 8192 tokens", type: "BadRequestError", param: null, code: 400 }),
    );
    expect(Status[error.code]).toBe("INVALID_ARGUMENT");
    expect(error.details).toBe("worker gpu-7 answered HTTP 400: This model's maximum context length is 8192 tokens");
    expect(classifyFailure(error, live(), live())).toMatchObject({ retryable: false, blameWorker: false });
  });

  it("turns HTTP 429 with an OpenAI error body into RESOURCE_EXHAUSTED, not blamed on the worker", async () => {
    const error = await streamError(429, JSON.stringify({ error: { message: "Rate limit reached for requests", type: "rate_limit_error", code: 429 } }));
    expect(Status[error.code]).toBe("RESOURCE_EXHAUSTED");
    expect(error.details).toBe("worker gpu-7 answered HTTP 429: Rate limit reached for requests");
    expect(classifyFailure(error, live(), live())).toMatchObject({ retryable: true, blameWorker: false });
  });

  it("keeps the status text when the body is not JSON", async () => {
    const worker = await startScriptedWorker(answering(502, "<html><body>Bad Gateway</body></html>", "text/html"));
    try {
      const { error } = await outcomeOf(new WorkerClient().streamJson({ id: "gpu-7", url: worker.url }, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)));
      expect(error).toMatchObject({ code: Status.UNAVAILABLE, details: "worker gpu-7 answered HTTP 502: Bad Gateway" });
    } finally {
      await worker.stop();
    }
  });

  it("cuts a long message from the worker, so that the status fits in a trailer", async () => {
    const error = await streamError(400, JSON.stringify({ error: { message: `too long: ${"x".repeat(100_000)}`, code: 400 } }));
    expect(Status[error.code]).toBe("INVALID_ARGUMENT");
    expect(error.details.startsWith("worker gpu-7 answered HTTP 400: too long: xxx")).toBe(true);
    expect(error.details.length).toBeLessThan(maxWorkerMessageCharacters + 100);
  });

  it.each([401, 403])(
    "turns HTTP %d into FAILED_PRECONDITION naming the worker and its provider, never the key, not blamed on the worker",
    async (status) => {
      const key = "sk-live-0123456789abcdef";
      const error = await streamError(status, JSON.stringify({ error: { message: `Incorrect API key provided: ${key}`, type: "invalid_request_error", code: "invalid_api_key" } }), {
        apiKey: key,
        provider: "openai",
      });
      expect(Status[error.code]).toBe("FAILED_PRECONDITION");
      expect(error.details).toContain(`worker gpu-7: provider "openai" rejected the API key (HTTP ${status})`);
      expect(error.details).toContain("admin API");
      expect(error.details).not.toContain("sk-live");
      expect(classifyFailure(error, live(), live())).toMatchObject({ retryable: false, blameWorker: false });
    },
  );

  it("says that no key was sent when a worker without a provider answers HTTP 401", async () => {
    const error = await streamError(401, JSON.stringify({ error: "Unauthorized" }));
    expect(Status[error.code]).toBe("FAILED_PRECONDITION");
    expect(error.details).toContain("worker gpu-7 wants an API key (HTTP 401) and none was sent");
  });

  it("maps the error answers of non-streamed requests the same way", async () => {
    const worker = await startScriptedWorker(answering(401, JSON.stringify({ error: { message: "Incorrect API key provided: sk-live-xyz" } })));
    try {
      const failure = await new WorkerClient()
        .postJson({ id: "gpu-7", url: worker.url, provider: "openai" }, "/v1/embeddings", {}, AbortSignal.timeout(5_000), "sk-live-xyz")
        .catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: Status.FAILED_PRECONDITION, details: expect.stringContaining('provider "openai" rejected the API key') });
      expect((failure as ServerError).details).not.toContain("sk-live");
    } finally {
      await worker.stop();
    }
  });
});

describe("WorkerClient JSON answers (embeddings)", () => {
  it("sends a request again on a new connection when the worker closed the kept-alive ones", async () => {
    const worker = await startWorker();
    const client = new WorkerClient();
    const endpoint = { id: "w", url: worker.url };
    const embed = () => client.postJson(endpoint, "/v1/embeddings", {}, AbortSignal.timeout(5_000));
    // startWorker's server, answering JSON instead of events.
    worker.server.removeAllListeners("request");
    let answered = 0;
    const reused = new WeakSet<Socket>();
    worker.server.on("request", (request: IncomingMessage, response: ServerResponse) => {
      request.resume();
      request.on("end", () => {
        if (worker.closeReusedConnections && reused.has(request.socket)) {
          request.socket.destroy();
          return;
        }
        reused.add(request.socket);
        answered += 1;
        response.writeHead(200, { "content-type": "application/json" });
        response.end(JSON.stringify({ data: [{ index: 0, embedding: [answered] }] }));
      });
    });
    try {
      await expect(Promise.all([embed(), embed()])).resolves.toHaveLength(2);
      worker.closeReusedConnections = true;
      await expect(embed()).resolves.toEqual({ data: [{ index: 0, embedding: [3] }] });
    } finally {
      worker.server.closeAllConnections();
      worker.server.close();
    }
  });

  it("does not send a request again when the kept-alive connection broke while the worker was working on it", async () => {
    let received = 0;
    const seen = new WeakSet<Socket>();
    const worker = await startScriptedWorker((request, response) => {
      received += 1;
      if (!seen.has(request.socket)) {
        seen.add(request.socket);
        response.writeHead(200, { "content-type": "application/json" });
        response.end("{}");
        return;
      }
      // The worker took the request, worked on it, and died: running it again would run it twice.
      setTimeout(() => request.socket.destroy(), 400);
    });
    const client = new WorkerClient();
    try {
      await client.postJson({ id: "gpu-7", url: worker.url }, "/v1/embeddings", {}, AbortSignal.timeout(5_000));
      const failure = await client.postJson({ id: "gpu-7", url: worker.url }, "/v1/embeddings", {}, AbortSignal.timeout(5_000)).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringContaining("worker gpu-7") });
      expect(received).toBe(2);
    } finally {
      await worker.stop();
    }
  });

  it("answers OUT_OF_RANGE, neither failed over nor blamed on the worker, and closes the connection, when the answer is too large", async () => {
    const worker = await startScriptedWorker((_request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ data: [{ index: 0, embedding: Array.from({ length: 100 }, () => 0.125) }] }));
    });
    try {
      const failure = await new WorkerClient(undefined, 256).postJson({ id: "gpu-7", url: worker.url }, "/v1/embeddings", {}, AbortSignal.timeout(5_000)).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: Status.OUT_OF_RANGE, details: "worker gpu-7 answered with more than 256 bytes; send fewer inputs at once" });
      expect(classifyFailure(failure, new AbortController().signal, new AbortController().signal)).toMatchObject({ retryable: false, blameWorker: false });
      await worker.closedWithin(0, 2_000);
    } finally {
      await worker.stop();
    }
  });

  it("fails with INTERNAL naming the worker when the answer is not JSON", async () => {
    const worker = await startScriptedWorker((_request, response) => {
      response.writeHead(200, { "content-type": "text/html" });
      response.end("<html>gateway</html>");
    });
    try {
      const failure = await new WorkerClient().postJson({ id: "gpu-7", url: worker.url }, "/v1/embeddings", {}, AbortSignal.timeout(5_000)).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: Status.INTERNAL, details: expect.stringContaining("worker gpu-7 answered with what is not JSON: <html>") });
    } finally {
      await worker.stop();
    }
  });
});

describe("WorkerClient stream limits", () => {
  // Short waits, so that the old behaviours (waiting on the worker) fail fast instead of hanging.
  const timeouts = { connectMs: 2_000, firstEventMs: 2_000, idleMs: 300 };

  it("fails with INTERNAL naming the worker, and closes the connection, when a line never ends", async () => {
    const piece = "x".repeat(64 * 1024);
    const worker = await startScriptedWorker((_request, response) => {
      response.writeHead(200, { "content-type": "text/event-stream" });
      response.on("error", () => undefined);
      // Twice the bound, in pieces, and no line ending; the connection stays open.
      response.write("data: ");
      for (let sent = 0; sent <= 2 * maxServerSentEventCharacters; sent += piece.length) response.write(piece);
    });
    try {
      const { events, error } = await outcomeOf(new WorkerClient(timeouts).streamJson({ id: "gpu-7", url: worker.url }, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)));
      expect(events).toEqual([]);
      expect(error).toMatchObject({ code: Status.INTERNAL, details: expect.stringContaining("worker gpu-7 sent an event stream the broker does not read on") });
      await worker.closedWithin(0, 2_000);
    } finally {
      await worker.stop();
    }
  });

  it("returns a complete answer when the worker holds the connection open after [DONE], and does not reuse it", async () => {
    let answered = 0;
    const worker = await startScriptedWorker((_request, response) => {
      answered += 1;
      response.writeHead(200, { "content-type": "text/event-stream" });
      // The first answer does not end: a worker or proxy that keeps the connection open.
      if (answered === 1) response.write('data: {"n":1}\n\ndata: [DONE]\n\n');
      else response.end('data: {"n":1}\n\ndata: [DONE]\n\n');
    });
    try {
      const client = new WorkerClient(timeouts);
      const startedAt = performance.now();
      const first = await outcomeOf(client.streamJson({ id: "gpu-7", url: worker.url }, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)));
      expect(first).toEqual({ events: [{ n: 1 }] });
      // The grace after [DONE], not the idle timeout (which is shorter here) decides how long it waits.
      expect(performance.now() - startedAt).toBeGreaterThanOrEqual(doneGraceMs - 50);
      await worker.closedWithin(0, 2_000);
      const second = await outcomeOf(client.streamJson({ id: "gpu-7", url: worker.url }, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)));
      expect(second).toEqual({ events: [{ n: 1 }] });
      expect(worker.connections()).toBe(2);
    } finally {
      await worker.stop();
    }
  });

  it("reuses the connection, without waiting, when the response ends right after [DONE]", async () => {
    const worker = await startScriptedWorker((_request, response) => {
      response.writeHead(200, { "content-type": "text/event-stream" });
      response.end('data: {"n":1}\n\ndata: [DONE]\n\n');
    });
    try {
      const client = new WorkerClient(timeouts);
      const startedAt = performance.now();
      for (let request = 0; request < 3; request += 1) {
        expect(await outcomeOf(client.streamJson({ id: "gpu-7", url: worker.url }, "/v1/chat/completions", {}, AbortSignal.timeout(5_000)))).toEqual({ events: [{ n: 1 }] });
      }
      expect(performance.now() - startedAt).toBeLessThan(doneGraceMs);
      expect(worker.connections()).toBe(1);
    } finally {
      await worker.stop();
    }
  });
});
