import type { Client, ServiceImplementation } from "nice-grpc";
import { RelayAgentServiceDefinition } from "./inference-service";

/** The public AgentService: StreamAgent's events go out as the orchestrator encoded them. */
export const GatewayAgentServiceDefinition = RelayAgentServiceDefinition;

export interface GatewayAgentDependencies {
  /** The orchestrator, with StreamAgent events left encoded. */
  agents: Client<typeof RelayAgentServiceDefinition>;
}

/**
 * The public AgentService. Every call goes to the orchestrator with the caller's signal, so a
 * cancel or a deadline at the door stops the run's model call and tools. The orchestrator checks
 * requests (it owns the agent types); a run's events are relayed without being decoded.
 */
export function createGatewayAgentService(deps: GatewayAgentDependencies): ServiceImplementation<typeof GatewayAgentServiceDefinition> {
  const { agents } = deps;
  return {
    async *streamAgent(request, context) {
      yield* agents.streamAgent(request, { signal: context.signal });
    },
    runAgent: (request, context) => agents.runAgent(request, { signal: context.signal }),
    getAgent: (request, context) => agents.getAgent(request, { signal: context.signal }),
    cancelAgent: (request, context) => agents.cancelAgent(request, { signal: context.signal }),
    listAgentTypes: (request, context) => agents.listAgentTypes(request, { signal: context.signal }),
    getAgentStats: (request, context) => agents.getAgentStats(request, { signal: context.signal }),
  };
}
