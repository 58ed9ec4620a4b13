import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";

/**
 * The mesh's three gRPC services as separate processes, for log levels above `info` and for
 * Node.js flags such as --cpu-prof.
 *
 * Why not `startMesh`: the launcher knows a service is up from its `listening` log line, which is
 * logged at info, so with LOG_LEVEL=warn it waits forever. Here the ports are picked before the
 * start (bind port 0, read it, close) and the caller knows the mesh is up when a Chat goes through
 * (see waitUntilServing). Same scripts, same environment variables, same stop order as the launcher.
 */
export interface QuietMesh {
  brokerAddress: string;
  gatewayAddress: string;
  processes: ReadonlyArray<{ name: string; child: ChildProcess }>;
  /** The output of a service that exited early, for the error message. */
  exitedEarly(): string | undefined;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function startQuietMesh(options: {
  rootDir: string;
  simulatorUrl: string;
  env: NodeJS.ProcessEnv;
  /** Node.js flags for every service, e.g. --cpu-prof (which NODE_OPTIONS may not carry). */
  nodeArgs?: readonly string[];
  onLine: (name: string, line: string, stream: "stdout" | "stderr") => void;
}): Promise<QuietMesh> {
  const [brokerPort, orchestratorPort, gatewayPort] = [await freePort(), await freePort(), await freePort()];
  const brokerAddress = `127.0.0.1:${brokerPort}`;
  const services = [
    { name: "inference-broker", script: "services/inference-broker/dist/main.js", env: { GRPC_PORT: String(brokerPort), VLLM_URLS: options.simulatorUrl } },
    { name: "orchestrator", script: "services/orchestrator/dist/main.js", env: { GRPC_PORT: String(orchestratorPort), INFERENCE_BROKER_ADDRESS: brokerAddress } },
    {
      name: "gateway",
      script: "services/gateway/dist/main.js",
      env: { GRPC_PORT: String(gatewayPort), ORCHESTRATOR_ADDRESS: `127.0.0.1:${orchestratorPort}`, INFERENCE_BROKER_ADDRESS: brokerAddress },
    },
  ];
  let early: string | undefined;
  const started = services.map((service) => {
    const recent: string[] = [];
    // Own process group, as with the launcher: Ctrl-C reaches the benchmark, which stops them in order.
    const child = spawn(process.execPath, [...(options.nodeArgs ?? []), join(options.rootDir, service.script)], {
      cwd: options.rootDir,
      env: { ...options.env, METRICS_PORT: "0", ...service.env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    for (const [stream, readable] of [
      ["stdout", child.stdout],
      ["stderr", child.stderr],
    ] as const) {
      createInterface({ input: readable }).on("line", (line) => {
        recent.push(line);
        if (recent.length > 30) recent.shift();
        options.onLine(service.name, line, stream);
      });
    }
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.once("exit", (code, signal) => {
      early ??= `${service.name} exited (${String(code ?? signal)}); last output:\n${recent.join("\n")}`;
    });
    return { name: service.name, child, exited };
  });
  let stopping = false;
  return {
    brokerAddress,
    gatewayAddress: `127.0.0.1:${gatewayPort}`,
    processes: started,
    exitedEarly: () => (stopping ? undefined : early),
    async stop() {
      stopping = true;
      for (const service of [...started].reverse()) {
        if (service.child.exitCode !== null || service.child.signalCode !== null) continue;
        service.child.kill("SIGTERM");
        const timer = setTimeout(() => service.child.kill("SIGKILL"), 15_000);
        await service.exited;
        clearTimeout(timer);
      }
    },
  };
}
