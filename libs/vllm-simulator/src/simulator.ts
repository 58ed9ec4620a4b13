import { createHash, randomBytes, randomInt, randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { planChatCompletion, type ChatCompletionBody } from "./chat-plan";
import { ChatSequence, noSequenceFaults, type SequenceFaults, type SequenceHost } from "./chat-sequence";
import { SimulatedEngine } from "./engine";
import { HttpError, readJson, sendError, sendJson } from "./http";
import { metricsContentType, ModelMetrics, renderMetrics } from "./metrics";
import {
  defaultSimulatorOptions,
  defaultSlowFactor,
  simulatedFailureKinds,
  validateFaults,
  validateOptions,
  type SimulatedFailureKind,
  type SimulatedModel,
  type SimulatorFaults,
  type VllmSimulatorOptions,
} from "./options";
import { PrefixCache } from "./prefix-cache";
import { requestSeed, SeededRandom } from "./random";
import { TimerHeap } from "./timer-heap";
import { countTokens } from "./tokens";

export interface SimulatorStats {
  /** Chat completion requests received, valid or not. */
  requests: number;
  /** Chat completions whose client hung up before the end (while queued, generating or hung). */
  disconnects: number;
  /** Chat completions in progress: queued, generating, or hung by a fault. */
  activeStreams: number;
  /** Requests waiting for a sequence slot (`vllm:num_requests_waiting`, all models). */
  readonly queued: number;
  /** Requests generating (`vllm:num_requests_running`, all models). */
  readonly running: number;
}

/**
 * A simulated vLLM worker. It speaks vLLM's OpenAI-compatible HTTP API (chat completions, streamed
 * as server-sent events or not, models, embeddings, health and vLLM-named Prometheus metrics) and
 * echoes the last user message back word by word, or plays an agent when told to: tool calls
 * ("call NAME {json}"), answers, and several turns of them joined by " then ".
 * It runs no model, but behaves like a loaded GPU worker: latency with jitter that grows with load,
 * `maxNumSeqs` with a waiting queue, a prefix cache, and failures on demand.
 */
export class VllmSimulator {
  private server: Server | undefined;
  private options: VllmSimulatorOptions;
  private faults: SimulatorFaults = {};
  private seed: number;
  private ordinal = 0;
  private readonly disconnectListeners = new Set<() => void>();
  private readonly timers = new TimerHeap();
  private readonly engine: SimulatedEngine;
  private readonly prefixCache: PrefixCache;
  private readonly modelMetrics = new Map<string, ModelMetrics>();
  private readonly host: SequenceHost;
  readonly stats: SimulatorStats;

  constructor(options: Partial<VllmSimulatorOptions> = {}) {
    validateOptions(options);
    this.options = { ...defaultSimulatorOptions, ...options };
    this.seed = this.options.randomSeed ?? randomInt(2 ** 31);
    const engine = new SimulatedEngine(() => this.options);
    this.engine = engine;
    this.prefixCache = new PrefixCache(this.options.prefixCacheEntries);
    for (const model of this.options.models) this.metricsFor(model.id);
    this.stats = {
      requests: 0,
      disconnects: 0,
      activeStreams: 0,
      get queued() {
        return engine.waitingCount;
      },
      get running() {
        return engine.running;
      },
    };
    const currentOptions = () => this.options;
    this.host = {
      get options() {
        return currentOptions();
      },
      engine,
      timers: this.timers,
      prefixCache: this.prefixCache,
      sequenceEnded: (clientHungUp) => this.requestEnded(clientHungUp),
    };
  }

  /**
   * Changes options while running (tests and benchmarks); latency changes apply from the next
   * token. Setting `randomSeed` restarts the request numbering, so what follows is repeatable.
   * Throws a RangeError naming an option out of range.
   */
  configure(options: Partial<VllmSimulatorOptions>): void {
    validateOptions(options);
    this.options = { ...this.options, ...options };
    if ("randomSeed" in options) {
      this.seed = options.randomSeed ?? randomInt(2 ** 31);
      this.ordinal = 0;
    }
    for (const model of this.options.models) this.metricsFor(model.id);
    this.prefixCache.setCapacity(this.options.prefixCacheEntries);
    // A raised maxNumSeqs or KV capacity makes room for waiting requests now.
    this.engine.admitWaiting(performance.now());
  }

  /** Sets the failures to inject from now on, replacing the previous ones; `{}` turns them off. */
  injectFaults(faults: SimulatorFaults): void {
    validateFaults(faults);
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

  /** Starts the HTTP server (port 0 picks a free port) and answers its base URL and bound port. */
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

  /** Closes every connection (streams in progress end as client disconnects) and stops listening. */
  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    this.timers.clear();
  }

  private metricsFor(modelId: string): ModelMetrics {
    let metrics = this.modelMetrics.get(modelId);
    if (metrics === undefined) {
      metrics = new ModelMetrics(modelId);
      this.modelMetrics.set(modelId, metrics);
    }
    return metrics;
  }

  private requestEnded(clientHungUp: boolean): void {
    this.stats.activeStreams -= 1;
    if (!clientHungUp) return;
    this.stats.disconnects += 1;
    for (const listener of this.disconnectListeners) listener();
  }

  private async route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = (request.url ?? "/").split("?")[0];
    if (request.method === "GET" && path === "/health") {
      // vLLM answers 503 once its engine is dead.
      response.writeHead(this.options.healthy && this.faults.unhealthy !== true ? 200 : 503).end();
      return;
    }
    if (request.method === "GET" && path === "/metrics") {
      response.writeHead(200, { "content-type": metricsContentType }).end(renderMetrics(this.modelMetrics.values(), this.options.kvCacheCapacityTokens));
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
    if (path?.startsWith("/v1/") && this.options.apiKey !== undefined) {
      // As `vllm serve --api-key` does: every OpenAI route (GET /v1/models too) wants the key as a
      // bearer token; /health and /metrics do not.
      if (request.headers.authorization !== `Bearer ${this.options.apiKey}`) throw new HttpError(401, "Unauthorized", "AuthenticationError");
    }
    if (request.method === "POST" && path === "/v1/chat/completions") {
      this.stats.requests += 1;
      this.chatCompletions(response, await readJson(request));
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

  /** A failure kind for this request, or undefined; always one draw, so that jitter stays repeatable. */
  private drawFailure(random: SeededRandom): SimulatedFailureKind | undefined {
    const roll = random.next();
    if (roll >= (this.faults.failureRate ?? 0)) return undefined;
    const kinds = this.faults.kinds !== undefined && this.faults.kinds.length > 0 ? this.faults.kinds : simulatedFailureKinds;
    return kinds[Math.floor(random.next() * kinds.length)];
  }

  private chatCompletions(response: ServerResponse, body: ChatCompletionBody): void {
    const arrivedAt = performance.now();
    const model = this.resolveModel(body.model);
    const plan = planChatCompletion(body, model, this.options);
    if (this.faults.httpErrorStatus !== undefined) {
      throw new HttpError(this.faults.httpErrorStatus, "simulated worker failure", "InternalServerError");
    }
    const random = new SeededRandom(requestSeed(this.seed, this.ordinal));
    this.ordinal += 1;
    const failure = this.drawFailure(random);
    if (failure === "http_500") throw new HttpError(500, "simulated worker failure", "InternalServerError");
    if (failure === "http_429") throw new HttpError(429, "simulated rate limit: too many requests", "RateLimitError", { "retry-after": "1" });
    // The client may have gone while its body was read; a stream for nobody would never end.
    if (response.socket === null || response.socket.destroyed) return;

    this.stats.activeStreams += 1;
    if (failure === "hang" || failure === "hang_before_headers") {
      if (failure === "hang") {
        response.writeHead(200, { "content-type": plan.stream ? "text/event-stream; charset=utf-8" : "application/json" });
        response.flushHeaders();
      }
      response.on("close", () => this.requestEnded(true));
      return;
    }

    const faults: SequenceFaults = { ...noSequenceFaults };
    if (this.faults.midStreamErrorAfterTokens !== undefined) faults.errorAt = this.faults.midStreamErrorAfterTokens;
    if (this.faults.abortAfterTokens !== undefined) faults.abortAt = this.faults.abortAfterTokens;
    const somewhere = () => Math.floor(random.next() * plan.pieces.length);
    if (failure === "mid_stream_error") faults.errorAt = Math.min(faults.errorAt, somewhere());
    else if (failure === "disconnect") faults.disconnectAt = somewhere();
    else if (failure === "malformed_sse") faults.malformedAt = somewhere();
    else if (failure === "slow") faults.interTokenFactor = this.faults.slowFactor ?? defaultSlowFactor;

    const id = `chatcmpl-${randomBytes(16).toString("hex")}`;
    const created = Math.floor(Date.now() / 1000);
    const sequence = new ChatSequence(this.host, response, plan, this.metricsFor(model.id), random, faults, id, created, arrivedAt);
    response.on("close", () => sequence.responseClosed());
    sequence.start(arrivedAt);
  }
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
