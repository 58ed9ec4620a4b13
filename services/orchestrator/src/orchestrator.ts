import { AgentServiceDefinition, InferenceServiceDefinition } from "@vlinders/proto";
import {
  createInternalChannel,
  createInternalClient,
  createServiceHost,
  type ServiceHost,
  type ServiceRuntime,
} from "@vlinders/service-runtime";
import { createAgentService } from "./agent-service";
import type { OrchestratorConfig } from "./config";

/** Composes the orchestrator: a client of the inference-broker and the AgentService. */
export function createOrchestrator(config: OrchestratorConfig, runtime: ServiceRuntime): ServiceHost {
  const brokerChannel = createInternalChannel(config.INFERENCE_BROKER_ADDRESS);
  const inference = createInternalClient(InferenceServiceDefinition, brokerChannel, {
    internalSecret: runtime.internalSecret,
    defaultDeadlineMs: config.MODEL_CALL_DEADLINE_MS,
  });
  const host = createServiceHost(runtime);
  host.add(AgentServiceDefinition, createAgentService({ inference }));
  host.onShutdown(() => brokerChannel.close());
  return host;
}
