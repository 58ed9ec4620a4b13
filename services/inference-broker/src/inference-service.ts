import { ChatEvent, InferenceServiceDefinition, withEncodedResponses } from "@vlinders/proto";
import type { ServiceImplementation } from "nice-grpc";
import { assembleChatResponse } from "./cache/replay";
import type { ChatDispatcher } from "./dispatch/chat-dispatcher";
import type { ModelRegistry } from "./registry/model-registry";
import type { WorkerPool } from "./pool/worker-pool";

export interface InferenceServiceDependencies {
  registry: ModelRegistry;
  pool: WorkerPool;
  dispatcher: ChatDispatcher;
}

/** Metadata key of the retry hint sent with RESOURCE_EXHAUSTED (also part of the message); the call pipeline sets it. */
export { retryAfterTrailer } from "@vlinders/service-runtime";

/**
 * InferenceService as the broker serves it: Chat events are encoded here, once, without the
 * generic server path's copy of each message (its fromPartial); the wire format is unchanged.
 */
export const BrokerInferenceServiceDefinition = withEncodedResponses(InferenceServiceDefinition, "chat");

/** InferenceService over the worker pool. */
export function createInferenceService(deps: InferenceServiceDependencies): ServiceImplementation<typeof BrokerInferenceServiceDefinition> {
  const { registry, pool, dispatcher } = deps;

  return {
    async *chat(request, context): AsyncGenerator<Uint8Array, void, undefined> {
      const events = dispatcher.stream(request, { signal: context.signal });
      for await (const event of events) yield ChatEvent.encode(event).finish();
    },

    // Streamed from the worker too: one path for caching, failover and accounting.
    async complete(request, context) {
      const events: ChatEvent[] = [];
      let model = "";
      for await (const event of dispatcher.stream(request, { signal: context.signal, method: "complete" })) {
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
