import { validateChatRequest } from "@vlinders/chat-validation";
import type { AgentServiceClient, ChatEvent, InferenceServiceClient, InferenceServiceImplementation } from "@vlinders/proto";

export interface GatewayInferenceDependencies {
  agents: AgentServiceClient;
  inference: InferenceServiceClient;
}

/**
 * The public InferenceService. A Chat runs the `chat` agent in the orchestrator (where agent
 * policy lives) and relays its model events as they arrive; the other methods need no agent and go
 * to the inference-broker directly. Requests are checked here first, so bad input fails at the door.
 */
export function createGatewayInferenceService(deps: GatewayInferenceDependencies): InferenceServiceImplementation {
  return {
    async *chat(request, context): AsyncGenerator<ChatEvent, void, undefined> {
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
        },
        { signal: context.signal },
      );
      for await (const agentEvent of events) {
        if (agentEvent.event?.$case === "modelEvent") yield agentEvent.event.value;
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
