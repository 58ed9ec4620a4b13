#!/usr/bin/env node
import { resolve } from "node:path";
import { developmentInternalSecret } from "@vlinders/service-runtime";
import { formatLogLine } from "./log-format";
import { startMesh, type MeshOptions } from "./mesh";

/**
 * `npm start`: the whole mesh on this machine, each service its own process, logs prefixed by
 * service. Workers: VLLM_URLS or MODELS_CONFIG when set, otherwise the vLLM simulator on
 * 127.0.0.1:8000, which configs/models.yaml names. Ctrl-C stops everything cleanly.
 */
const rootDir = resolve(__dirname, "../../..");

function portFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0 || value > 65535) {
    process.stderr.write(`fatal: invalid configuration: ${name}: must be a port number (got ${JSON.stringify(raw)})\n`);
    process.exit(78);
  }
  return value;
}

function workersFromEnv(): MeshOptions["workers"] {
  if (process.env.VLLM_URLS) return { kind: "vllm-urls", urls: process.env.VLLM_URLS };
  if (process.env.MODELS_CONFIG) return { kind: "models-config", path: process.env.MODELS_CONFIG };
  return { kind: "simulator", port: 8000, modelsConfig: "configs/models.yaml" };
}

async function main(): Promise<void> {
  const names = ["vllm-simulator", "inference-broker", "tool-runner", "context", "orchestrator", "gateway"];
  const width = Math.max(...names.map((name) => name.length));
  const colour = process.stdout.isTTY === true && !process.env.NO_COLOR;
  const gatewayPort = portFromEnv("GATEWAY_PORT", 50051);
  const { GRPC_PORT: _grpcPort, METRICS_PORT: _metricsPort, ...inheritedEnv } = process.env;
  // A laptop's mesh is for this machine: listen on loopback unless told otherwise (GRPC_HOST).
  inheritedEnv.GRPC_HOST ??= "127.0.0.1";
  const mesh = await startMesh({
    rootDir,
    grpcPorts: {
      gateway: gatewayPort,
      orchestrator: portFromEnv("ORCHESTRATOR_PORT", 50052),
      inferenceBroker: portFromEnv("INFERENCE_BROKER_PORT", 50053),
      toolRunner: portFromEnv("TOOL_RUNNER_PORT", 50054),
      context: portFromEnv("CONTEXT_PORT", 50055),
    },
    metricsPorts: { gateway: 9091, orchestrator: 9092, inferenceBroker: 9093, toolRunner: 9094, context: 9095 },
    workers: workersFromEnv(),
    env: inheritedEnv,
    onLine: (name, line) => {
      process.stdout.write(`${formatLogLine(name, line, { colour, width, serviceIndex: names.indexOf(name) })}\n`);
    },
  });

  // Never print a real secret: the terminal may be shared or recorded.
  const secret = process.env.INTERNAL_SECRET ? "$INTERNAL_SECRET" : developmentInternalSecret;
  process.stdout.write(
    [
      "",
      `Vlinders mesh is up. The gateway listens on localhost:${gatewayPort} (metrics: http://localhost:9091/metrics).`,
      mesh.simulatorUrl ? `Workers: the vLLM simulator at ${mesh.simulatorUrl} (set VLLM_URLS for real vLLM workers).` : "",
      "Try:",
      `  grpcurl -plaintext -H "x-internal-auth: ${secret}" localhost:${gatewayPort} list`,
      `  grpcurl -plaintext -H "x-internal-auth: ${secret}" -d '{"messages":[{"role":"user","content":"hello from the mesh"}]}' localhost:${gatewayPort} vlinders.v1.InferenceService/Chat`,
      "Ctrl-C stops every service.",
      "",
    ]
      .filter((line, index, lines) => line !== "" || index === 0 || index === lines.length - 1)
      .join("\n") + "\n",
  );

  let stopping = false;
  const stop = (code: number) => {
    if (stopping) return;
    stopping = true;
    process.stdout.write("stopping the mesh…\n");
    mesh.stop().then(
      () => process.exit(code),
      (error: unknown) => {
        process.stderr.write(`failed to stop cleanly: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", () => stop(0));
  process.on("SIGTERM", () => stop(0));
  // A closed terminal sends SIGHUP: the services must not outlive it.
  process.on("SIGHUP", () => stop(0));
  for (const child of mesh.processes) {
    child.child.once("exit", (code) => {
      if (stopping) return;
      process.stderr.write(`${child.name} exited unexpectedly (code ${String(code)}); stopping the mesh\n`);
      stop(1);
    });
  }
  // Should the launcher itself die, its services must not outlive it.
  process.on("exit", () => {
    for (const child of mesh.processes) if (child.child.exitCode === null) child.child.kill("SIGKILL");
  });
}

main().catch((error: unknown) => {
  process.stderr.write(`fatal: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
