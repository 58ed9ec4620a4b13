import { validateChatRequest } from "@vlinders/chat-validation";
import type { ChatEvent, ChatRequest, EmbedRequest, EmbedResponse } from "@vlinders/proto";
import { linkSignals, withRetryAfter, type Logger } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import type { BrokerMetrics } from "../broker-metrics";
import { responseCacheKey } from "../cache/cache-key";
import type { Worker } from "../pool/worker";
import type { WorkerPool } from "../pool/worker-pool";
import type { ModelEntry, ModelRegistry } from "../registry/model-registry";
import type { WorkerRouter } from "../routing/worker-router";
import { ChatChunkTranslator, toUsage, type ChatCompletionChunk, type OpenAiUsage } from "../upstream/chat-chunk-translator";
import { toChatCompletionBody } from "../upstream/openai-request";
import type { WorkerClient } from "../upstream/worker-client";
import { classifyFailure } from "./failure-classification";
import type { KeyVaultPort, QuotaKey, QuotaPort, ResponseCachePort, UsagePort } from "./ports";
import type { RetryBudget } from "./retry-budget";

export interface DispatcherDependencies {
  registry: ModelRegistry;
  pool: WorkerPool;
  router: WorkerRouter;
  workers: WorkerClient;
  metrics: BrokerMetrics;
  retryBudget: RetryBudget;
  logger: Logger;
  /** Attempts per request, the first included (failover before the first token). */
  maxAttempts: number;
  cache?: ResponseCachePort;
  quotas?: QuotaPort;
  vault?: KeyVaultPort;
  usage?: UsagePort;
}

/** Where a request stands, for the caller's metadata (a retry hint) and metrics. */
export interface DispatchContext {
  signal: AbortSignal;
  /** The RPC, for the requests metric: a Complete is dispatched as a stream too. Default "chat". */
  method?: "chat" | "complete";
}

interface EmbeddingsBody {
  data?: Array<{ index?: number; embedding?: number[] }>;
  usage?: OpenAiUsage;
}

/** When to come back after every worker of a model answered busy (vLLM sends no Retry-After). */
const busyRetryAfterMs = 1_000;

/** The model label of a request refused before its model was known (invalid, or an unknown model). */
const unresolvedModel = "(unresolved)";

/** Used for local workers in usage records: they belong to no remote provider. */
const selfHostedProvider = "self-hosted";

/**
 * Sends chat requests to workers: cache, quota, routing, failover before the first token, and the
 * accounting after. Streams events as they arrive; nothing is buffered but what the cache keeps.
 */
export class ChatDispatcher {
  constructor(private readonly deps: DispatcherDependencies) {}

  async *stream(request: ChatRequest, context: DispatchContext): AsyncGenerator<ChatEvent, void, undefined> {
    const receivedAt = performance.now();
    const { registry, metrics, cache } = this.deps;
    const method = context.method ?? "chat";
    let model: ModelEntry;
    try {
      validateChatRequest(request);
      model = registry.resolve(request.model);
    } catch (error: unknown) {
      // Counted too, under a model label that cannot grow with what callers send.
      metrics.requests.inc({ model: unresolvedModel, method, status: error instanceof ServerError ? Status[error.code] : "UNKNOWN" });
      throw error;
    }
    const cacheKey = cache ? responseCacheKey(request, model.id) : undefined;
    let status = "OK";
    try {
      if (cache && cacheKey !== undefined) {
        const cached = await cache.get(cacheKey, context.signal);
        metrics.cache.inc({ result: cached ? "hit" : "miss" });
        if (cached) {
          for (const event of cached) yield { ...event, model: model.id };
          return;
        }
      } else {
        metrics.cache.inc({ result: "bypass" });
      }
      yield* this.dispatch(request, model, context, receivedAt, cacheKey);
    } catch (error: unknown) {
      status = error instanceof ServerError ? Status[error.code] : context.signal.aborted ? "CANCELLED" : "UNKNOWN";
      throw error;
    } finally {
      if (status === "OK" && context.signal.aborted) status = "CANCELLED";
      metrics.requests.inc({ model: model.id, method, status });
      metrics.requestDuration.observe({ model: model.id, status }, (performance.now() - receivedAt) / 1000);
    }
  }

  private async *dispatch(
    request: ChatRequest,
    model: ModelEntry,
    context: DispatchContext,
    receivedAt: number,
    cacheKey: string | undefined,
  ): AsyncGenerator<ChatEvent, void, undefined> {
    const { pool, router, workers, metrics, retryBudget } = this.deps;
    const body = toChatCompletionBody(request, model.id, true);
    const estimatedTokens = estimateTokens(request);
    const tried = new Set<string>();
    const endRequest = retryBudget.startRequest();
    let releaseRetry: (() => void) | undefined;
    let lastFailure = "";
    /** Whether every worker tried so far answered busy (HTTP 429): then the model is busy, not down. */
    let allBusy = true;
    // The quota keys this request holds, across its attempts: a failover takes only the keys it does
    // not hold yet (another provider's), so one request counts once against its model's RPM.
    const held: QuotaKey[] = [];
    let accounted = false;
    const account = (worker: Worker, usage: { promptTokens: number; completionTokens: number } | undefined) => {
      accounted = true;
      this.account(model, worker, usage, held, estimatedTokens);
    };
    try {
      for (let attempt = 1; ; attempt += 1) {
        const worker = router.pick(model, pool.candidatesFor(model), request, tried);
        if (!worker) {
          if (tried.size > 0 && allBusy) {
            throw withRetryAfter(
              new ServerError(Status.RESOURCE_EXHAUSTED, `model "${model.id}": every worker is busy (last: ${lastFailure}); retry after ${busyRetryAfterMs} ms`),
              busyRetryAfterMs,
            );
          }
          throw new ServerError(
            Status.UNAVAILABLE,
            `model "${model.id}": no healthy worker is available${lastFailure ? ` (last failure: ${lastFailure})` : ""}`,
          );
        }
        tried.add(worker.id);
        await this.admitAttempt(held, model, worker, estimatedTokens, context);
        // The quota check may have waited on Redis: the worker may have been drained or removed.
        if (!pool.holds(worker) || !worker.routable) {
          allBusy = false;
          continue;
        }

        const lease = pool.lease(worker);
        metrics.workerInFlight.set({ worker: worker.id }, worker.inFlight);
        const upstream = linkSignals(context.signal, lease.signal);
        const translator = new ChatChunkTranslator(worker.id);
        const collected: ChatEvent[] | undefined = cacheKey === undefined ? undefined : [];
        let delivered = false;
        /** Content and tool-call deltas sent: about one token each, the count of a stream cut before its usage. */
        let deltasDelivered = 0;
        let settled = false;
        let lastSentAt = 0;
        const interTokenLatency = metrics.interTokenLatency.labels(model.id);
        try {
          const apiKey = await this.apiKeyFor(worker, context.signal);
          const dispatchedAt = performance.now();
          metrics.queueTime.observe({ model: model.id }, (dispatchedAt - receivedAt) / 1000);
          for await (const chunk of workers.streamJson(worker.endpoint, "/v1/chat/completions", body, upstream.signal, apiKey)) {
            const chunkAt = performance.now();
            for (const event of translator.translate(chunk as ChatCompletionChunk)) {
              event.model = model.id;
              collected?.push(event);
              yield event;
              const kind = event.event?.$case;
              if (kind === "contentDelta" || kind === "toolCallDelta") deltasDelivered += 1;
              const sentAt = performance.now();
              if (!delivered) {
                delivered = true;
                metrics.timeToFirstToken.observe({ model: model.id }, (sentAt - receivedAt) / 1000);
                metrics.addedLatency.observe({ model: model.id }, (dispatchedAt - receivedAt + (sentAt - chunkAt)) / 1000);
              } else {
                interTokenLatency.observe((sentAt - lastSentAt) / 1000);
              }
              lastSentAt = sentAt;
            }
          }
          if (!translator.sawFinish) throw new ServerError(Status.UNAVAILABLE, `worker ${worker.id} ended the stream without a finish reason`);
          const usage = translator.takeUsage();
          if (usage) {
            const usageEvent: ChatEvent = { event: { $case: "usage", value: usage }, model: model.id };
            collected?.push(usageEvent);
            yield usageEvent;
          }
          lease.release("success");
          settled = true;
          account(worker, usage);
          // The cache keeps only complete answers and never rejects; nobody waits for the write.
          if (collected && cacheKey !== undefined) void this.deps.cache?.set(cacheKey, collected);
          return;
        } catch (error: unknown) {
          const verdict = classifyFailure(error, context.signal, lease.signal);
          const message = error instanceof ServerError ? error.details : error instanceof Error ? error.message : String(error);
          lease.release(verdict.blameWorker ? "failure" : "neutral", message);
          if (lease.signal.aborted && !context.signal.aborted && delivered) {
            throw new ServerError(Status.UNAVAILABLE, `worker ${worker.id} was removed while streaming; the answer is incomplete`);
          }
          // Never after the first token: a retry would repeat text the client already has.
          if (delivered || !verdict.retryable || attempt >= this.deps.maxAttempts) throw error;
          releaseRetry?.();
          releaseRetry = retryBudget.tryRetry();
          if (!releaseRetry) throw error;
          lastFailure = message;
          if (verdict.reason !== "worker_busy") allBusy = false;
          metrics.failovers.inc({ model: model.id, reason: verdict.reason });
          this.deps.logger.info({ worker: worker.id, model: model.id, attempt, reason: message }, "failing over to another worker");
        } finally {
          upstream.dispose();
          lease.release("neutral");
          if (pool.holds(worker)) metrics.workerInFlight.set({ worker: worker.id }, worker.inFlight);
          // Cut short (an error, or the client left) after text: what the worker generated counts.
          // Its usage comes in the last chunk, which a cut stream never gets: then the prompt is
          // estimated and every delta sent counts as a token, rather than nothing.
          if (!settled && delivered) account(worker, translator.takeUsage() ?? { promptTokens: estimatePromptTokens(request), completionTokens: deltasDelivered });
        }
      }
    } finally {
      // No attempt produced anything: the request's estimate is given back.
      if (!accounted) this.deps.quotas?.commit(held, 0, estimatedTokens);
      releaseRetry?.();
      endRequest();
    }
  }

  /** Embeddings over /v1/embeddings, with the same routing and failover as chats. */
  async embed(request: EmbedRequest, context: DispatchContext): Promise<EmbedResponse> {
    const { registry, metrics } = this.deps;
    let model: ModelEntry;
    try {
      if (request.inputs.length === 0) throw new ServerError(Status.INVALID_ARGUMENT, "inputs: must not be empty");
      model = registry.resolve(request.model, "embedding");
    } catch (error: unknown) {
      metrics.requests.inc({ model: unresolvedModel, method: "embed", status: error instanceof ServerError ? Status[error.code] : "UNKNOWN" });
      throw error;
    }
    const receivedAt = performance.now();
    let status = "OK";
    try {
      return await this.dispatchEmbedding(request, model, context);
    } catch (error: unknown) {
      status = error instanceof ServerError ? Status[error.code] : context.signal.aborted ? "CANCELLED" : "UNKNOWN";
      throw error;
    } finally {
      metrics.requests.inc({ model: model.id, method: "embed", status });
      metrics.requestDuration.observe({ model: model.id, status }, (performance.now() - receivedAt) / 1000);
    }
  }

  /** Embeddings under the model's and provider's quotas, as chats are: their tokens count too. */
  private async dispatchEmbedding(request: EmbedRequest, model: ModelEntry, context: DispatchContext): Promise<EmbedResponse> {
    const { pool, router, workers, retryBudget } = this.deps;
    const estimatedTokens = request.inputs.reduce((sum, input) => sum + Math.ceil(input.length / 4), 0);
    const tried = new Set<string>();
    const endRequest = retryBudget.startRequest();
    let releaseRetry: (() => void) | undefined;
    // As for chats: the keys held across attempts, so a failover counts once against the model.
    const held: QuotaKey[] = [];
    let committed = false;
    let lastFailure = "";
    try {
      for (let attempt = 1; ; attempt += 1) {
        const worker = router.pick(model, pool.candidatesFor(model), { sessionId: "", messages: [] }, tried);
        if (!worker) {
          throw new ServerError(Status.UNAVAILABLE, `model "${model.id}": no healthy worker is available${lastFailure ? ` (last failure: ${lastFailure})` : ""}`);
        }
        tried.add(worker.id);
        await this.admitAttempt(held, model, worker, estimatedTokens, context);
        const lease = pool.lease(worker);
        this.deps.metrics.workerInFlight.set({ worker: worker.id }, worker.inFlight);
        const upstream = linkSignals(context.signal, lease.signal);
        try {
          const body = (await workers.postJson(
            worker.endpoint,
            "/v1/embeddings",
            { model: model.id, input: request.inputs, ...(request.userId ? { user: request.userId } : {}) },
            upstream.signal,
            await this.apiKeyFor(worker, context.signal),
          )) as EmbeddingsBody;
          const data = [...(body.data ?? [])].sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
          if (data.length !== request.inputs.length) {
            throw new ServerError(Status.INTERNAL, `worker ${worker.id} returned ${data.length} embeddings for ${request.inputs.length} inputs`);
          }
          lease.release("success");
          const usage = toUsage(body.usage ?? {});
          this.deps.metrics.tokens.inc({ model: model.id, kind: "prompt" }, usage.promptTokens);
          this.deps.quotas?.commit(held, usage.promptTokens, estimatedTokens);
          committed = true;
          this.deps.usage?.record({ provider: worker.endpoint.provider ?? selfHostedProvider, model: model.id, promptTokens: usage.promptTokens, completionTokens: 0 });
          return { model: model.id, embeddings: data.map((item) => ({ values: item.embedding ?? [] })), usage };
        } catch (error: unknown) {
          const verdict = classifyFailure(error, context.signal, lease.signal);
          const message = error instanceof ServerError ? error.details : error instanceof Error ? error.message : String(error);
          lease.release(verdict.blameWorker ? "failure" : "neutral", message);
          if (!verdict.retryable || attempt >= this.deps.maxAttempts) throw error;
          releaseRetry?.();
          releaseRetry = retryBudget.tryRetry();
          if (!releaseRetry) throw error;
          lastFailure = message;
          this.deps.metrics.failovers.inc({ model: model.id, reason: verdict.reason });
        } finally {
          upstream.dispose();
          if (pool.holds(worker)) this.deps.metrics.workerInFlight.set({ worker: worker.id }, worker.inFlight);
        }
      }
    } finally {
      // No attempt answered: the request's estimate is given back.
      if (!committed) this.deps.quotas?.commit(held, 0, estimatedTokens);
      releaseRetry?.();
      endRequest();
    }
  }

  private quotaKeys(model: ModelEntry, worker: Worker): QuotaKey[] {
    const keys: QuotaKey[] = [];
    if (model.quota) keys.push({ key: `model:${model.id}`, ...model.quota });
    const providerId = worker.endpoint.provider;
    const provider = providerId === undefined ? undefined : this.deps.registry.provider(providerId);
    if (provider && (provider.rpm !== undefined || provider.tpm !== undefined)) {
      keys.push({ key: `provider:${provider.id}`, ...(provider.rpm === undefined ? {} : { rpm: provider.rpm }), ...(provider.tpm === undefined ? {} : { tpm: provider.tpm }) });
    }
    return keys;
  }

  /** Admits an attempt on `worker` under the keys the request does not hold yet, and holds them. */
  private async admitAttempt(held: QuotaKey[], model: ModelEntry, worker: Worker, estimatedTokens: number, context: DispatchContext): Promise<void> {
    const fresh = this.quotaKeys(model, worker).filter((key) => !held.some((heldKey) => heldKey.key === key.key));
    await this.admit(fresh, estimatedTokens, context);
    held.push(...fresh);
  }

  private async admit(keys: QuotaKey[], estimatedTokens: number, context: DispatchContext): Promise<void> {
    if (keys.length === 0 || !this.deps.quotas) return;
    const decision = await this.deps.quotas.acquire(keys, estimatedTokens, context.signal);
    if (decision.allowed) return;
    // The hint rides on the error: the call pipeline puts it in the retry-after-ms trailer.
    throw withRetryAfter(
      new ServerError(
        Status.RESOURCE_EXHAUSTED,
        `quota exceeded: ${decision.key} is over its ${decision.limit === "rpm" ? "requests" : "tokens"} per minute; retry after ${Math.ceil(decision.retryAfterMs)} ms`,
      ),
      decision.retryAfterMs,
    );
  }

  private async apiKeyFor(worker: Worker, signal: AbortSignal): Promise<string | undefined> {
    const provider = worker.endpoint.provider;
    if (provider === undefined) return undefined;
    if (!this.deps.vault) {
      throw new ServerError(Status.FAILED_PRECONDITION, `worker ${worker.id} needs the key of provider "${provider}", but the key vault is not configured (VAULT_MASTER_KEY)`);
    }
    try {
      return await this.deps.vault.retrieve(provider, signal);
    } catch (error: unknown) {
      // The model exists; what is missing is the operator's key. NOT_FOUND would read as "no such model".
      if (error instanceof ServerError && error.code === Status.NOT_FOUND) {
        throw new ServerError(Status.FAILED_PRECONDITION, `worker ${worker.id} needs the key of provider "${provider}", and none is stored: use InferenceAdminService.StoreProviderKey`);
      }
      throw error;
    }
  }

  private account(model: ModelEntry, worker: Worker, usage: { promptTokens: number; completionTokens: number } | undefined, keys: QuotaKey[], estimatedTokens: number): void {
    const promptTokens = usage?.promptTokens ?? 0;
    const completionTokens = usage?.completionTokens ?? 0;
    this.deps.metrics.tokens.inc({ model: model.id, kind: "prompt" }, promptTokens);
    this.deps.metrics.tokens.inc({ model: model.id, kind: "completion" }, completionTokens);
    this.deps.quotas?.commit(keys, usage ? promptTokens + completionTokens : estimatedTokens, estimatedTokens);
    this.deps.usage?.record({ provider: worker.endpoint.provider ?? selfHostedProvider, model: model.id, promptTokens, completionTokens });
  }
}

/** A rough count before the real one is known: about four characters a token, plus the answer's budget. */
export function estimateTokens(request: ChatRequest): number {
  return estimatePromptTokens(request) + (request.sampling?.maxTokens ?? 512);
}

/** The prompt's tokens, roughly: about four characters a token. */
function estimatePromptTokens(request: ChatRequest): number {
  let characters = 0;
  for (const message of request.messages) characters += message.content.length;
  return Math.ceil(characters / 4);
}

