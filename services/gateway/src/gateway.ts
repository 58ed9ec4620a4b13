import { InferenceServiceDefinition, ToolServiceDefinition } from "@vlinders/proto";
import {
  createInternalChannel,
  createInternalClient,
  createServiceHost,
  type ServiceHost,
  type ServiceRuntime,
} from "@vlinders/service-runtime";
import type { GatewayConfig } from "./config";
import { createGatewayAgentService, GatewayAgentServiceDefinition } from "./agent-service";
import { createGatewayInferenceService, GatewayInferenceServiceDefinition, RelayAgentServiceDefinition } from "./inference-service";
import { createGatewayToolService } from "./tool-service";

/** Composes the gateway: clients of the orchestrator, the broker and the tool-runner, and the public services. */
export function createGateway(config: GatewayConfig, runtime: ServiceRuntime): ServiceHost {
  const clientOptions = { internalSecret: runtime.internalSecret, defaultDeadlineMs: config.DOWNSTREAM_DEADLINE_MS };
  const orchestratorChannel = createInternalChannel(config.ORCHESTRATOR_ADDRESS);
  const brokerChannel = createInternalChannel(config.INFERENCE_BROKER_ADDRESS);
  const toolRunnerChannel = createInternalChannel(config.TOOL_RUNNER_ADDRESS);
  const agents = createInternalClient(RelayAgentServiceDefinition, orchestratorChannel, clientOptions);
  const host = createServiceHost(runtime);
  host.add(
    GatewayInferenceServiceDefinition,
    createGatewayInferenceService({ agents, inference: createInternalClient(InferenceServiceDefinition, brokerChannel, clientOptions) }),
  );
  // Agent runs get their own default deadline: a run is bounded by its agent type's timeout, which
  // may be longer than DOWNSTREAM_DEADLINE_MS (a caller's own deadline still applies).
  const agentRuns = createInternalClient(RelayAgentServiceDefinition, orchestratorChannel, { ...clientOptions, defaultDeadlineMs: config.AGENT_RUN_DEADLINE_MS });
  host.add(GatewayAgentServiceDefinition, createGatewayAgentService({ agents: agentRuns }));
  // Each tool's own timeout is enforced in the tool-runner; DOWNSTREAM_DEADLINE_MS only bounds calls that set no deadline.
  host.add(
    ToolServiceDefinition,
    createGatewayToolService({ tools: createInternalClient(ToolServiceDefinition, toolRunnerChannel, clientOptions) }),
  );
  host.onShutdown(() => {
    orchestratorChannel.close();
    brokerChannel.close();
    toolRunnerChannel.close();
  });
  return host;
}
