import { InferenceServiceDefinition } from "@vlinders/proto";
import {
  createInternalChannel,
  createInternalClient,
  createServiceHost,
  type ServiceHost,
  type ServiceRuntime,
} from "@vlinders/service-runtime";
import type { GatewayConfig } from "./config";
import { createGatewayInferenceService, GatewayInferenceServiceDefinition, RelayAgentServiceDefinition } from "./inference-service";

/** Composes the gateway: clients of the orchestrator and the broker, and the public services. */
export function createGateway(config: GatewayConfig, runtime: ServiceRuntime): ServiceHost {
  const clientOptions = { internalSecret: runtime.internalSecret, defaultDeadlineMs: config.DOWNSTREAM_DEADLINE_MS };
  const orchestratorChannel = createInternalChannel(config.ORCHESTRATOR_ADDRESS);
  const brokerChannel = createInternalChannel(config.INFERENCE_BROKER_ADDRESS);
  const host = createServiceHost(runtime);
  host.add(
    GatewayInferenceServiceDefinition,
    createGatewayInferenceService({
      agents: createInternalClient(RelayAgentServiceDefinition, orchestratorChannel, clientOptions),
      inference: createInternalClient(InferenceServiceDefinition, brokerChannel, clientOptions),
    }),
  );
  host.onShutdown(() => {
    orchestratorChannel.close();
    brokerChannel.close();
  });
  return host;
}
