import { connect as connectHttp2 } from "node:http2";
import { connect as connectTcp, createServer as createTcpServer, type Server as TcpServer, type Socket } from "node:net";
import { ChatRequest, FinishReason, InferenceServiceDefinition, type ChatEvent } from "@vlinders/proto";
import { createChannel, createClient, Metadata, ServerError, Status, type Channel } from "nice-grpc";
import { CallDeadlineError, deadlineOf } from "../call-deadline";
import { createInternalChannel, createInternalClient, type InternalChannel } from "../client";
import { createGrpcServer, type GrpcServer } from "./grpc-server";

const secret = "transport-spec-secret-0123456789";

function chatRequest(content: string): ChatRequest {
  return ChatRequest.fromPartial({ model: "m", messages: [{ role: "user", content }] });
}

async function closedPort(): Promise<number> {
  const server = createTcpServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * A TCP proxy to `port` that forwards everything except the server's answers to pings (HTTP/2
 * PING frames with the ACK flag): a peer that never answers a ping, whether or not it sends data.
 */
async function proxyDroppingPingAnswers(port: number): Promise<{ port: number; close(): void }> {
  const sockets = new Set<Socket>();
  const proxy: TcpServer = createTcpServer((downstream) => {
    const upstream = connectTcp(port, "127.0.0.1");
    for (const socket of [downstream, upstream]) {
      sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => sockets.delete(socket));
    }
    downstream.pipe(upstream);
    let pending = Buffer.alloc(0);
    upstream.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      // The server side of HTTP/2 has no preface: its bytes are frames from the first one.
      while (pending.length >= 9) {
        const frameLength = 9 + pending.readUIntBE(0, 3);
        if (pending.length < frameLength) break;
        const isPingAnswer = pending[3] === 0x6 && (pending[4]! & 0x1) === 0x1;
        if (!isPingAnswer) downstream.write(pending.subarray(0, frameLength));
        pending = pending.subarray(frameLength);
      }
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    port: (proxy.address() as { port: number }).port,
    close() {
      for (const socket of sockets) socket.destroy();
      proxy.close();
    },
  };
}

/**
 * The mesh's own gRPC transport against a grpc-js client (what Vlinders-API and grpcurl use) and
 * against its own internal client: the protocol's corners a caller would see.
 */
describe("gRPC transport", () => {
  let server: GrpcServer;
  let port: number;
  let grpcJsChannel: Channel;
  let internalChannel: InternalChannel;
  const seen: { cancelled: boolean; metadata?: Metadata; abortReason?: unknown; deadline?: number } = { cancelled: false };

  beforeAll(async () => {
    server = createGrpcServer({ maxReceiveMessageBytes: 64 * 1024 });
    server.add(InferenceServiceDefinition, {
      async *chat(request, context) {
        seen.metadata = context.metadata;
        const words = request.messages[0]?.content.split(" ") ?? [];
        if (words[0] === "fail") throw new ServerError(Status.FAILED_PRECONDITION, "chat: ünïcode % reason");
        if (words[0] === "slow") {
          for (let index = 0; index < Number(words[1]); index += 1) {
            await new Promise((resolve) => setTimeout(resolve, 20));
            yield { event: { $case: "contentDelta", value: String(index) }, model: "m" };
          }
          return;
        }
        if (words[0] === "hang") {
          yield { event: { $case: "contentDelta", value: "waiting" }, model: "m" };
          await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
          seen.abortReason = context.signal.reason;
          seen.cancelled = true;
          return;
        }
        for (const word of words) yield { event: { $case: "contentDelta", value: word }, model: "m" };
        context.trailer.set("retry-after-ms", "250");
        yield { event: { $case: "finishReason", value: FinishReason.FINISH_REASON_STOP }, model: "m" };
      },
      async complete() {
        throw new ServerError(Status.UNIMPLEMENTED, "complete: not in this test");
      },
      async embed(request) {
        return { model: request.model, embeddings: request.inputs.map((input) => ({ values: [input.length] })), usage: undefined };
      },
      async listModels(_request, context) {
        seen.deadline = deadlineOf(context.signal);
        const tag = context.metadata.get("tag-bin");
        return { models: [{ id: tag instanceof Uint8Array ? Buffer.from(tag).toString("hex") : "none", aliases: [], maxContextTokens: 1, workerCount: 1 }] };
      },
    });
    port = await server.listen("127.0.0.1", 0);
    grpcJsChannel = createChannel(`127.0.0.1:${port}`);
    internalChannel = createInternalChannel(`127.0.0.1:${port}`);
  });

  afterAll(async () => {
    grpcJsChannel.close();
    internalChannel.close();
    await server.shutdown();
  });

  const contents = (events: ChatEvent[]) => events.flatMap((event) => (event.event?.$case === "contentDelta" ? [event.event.value] : []));

  it("streams to a grpc-js client, with trailers, and carries binary metadata both ways", async () => {
    const client = createClient(InferenceServiceDefinition, grpcJsChannel);
    const events: ChatEvent[] = [];
    let trailer: Metadata | undefined;
    for await (const event of client.chat(chatRequest("one two three"), { onTrailer: (value) => (trailer = value) })) events.push(event);
    expect(contents(events)).toEqual(["one", "two", "three"]);
    expect(trailer?.get("retry-after-ms")).toBe("250");

    const models = await client.listModels({}, { metadata: Metadata({ "tag-bin": Uint8Array.of(0xca, 0xfe) }) });
    expect(models.models[0]?.id).toBe("cafe");
  });

  it("answers an error as a status with its (percent-encoded) message, to both clients", async () => {
    const grpcJs = createClient(InferenceServiceDefinition, grpcJsChannel);
    const internal = createInternalClient(InferenceServiceDefinition, internalChannel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
    for (const client of [grpcJs, internal]) {
      const failure = await (async () => {
        for await (const event of client.chat(chatRequest("fail now"))) void event;
      })().catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: Status.FAILED_PRECONDITION, details: "chat: ünïcode % reason" });
    }
  });

  it("answers UNIMPLEMENTED for an unknown method and a compressed request", async () => {
    const session = connectHttp2(`http://127.0.0.1:${port}`);
    try {
      const ask = (path: string, body: Buffer, extra: Record<string, string> = {}) =>
        new Promise<Record<string, unknown>>((resolve, reject) => {
          const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...extra });
          stream.on("response", (headers) => resolve(headers as Record<string, unknown>));
          stream.on("error", reject);
          stream.end(body);
        });
      const unknown = await ask("/vlinders.v1.InferenceService/Nope", Buffer.from([0, 0, 0, 0, 0]));
      expect(unknown).toMatchObject({ "grpc-status": String(Status.UNIMPLEMENTED) });
      expect(String(unknown["grpc-message"])).toContain("/vlinders.v1.InferenceService/Nope");
      const compressed = await ask("/vlinders.v1.InferenceService/ListModels", Buffer.from([1, 0, 0, 0, 0]), { "grpc-encoding": "gzip" });
      expect(compressed).toMatchObject({ "grpc-status": String(Status.UNIMPLEMENTED) });
    } finally {
      session.close();
    }
  });

  it("refuses a request over the size limit with RESOURCE_EXHAUSTED", async () => {
    const client = createInternalClient(InferenceServiceDefinition, internalChannel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
    const failure = await client.embed({ model: "m", inputs: ["x".repeat(100 * 1024)] }).catch((error: unknown) => error);
    expect(failure).toMatchObject({ code: Status.RESOURCE_EXHAUSTED, details: expect.stringContaining("over the limit") });
    expect(await client.embed({ model: "m", inputs: ["abc"] })).toMatchObject({ embeddings: [{ values: [3] }] });
  });

  it("aborts the handler's signal when the client cancels, and when the deadline passes", async () => {
    const internal = createInternalClient(InferenceServiceDefinition, internalChannel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
    seen.cancelled = false;
    const controller = new AbortController();
    const cancelled = (async () => {
      for await (const event of internal.chat(chatRequest("hang"), { signal: controller.signal })) {
        if (event.event?.$case === "contentDelta") controller.abort();
      }
    })().catch((error: unknown) => error);
    expect(await cancelled).toMatchObject({ name: "AbortError" });
    for (let waited = 0; !seen.cancelled && waited < 2_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(seen.cancelled).toBe(true);

    // A grpc-timeout as any client sends it: the server ends the call with DEADLINE_EXCEEDED.
    seen.cancelled = false;
    const session = connectHttp2(`http://127.0.0.1:${port}`);
    try {
      const trailers = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const stream = session.request({
          ":method": "POST",
          ":path": "/vlinders.v1.InferenceService/Chat",
          "content-type": "application/grpc",
          te: "trailers",
          "grpc-timeout": "300m",
        });
        stream.on("trailers", (headers) => resolve(headers as Record<string, unknown>));
        stream.on("data", () => {});
        stream.on("error", reject);
        const message = ChatRequest.encode(chatRequest("hang")).finish();
        const frame = Buffer.alloc(5 + message.length);
        frame.writeUInt32BE(message.length, 1);
        frame.set(message, 5);
        stream.end(frame);
      });
      expect(trailers).toMatchObject({ "grpc-status": String(Status.DEADLINE_EXCEEDED) });
    } finally {
      session.close();
    }
    for (let waited = 0; !seen.cancelled && waited < 2_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(seen.cancelled).toBe(true);

    const internalExpired = await (async () => {
      for await (const event of internal.chat(chatRequest("hang"), { deadline: 200 })) void event;
    })().catch((error: unknown) => error);
    expect(internalExpired).toMatchObject({ code: Status.DEADLINE_EXCEEDED, details: expect.stringContaining("deadline of 200 ms") });
  });

  it("passes a caller's deadline on to the calls its handler makes, and tells a deadline from a cancel", async () => {
    // A relay in front of the test server, as each hop of the mesh is: its downstream calls get the
    // handler's signal and a default deadline far longer than the caller's.
    const downstream = createInternalClient(InferenceServiceDefinition, internalChannel, { internalSecret: secret, defaultDeadlineMs: 60_000 });
    const relay = createGrpcServer();
    relay.add(InferenceServiceDefinition, {
      chat: (request, context) => downstream.chat(request, { signal: context.signal }),
      complete: (request, context) => downstream.complete(request, { signal: context.signal }),
      embed: (request, context) => downstream.embed(request, { signal: context.signal }),
      listModels: (request, context) => downstream.listModels(request, { signal: context.signal }),
    });
    const relayChannel = createInternalChannel(`127.0.0.1:${await relay.listen("127.0.0.1", 0)}`);
    try {
      // The caller sends its deadline as grpc-timeout, as any gRPC client does.
      const client = createInternalClient(InferenceServiceDefinition, relayChannel, { internalSecret: secret, defaultDeadlineMs: 60_000 });
      seen.deadline = undefined;
      const callerDeadline = Date.now() + 3_000;
      await client.listModels({}, { deadline: new Date(callerDeadline) });
      expect(seen.deadline).toBeDefined();
      expect(seen.deadline!).toBeLessThanOrEqual(callerDeadline + 50);
      expect(seen.deadline!).toBeGreaterThan(callerDeadline - 1_000);

      // When the deadline passes, the relay cancels its downstream call: the downstream handler's
      // signal says the deadline passed, not that someone cancelled.
      seen.cancelled = false;
      seen.abortReason = undefined;
      const expired = await (async () => {
        for await (const event of client.chat(chatRequest("hang"), { deadline: new Date(Date.now() + 300) })) void event;
      })().catch((error: unknown) => error);
      expect(expired).toMatchObject({ code: Status.DEADLINE_EXCEEDED });
      for (let waited = 0; !seen.cancelled && waited < 2_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(seen.abortReason).toBeInstanceOf(CallDeadlineError);
    } finally {
      relayChannel.close();
      await relay.shutdown();
    }
  });

  it("sends the shared secret and trace context as metadata", async () => {
    const internal = createInternalClient(InferenceServiceDefinition, internalChannel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
    for await (const event of internal.chat(chatRequest("hello"))) void event;
    expect(seen.metadata?.get("x-internal-auth")).toBe(secret);
    expect(seen.metadata?.get("te")).toBeUndefined();
  });

  it("fails a call to an address where nothing listens with UNAVAILABLE, naming the address", async () => {
    const channel = createInternalChannel(`127.0.0.1:${await closedPort()}`);
    try {
      const client = createInternalClient(InferenceServiceDefinition, channel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
      const failure = await client.listModels({}).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringMatching(/127\.0\.0\.1:\d+: connect ECONNREFUSED/) });
    } finally {
      channel.close();
    }
  });

  it("fails a call whose connection is dropped before any answer with UNAVAILABLE", async () => {
    const dropping: TcpServer = createTcpServer((socket: Socket) => socket.destroy());
    await new Promise<void>((resolve) => dropping.listen(0, "127.0.0.1", resolve));
    const channel = createInternalChannel(`127.0.0.1:${(dropping.address() as { port: number }).port}`);
    try {
      const client = createInternalClient(InferenceServiceDefinition, channel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
      const failure = await client.listModels({}).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringMatching(/127\.0\.0\.1:\d+/) });
    } finally {
      channel.close();
      await new Promise<void>((resolve) => dropping.close(() => resolve()));
    }
  });

  it("lets calls in flight finish when shutting down, and refuses new ones", async () => {
    const draining = createGrpcServer();
    draining.add(InferenceServiceDefinition, {
      async *chat(_request, context) {
        yield { event: { $case: "contentDelta", value: "first" }, model: "m" };
        await new Promise((resolve) => setTimeout(resolve, 300));
        if (!context.signal.aborted) yield { event: { $case: "contentDelta", value: "second" }, model: "m" };
      },
      complete: () => Promise.reject(new ServerError(Status.UNIMPLEMENTED, "")),
      embed: () => Promise.reject(new ServerError(Status.UNIMPLEMENTED, "")),
      listModels: async () => ({ models: [] }),
    });
    const drainingPort = await draining.listen("127.0.0.1", 0);
    const channel = createInternalChannel(`127.0.0.1:${drainingPort}`);
    try {
      const client = createInternalClient(InferenceServiceDefinition, channel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
      const received: string[] = [];
      let shutdown: Promise<void> | undefined;
      for await (const event of client.chat(chatRequest("x"))) {
        if (event.event?.$case === "contentDelta") received.push(event.event.value);
        shutdown ??= draining.shutdown();
      }
      await shutdown;
      expect(received).toEqual(["first", "second"]);
      const refused = await client.listModels({}).catch((error: unknown) => error);
      expect(refused).toMatchObject({ code: Status.UNAVAILABLE });
    } finally {
      channel.close();
    }
  });

  it("drops a connection whose peer answers no ping and sends nothing, but not one that keeps sending", async () => {
    const proxy = await proxyDroppingPingAnswers(port);
    const channel = createInternalChannel(`127.0.0.1:${proxy.port}`, 1, { intervalMs: 50, timeoutMs: 50 });
    try {
      const client = createInternalClient(InferenceServiceDefinition, channel, { internalSecret: secret, defaultDeadlineMs: 10_000 });
      // 30 messages 20 ms apart: the keepalive fires several times during the stream.
      const busy: ChatEvent[] = [];
      for await (const event of client.chat(chatRequest("slow 30"))) busy.push(event);
      expect(contents(busy)).toHaveLength(30);

      const startedAt = Date.now();
      const quiet = await (async () => {
        for await (const _event of client.chat(chatRequest("hang"))) {
          // "waiting", then nothing: the connection goes quiet.
        }
      })().catch((error: unknown) => error);
      expect(quiet).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringContaining("did not answer a ping within 50 ms") });
      expect(Date.now() - startedAt).toBeLessThan(5_000);
    } finally {
      channel.close();
      proxy.close();
    }
  });
});
