
import {
  createInternalChannel,
  createInternalClient,
  createServiceHost,
  type ServiceHost,
  type ServiceRuntime,
} from "@vlinders/service-runtime";
import { createAgentService, OrchestratorAgentServiceDefinition } from "./agent-service";
import { RelayInferenceServiceDefinition } from "./agents/chat-agent";
import type { OrchestratorConfig } from "./config";

/** Composes the orchestrator: a client of the inference-broker and the AgentService. */
export function createOrchestrator(config: OrchestratorConfig, runtime: ServiceRuntime): ServiceHost {
  const brokerChannel = createInternalChannel(config.INFERENCE_BROKER_ADDRESS);
  const inference = createInternalClient(RelayInferenceServiceDefinition, brokerChannel, {
    internalSecret: runtime.internalSecret,
    defaultDeadlineMs: config.MODEL_CALL_DEADLINE_MS,
  });
  const host = createServiceHost(runtime);
  host.add(OrchestratorAgentServiceDefinition, createAgentService({ inference }));
  host.onShutdown(() => brokerChannel.close());
  return host;
}
