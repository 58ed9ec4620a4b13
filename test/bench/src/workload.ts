import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { spawnService, startMesh, type Mesh, type MeshProcess } from "@vlinders/mesh-launcher";
import { createGrpcPath, type ChatPath } from "./chat-streams";
import { startQuietMesh } from "./quiet-mesh";

/** A simulator process and the mesh in front of it, all on loopback with ports picked by the OS. */
export interface Workload {
  label: string;
  simulatorUrl: string;
  model: string;
  brokerAddress: string;
  gatewayAddress: string;
  /** The processes by role: simulator, inference-broker, orchestrator, gateway. */
  processes: ReadonlyArray<{ name: string; pid: number }>;
  log: ServiceLog;
  stop(): Promise<void>;
}

export interface WorkloadOptions {
  label: string;
  rootDir: string;
  secret: string;
  /** LOG_LEVEL of the services: every log line costs CPU, so benchmarks run them at warn. */
  logLevel: string;
  model: string;
  timeToFirstTokenMs: number;
  interTokenLatencyMs: number;
  /** The simulator's max_num_seqs: large, so that no request waits for a slot. */
  maxNumSeqs: number;
  /** Node.js flags of the gRPC services only (e.g. --cpu-prof); the simulator never gets them. */
  serviceNodeArgs?: readonly string[];
  signal: AbortSignal;
}

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

/** The services run in their own process groups: if this process dies, nothing else stops them. */
function track(child: ChildProcess): void {
  liveChildren.add(child);
  child.once("exit", () => liveChildren.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const alive of liveChildren) alive.kill("SIGKILL");
  });
}

/** Counts the warnings and errors the services log, and keeps the first few of each for the report. */
export class ServiceLog {
  readonly counts = new Map<string, number>();
  readonly kept: string[] = [];
  private printed = 0;

  onLine = (name: string, line: string, stream: "stdout" | "stderr"): void => {
    let level = stream === "stderr" ? "stderr" : "info";
    if (line.startsWith("{")) {
      try {
        const parsed = JSON.parse(line) as { level?: unknown };
        if (typeof parsed.level === "string") level = parsed.level;
      } catch {
        // Not JSON: keep the stream's level.
      }
    }
    if (level === "info" || level === "debug" || level === "trace") return;
    const key = `${name} ${level}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    if (this.kept.length < 40) this.kept.push(`[${name}] ${line.slice(0, 400)}`);
    if (this.printed < 20) {
      this.printed += 1;
      process.stderr.write(`  [${name}] ${line.slice(0, 300)}\n`);
    }
  };
}

function portOf(processes: readonly MeshProcess[], name: string): number {
  const port = processes.find((candidate) => candidate.name === name)?.listening.grpc_port;
  if (typeof port !== "number") throw new Error(`${name} logged no grpc_port`);
  return port;
}

export async function startWorkload(options: WorkloadOptions): Promise<Workload> {
  const log = new ServiceLog();
  const simulator = await spawnService({
    name: "vllm-simulator",
    script: join(options.rootDir, "libs/vllm-simulator/dist/main.js"),
    cwd: options.rootDir,
    env: {
      ...process.env,
      NODE_OPTIONS: "",
      SIM_PORT: "0",
      SIM_MODELS: options.model,
      SIM_TTFT_MS: String(options.timeToFirstTokenMs),
      SIM_ITL_MS: String(options.interTokenLatencyMs),
      SIM_MAX_NUM_SEQS: String(options.maxNumSeqs),
      // Room for every sequence in the simulated KV cache, and no jitter or slow-down under load:
      // the worker's pace is the constant the paths are compared against.
      SIM_KV_CACHE_TOKENS: String(Math.max(1_048_576, options.maxNumSeqs * 1_024)),
      SIM_JITTER: "0",
      SIM_LOAD_LATENCY_FACTOR: "0",
      SIM_FAILURE_RATE: "0",
    },
    readyTimeoutMs: 30_000,
    onLine: log.onLine,
  });
  track(simulator.child);
  const simulatorUrl = String(simulator.listening.url);

  // The launcher waits for each service's `listening` line, which is logged at info: above that
  // level (and to pass Node.js flags) the services are started here instead (see quiet-mesh.ts).
  const launcherCanSeeThem = ["trace", "debug", "info"].includes(options.logLevel) && options.serviceNodeArgs === undefined;
  const serviceEnv: NodeJS.ProcessEnv = {
    ...process.env,
    INTERNAL_SECRET: options.secret,
    LOG_LEVEL: options.logLevel,
    GRPC_HOST: "127.0.0.1",
    DEFAULT_MODEL: options.model,
    NODE_OPTIONS: "",
  };
  let mesh: { brokerAddress: string; gatewayAddress: string; processes: ReadonlyArray<{ name: string; child: ChildProcess }>; stop(): Promise<void> };
  let exitedEarly: () => string | undefined = () => undefined;
  try {
    if (launcherCanSeeThem) {
      const launched: Mesh = await startMesh({
        rootDir: options.rootDir,
        grpcPorts: { gateway: 0, orchestrator: 0, inferenceBroker: 0, toolRunner: 0, context: 0 },
        metricsPorts: { gateway: 0, orchestrator: 0, inferenceBroker: 0, toolRunner: 0, context: 0 },
        workers: { kind: "vllm-urls", urls: simulatorUrl },
        env: serviceEnv,
        onLine: log.onLine,
        readyTimeoutMs: 60_000,
      });
      mesh = { ...launched, brokerAddress: `127.0.0.1:${portOf(launched.processes, "inference-broker")}` };
    } else {
      const quiet = await startQuietMesh({
        rootDir: options.rootDir,
        simulatorUrl,
        env: serviceEnv,
        onLine: log.onLine,
        ...(options.serviceNodeArgs === undefined ? {} : { nodeArgs: options.serviceNodeArgs }),
      });
      exitedEarly = quiet.exitedEarly;
      mesh = quiet;
    }
  } catch (error: unknown) {
    await simulator.stop();
    throw error;
  }
  for (const started of mesh.processes) track(started.child);

  const workload: Workload = {
    label: options.label,
    simulatorUrl,
    model: options.model,
    brokerAddress: mesh.brokerAddress,
    gatewayAddress: mesh.gatewayAddress,
    processes: [simulator, ...mesh.processes].map((started) => ({ name: started.name, pid: started.child.pid ?? -1 })),
    log,
    async stop() {
      await mesh.stop();
      await simulator.stop();
    },
  };
  try {
    await waitUntilServing(workload, options.secret, options.signal, exitedEarly);
  } catch (error: unknown) {
    await workload.stop();
    throw error;
  }
  return workload;
}

/**
 * The broker discovers the worker's models after it starts listening: a Chat through each gRPC
 * door must succeed before any timing starts.
 */
async function waitUntilServing(workload: Workload, secret: string, signal: AbortSignal, exitedEarly: () => string | undefined): Promise<void> {
  const paths: ChatPath[] = [
    createGrpcPath({ name: "broker", address: workload.brokerAddress, secret, model: workload.model, channels: 1 }),
    createGrpcPath({ name: "mesh", address: workload.gatewayAddress, secret, model: workload.model, channels: 1 }),
  ];
  const giveUpAt = performance.now() + 60_000;
  try {
    for (const path of paths) {
      for (;;) {
        if (signal.aborted) throw new Error("benchmark stopped");
        const exited = exitedEarly();
        if (exited !== undefined) throw new Error(exited);
        const outcome = await path.run("ready", AbortSignal.any([signal, AbortSignal.timeout(10_000)]), { onToken() {} });
        if (outcome.error === undefined && outcome.tokens === 1) break;
        if (performance.now() > giveUpAt) throw new Error(`the ${path.name} path never answered a Chat: ${outcome.error ?? `${outcome.tokens} tokens`}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  } finally {
    for (const path of paths) path.close();
  }
}
