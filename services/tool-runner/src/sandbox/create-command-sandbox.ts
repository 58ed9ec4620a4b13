import { spawn } from "node:child_process";
import { resolve } from "node:path";
import Docker from "dockerode";
import type { Registry } from "prom-client";
import type { Logger } from "@vlinders/service-runtime";
import type { ToolRunnerConfig } from "../config";
import { createBubblewrapSandbox, hostRootArguments } from "./bubblewrap-sandbox";
import { defaultRunnerId, DockerSandbox } from "./docker-sandbox";
import { withDeadline } from "./host-process";
import { SandboxUnavailableError, type CommandSandbox } from "./sandbox";
import { ensureSandboxImage } from "./sandbox-image";
import { createSandboxMetrics } from "./sandbox-metrics";
import { createUnsafeHostSandbox } from "./unsafe-host-sandbox";

/** The configuration the sandbox reads. */
export type SandboxConfig = Pick<
  ToolRunnerConfig,
  | "VLINDERS_ENV"
  | "SANDBOX_BACKEND"
  | "SANDBOX_IMAGE"
  | "SANDBOX_BUILD_IMAGE"
  | "SANDBOX_POOL_SIZE"
  | "SANDBOX_MEMORY_MB"
  | "SANDBOX_CPUS"
  | "SANDBOX_PIDS_LIMIT"
  | "SANDBOX_TMPFS_MB"
  | "SANDBOX_MAX_CONCURRENT_STARTS"
  | "SANDBOX_IDLE_MS"
  | "SANDBOX_STATE_DIR"
  | "SANDBOX_RUNNER_ID"
  | "COMMAND_OUTPUT_KILL_BYTES"
>;

export interface CreateCommandSandboxOptions {
  readonly config: SandboxConfig;
  readonly logger: Logger;
  readonly metrics: Registry;
  /** Aborts a slow start (the image build, the reaper). */
  readonly signal?: AbortSignal;
  /** The Docker client (default: DOCKER_HOST or the default socket). */
  readonly docker?: Docker;
}

const pingDeadlineMs = 1_000;
const probeDeadlineMs = 5_000;

/**
 * Builds the sandbox that SANDBOX_BACKEND asks for. `auto` takes Docker when its daemon answers a
 * ping within a second, else bubblewrap when it is installed and can start a sandbox here, else
 * `none`, whose every command fails with a SandboxUnavailableError that says what to install.
 * `unsafe-host` is refused in production and warned about loudly elsewhere. The choice and its
 * reason are logged.
 */
export async function createCommandSandbox(options: CreateCommandSandboxOptions): Promise<CommandSandbox> {
  const { config, logger } = options;
  const metrics = createSandboxMetrics(options.metrics);
  const docker = options.docker ?? new Docker();
  const dockerAddress = process.env.DOCKER_HOST ?? "/var/run/docker.sock";
  const requested = config.SANDBOX_BACKEND;

  const useDocker = async (reason: string): Promise<CommandSandbox> => {
    await ensureSandboxImage({ docker, image: config.SANDBOX_IMAGE, build: config.SANDBOX_BUILD_IMAGE, logger, ...(options.signal ? { signal: options.signal } : {}) });
    const runnerId = config.SANDBOX_RUNNER_ID ?? defaultRunnerId();
    const sandbox = await DockerSandbox.create({
      docker,
      image: config.SANDBOX_IMAGE,
      runnerId,
      stateDir: resolve(config.SANDBOX_STATE_DIR),
      poolSize: config.SANDBOX_POOL_SIZE,
      memoryMb: config.SANDBOX_MEMORY_MB,
      cpus: config.SANDBOX_CPUS,
      pidsLimit: config.SANDBOX_PIDS_LIMIT,
      tmpfsMb: config.SANDBOX_TMPFS_MB,
      idleMs: config.SANDBOX_IDLE_MS,
      outputKillBytes: config.COMMAND_OUTPUT_KILL_BYTES,
      maxConcurrentStarts: config.SANDBOX_MAX_CONCURRENT_STARTS,
      logger,
      metrics,
    });
    logger.info({ backend: "docker", reason, image: config.SANDBOX_IMAGE, runnerId, warmPool: sandbox.warmPoolEnabled }, "command sandbox chosen");
    return sandbox;
  };
  const useBubblewrap = (reason: string): CommandSandbox => {
    logger.info({ backend: "bubblewrap", reason }, "command sandbox chosen");
    return createBubblewrapSandbox({
      memoryMb: config.SANDBOX_MEMORY_MB,
      pidsLimit: config.SANDBOX_PIDS_LIMIT,
      tmpfsMb: config.SANDBOX_TMPFS_MB,
      outputKillBytes: config.COMMAND_OUTPUT_KILL_BYTES,
      metrics,
      logger,
    });
  };

  switch (requested) {
    case "docker": {
      const problem = await dockerProblem(docker);
      if (problem !== undefined) throw new SandboxUnavailableError(`SANDBOX_BACKEND=docker but no Docker daemon answers at ${dockerAddress}: ${problem}`);
      return useDocker("SANDBOX_BACKEND=docker");
    }
    case "bubblewrap": {
      const problem = await bubblewrapProblem();
      if (problem !== undefined) throw new SandboxUnavailableError(`SANDBOX_BACKEND=bubblewrap but bubblewrap cannot run here: ${problem}`);
      return useBubblewrap("SANDBOX_BACKEND=bubblewrap");
    }
    case "unsafe-host": {
      if (config.VLINDERS_ENV === "production") {
        throw new SandboxUnavailableError("SANDBOX_BACKEND=unsafe-host is refused in production (VLINDERS_ENV=production): it runs agents' commands on the host with no isolation");
      }
      logger.warn(
        { backend: "unsafe-host" },
        "UNSAFE: commands run on this host with NO isolation (no container, full network, the service's files); development only",
      );
      return createUnsafeHostSandbox({ outputKillBytes: config.COMMAND_OUTPUT_KILL_BYTES, metrics });
    }
    case "none":
      logger.warn({ backend: "none", reason: "SANDBOX_BACKEND=none" }, "command sandbox off: commands are refused");
      return createNoneSandbox("commands cannot run: SANDBOX_BACKEND=none");
    case "auto": {
      const noDocker = await dockerProblem(docker);
      if (noDocker === undefined) return useDocker(`Docker answered at ${dockerAddress}`);
      const noBubblewrap = await bubblewrapProblem();
      if (noBubblewrap === undefined) return useBubblewrap(`no Docker daemon at ${dockerAddress} (${noDocker}); bubblewrap works`);
      const message = `commands cannot run: no Docker daemon at ${dockerAddress} (${noDocker}), no bubblewrap (${noBubblewrap}); install one, or set SANDBOX_BACKEND=unsafe-host for development only`;
      logger.error({ backend: "none" }, message);
      return createNoneSandbox(message);
    }
  }
}

/** Why the Docker daemon cannot be used, or undefined when it answers a ping within a second. */
async function dockerProblem(docker: Docker): Promise<string | undefined> {
  const controller = new AbortController();
  try {
    // dockerode 5 takes an abortSignal here; its @types (v4) do not know it yet.
    const ping = docker.ping.bind(docker) as unknown as (options: { abortSignal: AbortSignal }) => Promise<unknown>;
    await withDeadline(ping({ abortSignal: controller.signal }), pingDeadlineMs, "no answer to ping");
    return undefined;
  } catch (error: unknown) {
    return error instanceof Error ? error.message : String(error);
  } finally {
    controller.abort(); // A ping still in flight after the deadline is not left hanging.
  }
}

/** Why bubblewrap cannot be used, or undefined when it starts a sandbox like the one commands get. */
async function bubblewrapProblem(): Promise<string | undefined> {
  const child = spawn("bwrap", ["--unshare-all", "--die-with-parent", ...hostRootArguments(), "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), probeDeadlineMs);
  try {
    const code = await new Promise<number | null>((resolveExit) => {
      child.once("error", (error) => {
        stderr = error.message;
        resolveExit(-1);
      });
      child.once("close", resolveExit);
    });
    return code === 0 ? undefined : stderr.trim() || `bwrap exited with ${code}`;
  } finally {
    clearTimeout(timer);
  }
}

/** The backend of last resort: every command fails with `message`. */
export function createNoneSandbox(message: string): CommandSandbox {
  return {
    backend: "none",
    run: async () => {
      throw new SandboxUnavailableError(message);
    },
    stats: () => ({ backend: "none", idle: 0, busy: 0, targetPoolSize: 0 }),
    close: async () => {},
  };
}
