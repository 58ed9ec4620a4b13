import type { ChatEvent, InferenceServiceImplementation } from "@vlinders/proto";
import { assembleChatResponse } from "./cache/replay";
import type { ChatDispatcher } from "./dispatch/chat-dispatcher";
import type { ModelRegistry } from "./registry/model-registry";
import type { WorkerPool } from "./pool/worker-pool";

export interface InferenceServiceDependencies {
  registry: ModelRegistry;
  pool: WorkerPool;
  dispatcher: ChatDispatcher;
}

/** Metadata key of the retry hint sent with RESOURCE_EXHAUSTED (also part of the message). */
export const retryAfterTrailer = "retry-after-ms";

/** InferenceService over the worker pool. */
export function createInferenceService(deps: InferenceServiceDependencies): InferenceServiceImplementation {
  const { registry, pool, dispatcher } = deps;

  return {
    async *chat(request, context): AsyncGenerator<ChatEvent, void, undefined> {
      yield* dispatcher.stream(request, {
        signal: context.signal,
        onRetryAfter: (milliseconds) => context.trailer.set(retryAfterTrailer, String(Math.ceil(milliseconds))),
      });
    },

    // Streamed from the worker too: one path for caching, failover and accounting.
    async complete(request, context) {
      const events: ChatEvent[] = [];
      let model = "";
      for await (const event of dispatcher.stream(request, {
        signal: context.signal,
        onRetryAfter: (milliseconds) => context.trailer.set(retryAfterTrailer, String(Math.ceil(milliseconds))),
      })) {
        model = event.model;
        events.push(event);
      }
      return assembleChatResponse(events, model);
    },

    async embed(request, context) {
      return dispatcher.embed(request, { signal: context.signal });
    },

    async listModels() {
      return {
        models: registry.list().map((model) => ({
          id: model.id,
          aliases: model.aliases,
          maxContextTokens: model.maxContextTokens,
          workerCount: pool.candidatesFor(model).length,
        })),
      };
    },
  };
}
