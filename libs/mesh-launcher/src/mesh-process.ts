import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";

/** One service of the mesh running as its own process. */
export interface MeshProcess {
  name: string;
  child: ChildProcess;
  /** Fields of the process's `listening` log line (ports, urls). */
  listening: Record<string, unknown>;
  /** The last lines the process wrote, for error messages. */
  recentOutput(): string;
  /** SIGTERM, then SIGKILL after the timeout; resolves once the process has exited. */
  stop(timeoutMs?: number): Promise<void>;
}

export interface SpawnServiceOptions {
  name: string;
  /** The entry point, e.g. services/gateway/dist/main.js. */
  script: string;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Receives each output line of the process. */
  onLine?: (name: string, line: string, stream: "stdout" | "stderr") => void;
  /** How long the process may take to log `listening`. */
  readyTimeoutMs: number;
}

/**
 * Spawns a service and resolves once it has logged `listening` (it then accepts calls). Rejects
 * with the process's last output when it exits or stays silent past the timeout.
 */
export async function spawnService(options: SpawnServiceOptions): Promise<MeshProcess> {
  // Own process group: Ctrl-C in a terminal reaches the launcher alone, which then stops the
  // services in order instead of every process racing to exit.
  const child = spawn(process.execPath, [options.script], {
    cwd: options.cwd,
    env: options.env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const recent: string[] = [];
  let exited = child.exitCode !== null;
  const exitPromise = new Promise<void>((resolve) => child.once("exit", () => {
    exited = true;
    resolve();
  }));

  let onListening: ((fields: Record<string, unknown>) => void) | undefined;
  for (const [stream, readable] of [
    ["stdout", child.stdout],
    ["stderr", child.stderr],
  ] as const) {
    createInterface({ input: readable }).on("line", (line) => {
      recent.push(line);
      if (recent.length > 40) recent.shift();
      options.onLine?.(options.name, line, stream);
      if (stream === "stdout" && onListening && line.includes('"listening"')) {
        try {
          const parsed = JSON.parse(line) as Record<string, unknown>;
          if (parsed.msg === "listening") onListening(parsed);
        } catch {
          // Not a JSON log line.
        }
      }
    });
  }

  const recentOutput = () => recent.join("\n");
  const listening = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${options.name} did not start within ${options.readyTimeoutMs} ms; last output:\n${recentOutput()}`));
    }, options.readyTimeoutMs);
    onListening = (fields) => {
      clearTimeout(timer);
      resolve(fields);
    };
    exitPromise.then(() => {
      clearTimeout(timer);
      reject(new Error(`${options.name} exited with code ${String(child.exitCode)} before listening; last output:\n${recentOutput()}`));
    }, reject);
  });

  return {
    name: options.name,
    child,
    listening,
    recentOutput,
    async stop(timeoutMs = 15_000) {
      if (exited) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      await exitPromise;
      clearTimeout(timer);
    },
  };
}
