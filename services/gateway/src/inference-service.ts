import { validateChatRequest } from "@vlinders/chat-validation";
import {
  AgentServiceDefinition,
  InferenceServiceDefinition,
  modelEventOf,
  withEncodedResponses,
  type InferenceServiceClient,
} from "@vlinders/proto";
import type { Client, ServiceImplementation } from "nice-grpc";

/** The orchestrator's AgentService with StreamAgent events left encoded. */
export const RelayAgentServiceDefinition = withEncodedResponses(AgentServiceDefinition, "streamAgent");

/** The public InferenceService with Chat events sent as the relay received them (same wire format). */
export const GatewayInferenceServiceDefinition = withEncodedResponses(InferenceServiceDefinition, "chat");

export interface GatewayInferenceDependencies {
  agents: Client<typeof RelayAgentServiceDefinition>;
  inference: InferenceServiceClient;
}

/**
 * The public InferenceService. A Chat runs the `chat` agent in the orchestrator (where agent
 * policy lives) and relays its model events as they arrive; the other methods need no agent and go
 * to the inference-broker directly. Requests are checked here first, so bad input fails at the door.
 * The model's events are cut out of the agent's encoded events and passed on without decoding.
 */
export function createGatewayInferenceService(deps: GatewayInferenceDependencies): ServiceImplementation<typeof GatewayInferenceServiceDefinition> {
  return {
    async *chat(request, context): AsyncGenerator<Uint8Array, void, undefined> {
      validateChatRequest(request);
      const events = deps.agents.streamAgent(
        {
          agentType: "chat",
          instruction: "",
          workspaceId: "",
          model: request.model,
          history: request.messages,
          tools: request.tools,
          sampling: request.sampling,
          userId: request.userId,
          sessionId: request.sessionId,
          overrides: undefined,
          bypassCache: request.bypassCache,
        },
        { signal: context.signal },
      );
      for await (const agentEvent of events) {
        const chatEvent = modelEventOf(agentEvent);
        if (chatEvent) yield chatEvent;
      }
    },

    async complete(request, context) {
      validateChatRequest(request);
      return deps.inference.complete(request, { signal: context.signal });
    },

    async embed(request, context) {
      return deps.inference.embed(request, { signal: context.signal });
    },

    async listModels(request, context) {
      return deps.inference.listModels(request, { signal: context.signal });
    },
  };
}
