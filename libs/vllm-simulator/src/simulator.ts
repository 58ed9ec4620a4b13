import { createHash, randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { countTokens, splitIntoTokens } from "./tokens";

export interface SimulatedModel {
  id: string;
  maxModelLen: number;
}

export interface VllmSimulatorOptions {
  models: SimulatedModel[];
  /** Time from request to first token. */
  timeToFirstTokenMs: number;
  /** Time between two tokens. */
  interTokenLatencyMs: number;
  /** Length of each embedding vector. */
  embeddingDimensions: number;
}

/** Failures the simulator can be told to produce, as a real worker sometimes does. */
export interface SimulatorFaults {
  /** After this many content tokens, send vLLM's mid-stream `{"error":…}` event and `[DONE]`. */
  midStreamErrorAfterTokens?: number;
  /** Answer every chat request with this HTTP status and an OpenAI error body. */
  httpErrorStatus?: number;
}

export interface SimulatorStats {
  requests: number;
  /** Streams whose client hung up before the stream ended. */
  disconnects: number;
  activeStreams: number;
}

export const defaultSimulatorOptions: VllmSimulatorOptions = {
  models: [
    { id: "vlinders-sim-chat", maxModelLen: 32_768 },
    { id: "vlinders-sim-embed", maxModelLen: 8_192 },
  ],
  timeToFirstTokenMs: 40,
  interTokenLatencyMs: 10,
  embeddingDimensions: 64,
};

interface ChatMessageBody {
  role?: unknown;
  content?: unknown;
}

interface ChatCompletionBody {
  model?: unknown;
  messages?: unknown;
  stream?: unknown;
  stream_options?: { include_usage?: unknown };
  max_tokens?: unknown;
  max_completion_tokens?: unknown;
  tools?: unknown;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
  ) {
    super(message);
  }
}

/** Matches "call NAME {json}" as the last user message: the simulator then calls that tool. */
const toolCallInstruction = /^\s*call\s+([A-Za-z_][\w.-]*)(?:\s+(\{[\s\S]*\}))?\s*$/;

/**
 * A simulated vLLM worker. It speaks vLLM's OpenAI-compatible HTTP API (chat completions streamed
 * as server-sent events, models, embeddings, health and vLLM-named Prometheus metrics) and echoes
 * the last user message back word by word, with configurable latency. It runs no model.
 */
export class VllmSimulator {
  private server: Server | undefined;
  private options: VllmSimulatorOptions;
  private faults: SimulatorFaults = {};
  private readonly registry = new Registry();
  private readonly disconnectListeners = new Set<() => void>();
  readonly stats: SimulatorStats = { requests: 0, disconnects: 0, activeStreams: 0 };
  private readonly metrics;

  constructor(options: Partial<VllmSimulatorOptions> = {}) {
    this.options = { ...defaultSimulatorOptions, ...options };
    const labelNames = ["model_name"] as const;
    const registers = [this.registry];
    this.metrics = {
      running: new Gauge({ name: "vllm:num_requests_running", help: "Requests running on the GPU.", labelNames, registers }),
      waiting: new Gauge({ name: "vllm:num_requests_waiting", help: "Requests waiting to be processed.", labelNames, registers }),
      kvCacheUsage: new Gauge({ name: "vllm:kv_cache_usage_perc", help: "KV-cache usage; 1 means 100 percent.", labelNames, registers }),
      promptTokens: new Counter({ name: "vllm:prompt_tokens_total", help: "Prefill tokens processed.", labelNames, registers }),
      generationTokens: new Counter({ name: "vllm:generation_tokens_total", help: "Generation tokens processed.", labelNames, registers }),
      requestSuccess: new Counter({
        name: "vllm:request_success_total",
        help: "Successfully processed requests.",
        labelNames: ["model_name", "finished_reason"],
        registers,
      }),
      timeToFirstToken: new Histogram({
        name: "vllm:time_to_first_token_seconds",
        help: "Time to first token in seconds.",
        labelNames,
        buckets: [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10],
        registers,
      }),
      interTokenLatency: new Histogram({
        name: "vllm:inter_token_latency_seconds",
        help: "Inter-token latency in seconds.",
        labelNames,
        buckets: [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5],
        registers,
      }),
      e2eLatency: new Histogram({
        name: "vllm:e2e_request_latency_seconds",
        help: "End-to-end request latency in seconds.",
        labelNames,
        buckets: [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60],
        registers,
      }),
    };
    for (const model of this.options.models) {
      this.metrics.running.set({ model_name: model.id }, 0);
      this.metrics.waiting.set({ model_name: model.id }, 0);
      this.metrics.kvCacheUsage.set({ model_name: model.id }, 0);
    }
  }

  /** Changes latency or models while running (tests and benchmarks). */
  configure(options: Partial<VllmSimulatorOptions>): void {
    this.options = { ...this.options, ...options };
  }

  /** Sets the failures to inject from now on; an empty object turns them off. */
  injectFaults(faults: SimulatorFaults): void {
    this.faults = { ...faults };
  }

  /** Calls the listener each time a client hangs up mid-stream; returns a function that unsubscribes. */
  onDisconnect(listener: () => void): () => void {
    this.disconnectListeners.add(listener);
    return () => this.disconnectListeners.delete(listener);
  }

  /** Resolves when a client next hangs up mid-stream, or with "timeout" if none does in time. */
  nextDisconnect(timeoutMs: number): Promise<"disconnected" | "timeout"> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        unsubscribe();
        resolve("timeout");
      }, timeoutMs);
      const unsubscribe = this.onDisconnect(() => {
        clearTimeout(timer);
        unsubscribe();
        resolve("disconnected");
      });
    });
  }

  async listen(port = 0, host = "127.0.0.1"): Promise<{ url: string; port: number }> {
    const server = createServer((request, response) => {
      this.route(request, response).catch((error: unknown) => {
        const httpError =
          error instanceof HttpError ? error : new HttpError(500, error instanceof Error ? error.message : String(error), "InternalServerError");
        if (!response.headersSent) sendError(response, httpError);
        else response.end();
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    const bound = (server.address() as AddressInfo).port;
    return { url: `http://${host.includes(":") ? `[${host}]` : host}:${bound}`, port: bound };
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = (request.url ?? "/").split("?")[0];
    if (request.method === "GET" && path === "/health") {
      response.writeHead(200).end();
      return;
    }
    if (request.method === "GET" && path === "/metrics") {
      response.writeHead(200, { "content-type": this.registry.contentType }).end(await this.registry.metrics());
      return;
    }
    if (request.method === "GET" && path === "/v1/models") {
      sendJson(response, 200, {
        object: "list",
        data: this.options.models.map((model) => ({
          id: model.id,
          object: "model",
          created: 1_700_000_000,
          owned_by: "vllm",
          root: model.id,
          parent: null,
          max_model_len: model.maxModelLen,
        })),
      });
      return;
    }
    if (request.method === "GET" && path === "/simulator/stats") {
      sendJson(response, 200, this.stats);
      return;
    }
    if (request.method === "POST" && path === "/v1/chat/completions") {
      await this.chatCompletions(response, await readJson(request));
      return;
    }
    if (request.method === "POST" && path === "/v1/embeddings") {
      this.embeddings(response, await readJson(request));
      return;
    }
    throw new HttpError(404, `no route for ${request.method ?? "?"} ${path ?? ""}`, "NotFoundError");
  }

  private resolveModel(model: unknown): SimulatedModel {
    if (typeof model !== "string") throw new HttpError(400, "model must be a string", "BadRequestError");
    const found = this.options.models.find((candidate) => candidate.id === model);
    if (!found) throw new HttpError(404, `The model \`${model}\` does not exist.`, "NotFoundError");
    return found;
  }

  private embeddings(response: ServerResponse, body: Record<string, unknown>): void {
    const model = this.resolveModel(body.model);
    const inputs = typeof body.input === "string" ? [body.input] : body.input;
    if (!Array.isArray(inputs) || !inputs.every((input) => typeof input === "string")) {
      throw new HttpError(400, "input must be a string or a list of strings", "BadRequestError");
    }
    const data = inputs.map((input: string, index) => ({
      object: "embedding",
      index,
      embedding: deterministicEmbedding(input, this.options.embeddingDimensions),
    }));
    const promptTokens = inputs.reduce((sum: number, input: string) => sum + countTokens(input), 0);
    sendJson(response, 200, {
      id: `embd-${randomUUID()}`,
      object: "list",
      created: Math.floor(Date.now() / 1000),
      model: model.id,
      data,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0 },
    });
  }

  private async chatCompletions(response: ServerResponse, body: ChatCompletionBody): Promise<void> {
    this.stats.requests += 1;
    const model = this.resolveModel(body.model);
    if (!Array.isArray(body.messages) || body.messages.length === 0) {
      throw new HttpError(400, "messages must be a non-empty list", "BadRequestError");
    }
    if (this.faults.httpErrorStatus !== undefined) {
      throw new HttpError(this.faults.httpErrorStatus, "simulated worker failure", "InternalServerError");
    }
    const messages = body.messages as ChatMessageBody[];
    const promptText = messages.map((message) => (typeof message.content === "string" ? message.content : "")).join("\n");
    const promptTokens = countTokens(promptText);
    const lastUser = [...messages].reverse().find((message) => message.role === "user");
    const lastUserText = typeof lastUser?.content === "string" ? lastUser.content : "";
    const maxTokens = typeof body.max_tokens === "number" ? body.max_tokens : typeof body.max_completion_tokens === "number" ? body.max_completion_tokens : Infinity;
    const toolMatch = Array.isArray(body.tools) && body.tools.length > 0 ? toolCallInstruction.exec(lastUserText) : null;

    const plan = toolMatch
      ? { kind: "tool" as const, name: toolMatch[1] ?? "", argumentsJson: toolMatch[2] ?? "{}" }
      : { kind: "text" as const, tokens: splitIntoTokens(lastUserText).slice(0, maxTokens) };
    const finishReason = plan.kind === "tool" ? "tool_calls" : plan.tokens.length < splitIntoTokens(lastUserText).length ? "length" : "stop";
    const completionTokens = plan.kind === "tool" ? Math.max(1, countTokens(plan.argumentsJson)) : plan.tokens.length;
    const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
    const created = Math.floor(Date.now() / 1000);
    const usage = {
      prompt_tokens: promptTokens,
      total_tokens: promptTokens + completionTokens,
      completion_tokens: completionTokens,
      prompt_tokens_details: { cached_tokens: 0 },
    };

    const abort = new AbortController();
    const startedAt = performance.now();
    response.on("close", () => {
      if (!response.writableFinished) {
        abort.abort();
        this.stats.disconnects += 1;
        for (const listener of this.disconnectListeners) listener();
      }
    });
    const labels = { model_name: model.id };
    this.metrics.running.inc(labels);
    this.stats.activeStreams += 1;
    try {
      this.metrics.promptTokens.inc(labels, promptTokens);
      await sleep(this.options.timeToFirstTokenMs, abort.signal);
      this.metrics.timeToFirstToken.observe(labels, (performance.now() - startedAt) / 1000);

      if (body.stream !== true) {
        const message =
          plan.kind === "tool"
            ? {
                role: "assistant",
                content: null,
                tool_calls: [{ id: `chatcmpl-tool-${randomUUID().replaceAll("-", "")}`, type: "function", function: { name: plan.name, arguments: plan.argumentsJson } }],
              }
            : { role: "assistant", content: plan.tokens.join(""), tool_calls: [] };
        await sleep(this.options.interTokenLatencyMs * Math.max(0, completionTokens - 1), abort.signal);
        this.metrics.generationTokens.inc(labels, completionTokens);
        sendJson(response, 200, {
          id,
          object: "chat.completion",
          created,
          model: model.id,
          choices: [{ index: 0, message, logprobs: null, finish_reason: finishReason, stop_reason: null }],
          usage,
        });
        this.metrics.requestSuccess.inc({ model_name: model.id, finished_reason: finishReason });
        return;
      }

      response.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" });
      const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
        writeEvent(response, { id, object: "chat.completion.chunk", created, model: model.id, choices, ...extra });
      const delta = (value: Record<string, unknown>, finish: string | null = null) =>
        chunk([{ index: 0, delta: value, logprobs: null, finish_reason: finish, ...(finish ? { stop_reason: null } : {}) }]);

      delta({ role: "assistant", content: "" });
      const pieces = plan.kind === "tool" ? toolCallPieces(plan.name, plan.argumentsJson) : plan.tokens.map((token) => ({ content: token }));
      let sent = 0;
      for (const piece of pieces) {
        if (sent > 0) {
          const tokenStartedAt = performance.now();
          await sleep(this.options.interTokenLatencyMs, abort.signal);
          this.metrics.interTokenLatency.observe(labels, (performance.now() - tokenStartedAt) / 1000);
        }
        if (this.faults.midStreamErrorAfterTokens !== undefined && sent >= this.faults.midStreamErrorAfterTokens) {
          writeEvent(response, { error: { message: "simulated engine failure mid-stream", type: "InternalServerError", param: null, code: 500 } });
          response.end("data: [DONE]\n\n");
          return;
        }
        delta(piece);
        sent += 1;
        this.metrics.generationTokens.inc(labels);
      }
      delta({ content: "" }, finishReason);
      if (body.stream_options?.include_usage === true) chunk([], { usage });
      response.end("data: [DONE]\n\n");
      this.metrics.requestSuccess.inc({ model_name: model.id, finished_reason: finishReason });
    } finally {
      this.stats.activeStreams -= 1;
      this.metrics.running.dec(labels);
      this.metrics.e2eLatency.observe(labels, (performance.now() - startedAt) / 1000);
    }
  }
}

/** vLLM streams a tool call as a header (id, type, name) and then argument fragments. */
function toolCallPieces(name: string, argumentsJson: string): Array<Record<string, unknown>> {
  const id = `chatcmpl-tool-${randomUUID().replaceAll("-", "")}`;
  const pieces: Array<Record<string, unknown>> = [
    { tool_calls: [{ id, type: "function", index: 0, function: { name, arguments: "" } }] },
  ];
  for (let offset = 0; offset < argumentsJson.length; offset += 8) {
    pieces.push({ tool_calls: [{ index: 0, function: { arguments: argumentsJson.slice(offset, offset + 8) } }] });
  }
  return pieces;
}

/** The same text always gives the same unit vector, so that tests can compare embeddings. */
export function deterministicEmbedding(text: string, dimensions: number): number[] {
  const values: number[] = [];
  let block = Buffer.alloc(0);
  for (let counter = 0; values.length < dimensions; counter += 1) {
    if (block.length === 0) block = createHash("sha256").update(`${counter}:${text}`).digest();
    values.push(block.readUInt16BE(0) / 32_768 - 1);
    block = block.subarray(2);
  }
  const norm = Math.sqrt(values.reduce((sum, value) => sum + value * value, 0)) || 1;
  return values.map((value) => value / norm);
}

function writeEvent(response: ServerResponse, payload: unknown): void {
  response.write(`data: ${JSON.stringify(payload)}\n\n`);
}

function sendJson(response: ServerResponse, status: number, payload: unknown): void {
  response.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(payload));
}

function sendError(response: ServerResponse, error: HttpError): void {
  sendJson(response, error.status, { error: { message: error.message, type: error.type, param: null, code: error.status } });
}

const maxBodyBytes = 32 * 1024 * 1024;

async function readJson(request: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > maxBodyBytes) throw new HttpError(413, "request body too large", "BadRequestError");
    chunks.push(chunk as Buffer);
  }
  try {
    const parsed: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
    return parsed as Record<string, unknown>;
  } catch {
    throw new HttpError(400, "the request body must be a JSON object", "BadRequestError");
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
