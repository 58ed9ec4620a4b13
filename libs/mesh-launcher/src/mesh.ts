import { join } from "node:path";
import { spawnService, type MeshProcess } from "./mesh-process";

export interface MeshOptions {
  /** The repository root (where services/ and configs/ are). */
  rootDir: string;
  /** gRPC ports; 0 picks free ports. */
  grpcPorts: { gateway: number; orchestrator: number; inferenceBroker: number; toolRunner: number; context: number };
  /** Metrics ports; 0 picks free ports. */
  metricsPorts: { gateway: number; orchestrator: number; inferenceBroker: number; toolRunner: number; context: number };
  /**
   * Where the broker's workers come from: real workers (VLLM_URLS or a models file), or a vLLM
   * simulator started here, either on a port that the models file names or on a free port that
   * the broker then discovers.
   */
  workers:
    | { kind: "vllm-urls"; urls: string }
    | { kind: "models-config"; path: string }
    | { kind: "simulator"; port: number; modelsConfig?: string; timeToFirstTokenMs?: number; interTokenLatencyMs?: number };
  /** Passed to every service (INTERNAL_SECRET, LOG_LEVEL, VLINDERS_ENV…). */
  env: NodeJS.ProcessEnv;
  onLine?: (name: string, line: string, stream: "stdout" | "stderr") => void;
  readyTimeoutMs?: number;
}

export interface Mesh {
  /** host:port of the gateway, the mesh's only door. */
  gatewayAddress: string;
  /** Base URL of the simulator, when the mesh runs one. */
  simulatorUrl?: string;
  processes: readonly MeshProcess[];
  /** Stops the services from the door inwards, so that nothing is cut off mid-call. */
  stop(): Promise<void>;
}

function port(process: MeshProcess, field: string): number {
  const value = process.listening[field];
  if (typeof value !== "number") throw new Error(`${process.name} logged no ${field}`);
  return value;
}

/** Starts simulator (when asked), inference-broker, tool-runner, context, orchestrator and gateway as separate processes. */
export async function startMesh(options: MeshOptions): Promise<Mesh> {
  const started: MeshProcess[] = [];
  const readyTimeoutMs = options.readyTimeoutMs ?? 30_000;
  const stop = async () => {
    for (const process of [...started].reverse()) await process.stop();
  };
  const spawn = async (name: string, script: string, env: NodeJS.ProcessEnv) => {
    const process = await spawnService({
      name,
      script: join(options.rootDir, script),
      cwd: options.rootDir,
      env: { ...options.env, ...env },
      readyTimeoutMs,
      ...(options.onLine ? { onLine: options.onLine } : {}),
    });
    started.push(process);
    return process;
  };

  try {
    let brokerWorkers: NodeJS.ProcessEnv;
    let simulatorUrl: string | undefined;
    const workers = options.workers;
    if (workers.kind === "simulator") {
      const simulator = await spawn("vllm-simulator", "libs/vllm-simulator/dist/main.js", {
        SIM_PORT: String(workers.port),
        ...(workers.timeToFirstTokenMs === undefined ? {} : { SIM_TTFT_MS: String(workers.timeToFirstTokenMs) }),
        ...(workers.interTokenLatencyMs === undefined ? {} : { SIM_ITL_MS: String(workers.interTokenLatencyMs) }),
      });
      simulatorUrl = String(simulator.listening.url);
      brokerWorkers = workers.modelsConfig ? { MODELS_CONFIG: workers.modelsConfig, VLLM_URLS: "" } : { VLLM_URLS: simulatorUrl };
    } else if (workers.kind === "vllm-urls") {
      brokerWorkers = { VLLM_URLS: workers.urls };
    } else {
      brokerWorkers = { MODELS_CONFIG: workers.path, VLLM_URLS: "" };
    }

    const broker = await spawn("inference-broker", "services/inference-broker/dist/main.js", {
      ...brokerWorkers,
      GRPC_PORT: String(options.grpcPorts.inferenceBroker),
      METRICS_PORT: String(options.metricsPorts.inferenceBroker),
    });
    const brokerAddress = `127.0.0.1:${port(broker, "grpc_port")}`;
    const toolRunner = await spawn("tool-runner", "services/tool-runner/dist/main.js", {
      GRPC_PORT: String(options.grpcPorts.toolRunner),
      METRICS_PORT: String(options.metricsPorts.toolRunner),
    });
    const toolRunnerAddress = `127.0.0.1:${port(toolRunner, "grpc_port")}`;
    const context = await spawn("context", "services/context/dist/main.js", {
      GRPC_PORT: String(options.grpcPorts.context),
      METRICS_PORT: String(options.metricsPorts.context),
      INFERENCE_BROKER_ADDRESS: brokerAddress,
    });
    const orchestrator = await spawn("orchestrator", "services/orchestrator/dist/main.js", {
      GRPC_PORT: String(options.grpcPorts.orchestrator),
      METRICS_PORT: String(options.metricsPorts.orchestrator),
      INFERENCE_BROKER_ADDRESS: brokerAddress,
      TOOL_RUNNER_ADDRESS: toolRunnerAddress,
      // Each run's conversation lives in the context service, which compacts it before it overflows.
      CONTEXT_ADDRESS: `127.0.0.1:${port(context, "grpc_port")}`,
    });
    const gateway = await spawn("gateway", "services/gateway/dist/main.js", {
      GRPC_PORT: String(options.grpcPorts.gateway),
      METRICS_PORT: String(options.metricsPorts.gateway),
      ORCHESTRATOR_ADDRESS: `127.0.0.1:${port(orchestrator, "grpc_port")}`,
      INFERENCE_BROKER_ADDRESS: brokerAddress,
      TOOL_RUNNER_ADDRESS: toolRunnerAddress,
    });
    return {
      gatewayAddress: `127.0.0.1:${port(gateway, "grpc_port")}`,
      ...(simulatorUrl === undefined ? {} : { simulatorUrl }),
      processes: started,
      stop,
    };
  } catch (error: unknown) {
    await stop();
    throw error;
  }
}
