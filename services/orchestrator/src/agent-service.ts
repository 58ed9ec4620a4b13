import { randomUUID } from "node:crypto";
import { AgentServiceDefinition, withEncodedResponses } from "@vlinders/proto";
import type { ServiceImplementation } from "nice-grpc";
import { ServerError, Status } from "nice-grpc-common";
import { runChatAgent, type ChatAgentDependencies } from "./agents/chat-agent";

export type AgentServiceDependencies = ChatAgentDependencies;

/** AgentService with StreamAgent's events yielded encoded (same wire format). */
export const OrchestratorAgentServiceDefinition = withEncodedResponses(AgentServiceDefinition, "streamAgent");

/** Agent types of configs/agents.yaml whose loop is not built yet (the tool-calling loop issue). */
const plannedAgentTypes = new Set(["plan", "explore", "edit"]);

/**
 * AgentService. Only the `chat` agent runs so far, through StreamAgent; RunAgent, GetAgent and
 * CancelAgent need run records and answer UNIMPLEMENTED until they exist.
 */
export function createAgentService(deps: AgentServiceDependencies): ServiceImplementation<typeof OrchestratorAgentServiceDefinition> {
  return {
    async *streamAgent(request, context) {
      if (request.agentType === "") throw new ServerError(Status.INVALID_ARGUMENT, "agent_type: is required (e.g. \"chat\")");
      if (plannedAgentTypes.has(request.agentType)) {
        throw new ServerError(Status.UNIMPLEMENTED, `agent_type: "${request.agentType}" agents are not implemented yet; "chat" is`);
      }
      if (request.agentType !== "chat") {
        throw new ServerError(Status.INVALID_ARGUMENT, `agent_type: unknown agent type "${request.agentType}" (known: chat, plan, explore, edit)`);
      }
      yield* runChatAgent(request, randomUUID(), deps, context.signal);
    },

    async runAgent() {
      throw new ServerError(Status.UNIMPLEMENTED, "RunAgent is not implemented yet; use StreamAgent with agent_type \"chat\"");
    },

    async getAgent() {
      throw new ServerError(Status.UNIMPLEMENTED, "GetAgent is not implemented yet: runs are not recorded yet");
    },

    async cancelAgent() {
      throw new ServerError(Status.UNIMPLEMENTED, "CancelAgent is not implemented yet; cancel the StreamAgent call instead");
    },

    async listAgentTypes() {
      throw new ServerError(Status.UNIMPLEMENTED, "ListAgentTypes is not implemented yet");
    },

    async getAgentStats() {
      throw new ServerError(Status.UNIMPLEMENTED, "GetAgentStats is not implemented yet: runs are not recorded yet");
    },
  };
}
