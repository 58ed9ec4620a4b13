import { createServer, type Server } from "node:http";
import type { Socket } from "node:net";
import { Status } from "nice-grpc-common";
import { WorkerClient } from "./worker-client";

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
