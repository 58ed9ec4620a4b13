import { brokerConfigSchema, createInferenceBroker } from "@vlinders/inference-broker";
import { createGateway, gatewayConfigSchema } from "@vlinders/gateway";
import { createOrchestrator, orchestratorConfigSchema } from "@vlinders/orchestrator";
import { createInProcessRuntime, loadConfig, type ServiceHost } from "@vlinders/service-runtime";
import { VllmSimulator, type VllmSimulatorOptions } from "@vlinders/vllm-simulator";

export const meshSecret = "in-process-mesh-secret-0123";

export interface InProcessMesh {
  simulator: VllmSimulator;
  gatewayAddress: string;
  orchestratorAddress: string;
  brokerAddress: string;
  stop(): Promise<void>;
}

/**
 * The whole request path in one process, each service on its own real gRPC server on port 0:
 * simulator <- inference-broker <- orchestrator <- gateway.
 */
export async function startInProcessMesh(
  options: { simulator?: Partial<VllmSimulatorOptions>; brokerEnv?: NodeJS.ProcessEnv; orchestratorEnv?: NodeJS.ProcessEnv } = {},
): Promise<InProcessMesh> {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 5, interTokenLatencyMs: 2, ...options.simulator });
  const hosts: ServiceHost[] = [];
  const listen = async (host: ServiceHost) => {
    hosts.push(host);
    const { grpcPort } = await host.listen({ host: "127.0.0.1", grpcPort: 0 });
    return `127.0.0.1:${grpcPort}`;
  };
  const common = { INTERNAL_SECRET: meshSecret };
  // The machine's PostgreSQL: the embedded PGlite would add seconds to every broker and orchestrator start.
  const database = { DATABASE_URL: process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test" };
  try {
    const { url } = await simulator.listen(0);
    const broker = await createInferenceBroker(
      loadConfig(brokerConfigSchema, { ...common, ...database, VLLM_URLS: url, ...options.brokerEnv }),
      createInProcessRuntime("inference-broker", { internalSecret: meshSecret }),
    );
    const brokerAddress = await listen(broker.host);
    const orchestrator = await createOrchestrator(
      loadConfig(orchestratorConfigSchema, { ...common, ...database, INFERENCE_BROKER_ADDRESS: brokerAddress, ...options.orchestratorEnv }),
      createInProcessRuntime("orchestrator", { internalSecret: meshSecret }),
    );
    const orchestratorAddress = await listen(orchestrator.host);
    const gatewayAddress = await listen(
      createGateway(
        loadConfig(gatewayConfigSchema, { ...common, ORCHESTRATOR_ADDRESS: orchestratorAddress, INFERENCE_BROKER_ADDRESS: brokerAddress }),
        createInProcessRuntime("gateway", { internalSecret: meshSecret }),
      ),
    );
    const stop = async () => {
      for (const host of [...hosts].reverse()) await host.shutdown();
      await simulator.close();
    };
    return { simulator, gatewayAddress, orchestratorAddress, brokerAddress, stop };
  } catch (error: unknown) {
    for (const host of [...hosts].reverse()) await host.shutdown();
    await simulator.close();
    throw error;
  }
}

