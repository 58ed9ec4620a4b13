import { Agent as HttpAgent, request as httpRequest } from "node:http";
import { InferenceServiceDefinition, type ChatRequest, type InferenceServiceClient } from "@vlinders/proto";
import { ClientError, createChannel, createClient, Metadata, Status, type Channel } from "nice-grpc";
import { ServerSentEventReader } from "./sse";

/** Told about every content token a stream receives, at the moment the client received it. */
export interface TokenObserver {
  /** `gapMs` is the time since the stream's previous token (undefined for the first token). */
  onToken(now: number, gapMs: number | undefined): void;
}

export interface StreamOutcome {
  /** performance.now() when the client started the call. */
  startedAt: number;
  /** performance.now() when the first content token arrived; undefined when none did. */
  firstTokenAt: number | undefined;
  endedAt: number;
  tokens: number;
  /** Why the stream failed; undefined when it ended normally. Short, so that equal causes group. */
  error: string | undefined;
}

/** One way of reaching the model: straight to the worker, or through gRPC services. */
export interface ChatPath {
  readonly name: string;
  /** Runs one chat whose answer is `prompt` echoed back; never throws (failures are in the outcome). */
  run(prompt: string, signal: AbortSignal, observer: TokenObserver): Promise<StreamOutcome>;
  close(): void;
}

/** Which HTTP client the direct path uses. */
export type DirectClient = "http" | "fetch";

/**
 * Direct to the worker over HTTP/SSE, the baseline: POST /v1/chat/completions with `stream: true`
 * and `stream_options.include_usage`, as the broker sends it. With "http" the client is node:http
 * with a keep-alive agent and no socket limit, the cheapest client Node has, so that the baseline
 * carries as little client overhead as possible (overhead here would shrink every "added" number).
 * With "fetch" it is Node's fetch (undici), the client the broker itself uses.
 */
export function createDirectPath(workerUrl: string, model: string, client: DirectClient = "http"): ChatPath {
  const url = new URL("/v1/chat/completions", workerUrl);
  const agent = new HttpAgent({ keepAlive: true, maxSockets: Infinity });
  const bodyOf = (prompt: string) =>
    JSON.stringify({ model, messages: [{ role: "user", content: prompt }], stream: true, stream_options: { include_usage: true } });

  return {
    name: "direct",
    async run(prompt, signal, observer) {
      const startedAt = performance.now();
      let firstTokenAt: number | undefined;
      let last = 0;
      let tokens = 0;
      let done = false;
      const end = (error: string | undefined): StreamOutcome => ({ startedAt, firstTokenAt, endedAt: performance.now(), tokens, error });
      const reader = new ServerSentEventReader();
      /** Handles the events completed by a chunk; returns why the stream failed, if it did. */
      const onEvents = (events: readonly string[]): string | undefined => {
        for (const data of events) {
          if (data === "[DONE]") {
            done = true;
            continue;
          }
          let chunk: { error?: { message?: string }; choices?: Array<{ delta?: { content?: unknown } }> };
          try {
            chunk = JSON.parse(data) as typeof chunk;
          } catch {
            return `an event that is not JSON: ${data.slice(0, 60)}`;
          }
          if (chunk.error) return `worker error event: ${chunk.error.message ?? "?"}`;
          const content = chunk.choices?.[0]?.delta?.content;
          if (typeof content !== "string" || content === "") continue;
          const now = performance.now();
          if (tokens === 0) {
            firstTokenAt = now;
            observer.onToken(now, undefined);
          } else {
            observer.onToken(now, now - last);
          }
          last = now;
          tokens += 1;
        }
        return undefined;
      };
      try {
        if (client === "fetch") {
          const response = await fetch(url, {
            method: "POST",
            headers: { "content-type": "application/json", accept: "text/event-stream" },
            body: bodyOf(prompt),
            signal,
          });
          if (!response.ok || !response.body) return end(`HTTP ${response.status}: ${(await response.text()).slice(0, 100)}`);
          for await (const chunk of response.body) {
            const error = onEvents(reader.push(chunk));
            if (error !== undefined) return end(error);
          }
          const error = onEvents(reader.end());
          return end(error ?? (done ? undefined : "stream ended without [DONE]"));
        }
        const body = bodyOf(prompt);
        return await new Promise<StreamOutcome>((resolve) => {
          const request = httpRequest(
            url,
            {
              method: "POST",
              agent,
              signal,
              headers: { "content-type": "application/json", accept: "text/event-stream", "content-length": Buffer.byteLength(body) },
            },
            (response) => {
              if (response.statusCode !== 200) {
                response.resume();
                resolve(end(`HTTP ${String(response.statusCode)}`));
                return;
              }
              response.on("data", (chunk: Buffer) => {
                const error = onEvents(reader.push(chunk));
                if (error !== undefined) {
                  resolve(end(error));
                  response.destroy();
                }
              });
              response.once("end", () => {
                const error = onEvents(reader.end());
                resolve(end(error ?? (done ? undefined : "stream ended without [DONE]")));
              });
              response.once("error", (error) => resolve(end(describeError(error))));
            },
          );
          request.once("error", (error) => resolve(end(describeError(error))));
          request.end(body);
        });
      } catch (error: unknown) {
        return end(describeError(error));
      }
    },
    close() {
      agent.destroy();
    },
  };
}

export interface GrpcPathOptions {
  name: string;
  /** host:port of a service that serves vlinders.v1.InferenceService (the broker or the gateway). */
  address: string;
  secret: string;
  model: string;
  /**
   * HTTP/2 connections to open: streams are spread over them round-robin. One connection carries
   * every stream of a channel, and grpc-js shares connections between channels with equal options,
   * so each channel gets its own subchannel pool.
   */
  channels: number;
}

/** InferenceService.Chat over gRPC with the generated nice-grpc client. */
export function createGrpcPath(options: GrpcPathOptions): ChatPath {
  const channels: Channel[] = [];
  const clients: InferenceServiceClient[] = [];
  const metadata = Metadata({ "x-internal-auth": options.secret });
  for (let index = 0; index < options.channels; index += 1) {
    const channel = createChannel(options.address, undefined, { "grpc.use_local_subchannel_pool": 1 });
    channels.push(channel);
    clients.push(createClient(InferenceServiceDefinition, channel, { "*": { metadata } }));
  }
  let next = 0;
  return {
    name: options.name,
    async run(prompt, signal, observer) {
      const startedAt = performance.now();
      const client = clients[next % clients.length];
      next += 1;
      let firstTokenAt: number | undefined;
      let last = 0;
      let tokens = 0;
      let finished = false;
      const end = (error: string | undefined): StreamOutcome => ({ startedAt, firstTokenAt, endedAt: performance.now(), tokens, error });
      if (!client) return end("no gRPC channel");
      try {
        // The broker caches deterministic requests only; this one is not (no temperature, no seed),
        // and says so twice: every answer comes from the worker.
        for await (const event of client.chat(chatRequest(options.model, prompt), { signal })) {
          const payload = event.event;
          if (payload?.$case === "contentDelta") {
            if (payload.value === "") continue;
            const now = performance.now();
            if (tokens === 0) {
              firstTokenAt = now;
              observer.onToken(now, undefined);
            } else {
              observer.onToken(now, now - last);
            }
            last = now;
            tokens += 1;
          } else if (payload?.$case === "finishReason") {
            finished = true;
          }
        }
        return end(finished ? undefined : "stream ended without a finish reason");
      } catch (error: unknown) {
        return end(describeError(error));
      }
    },
    close() {
      for (const channel of channels) channel.close();
    },
  };
}

function chatRequest(model: string, prompt: string): ChatRequest {
  return {
    model,
    messages: [{ role: "user", content: prompt, toolCalls: [], toolCallId: "", name: "" }],
    tools: [],
    sampling: undefined,
    userId: "",
    sessionId: "",
    bypassCache: true,
  };
}

/** A short cause that groups equal failures: the gRPC status name and details, or the error's message. */
export function describeError(error: unknown): string {
  if (error instanceof ClientError) return `${Status[error.code]}: ${error.details.slice(0, 160)}`;
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${error.cause.message.slice(0, 80)})` : "";
    return `${error.name}: ${error.message.slice(0, 120)}${cause}`;
  }
  return String(error).slice(0, 160);
}
