import { existsSync, lstatSync, readlinkSync } from "node:fs";
import { runHostProcess } from "./host-process";
import type { CommandOutcome, CommandRequest, CommandSandbox, SandboxStats, SandboxWorkspace } from "./sandbox";
import { recordKill, type SandboxMetrics } from "./sandbox-metrics";
import { defaultSandboxUser, sandboxUser, type SandboxUser } from "./sandbox-user";

/** Limits of a bubblewrap sandbox. */
export interface BubblewrapSandboxOptions {
  readonly memoryMb: number;
  readonly pidsLimit: number;
  readonly outputKillBytes: number;
  readonly metrics: SandboxMetrics;
  readonly fallbackUser?: SandboxUser;
  /** The bwrap binary (default: `bwrap` on PATH). */
  readonly bwrapPath?: string;
}

const sandboxPath = "/usr/local/bin:/usr/bin:/bin";

/**
 * The arguments that rebuild the host's top-level layout inside the sandbox: /usr read-only, and
 * /bin, /lib, /lib64, /sbin as the host has them (symlinks into /usr on merged-/usr Debian, else
 * read-only binds). /etc is not bound: commands see no host configuration or secrets.
 */
export function hostRootArguments(): string[] {
  const args = ["--ro-bind", "/usr", "/usr"];
  for (const top of ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]) {
    if (!existsSync(top)) continue;
    if (lstatSync(top).isSymbolicLink()) args.push("--symlink", readlinkSync(top), top);
    else args.push("--ro-bind", top, top);
  }
  return args;
}

/**
 * Commands under bubblewrap: every namespace unshared (no network but loopback, own PIDs), the
 * host's /usr read-only, a private /proc, /dev and /tmp, the workspace at /workspace (read-only
 * for read-only sessions). Limits are rlimits set by `prlimit`: address space per process (not a
 * total, unlike Docker's cgroup; Node needs about 1 GB of it) and processes of the sandbox uid.
 *
 * When this service runs as root, bwrap is started as the workspace's sandbox user (see
 * `sandboxUser`), so commands run unprivileged and with the same ownership as under Docker; inside
 * bwrap's user namespace that user keeps its uid. There is no per-workspace session to keep.
 */
export function createBubblewrapSandbox(options: BubblewrapSandboxOptions): CommandSandbox {
  const rootArguments = hostRootArguments();
  const isRoot = process.getuid?.() === 0;
  return {
    backend: "bubblewrap",
    async run(workspace: SandboxWorkspace, request: CommandRequest): Promise<CommandOutcome> {
      const user = await sandboxUser(workspace.hostPath, options.fallbackUser ?? defaultSandboxUser);
      const limits = [`--as=${options.memoryMb * 1024 * 1024}`, `--nproc=${options.pidsLimit}`, "--core=0"];
      const args = [
        ...limits,
        "--",
        options.bwrapPath ?? "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        ...rootArguments,
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        workspace.writable ? "--bind" : "--ro-bind", workspace.hostPath, "/workspace",
        "--chdir", "/workspace",
        "--clearenv",
        "--setenv", "PATH", sandboxPath,
        "--setenv", "HOME", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
        "--",
        "/bin/sh", "-c", request.command,
      ];
      const outcome = await runHostProcess(
        { file: "prlimit", args, cwd: "/", env: { PATH: sandboxPath }, ...(isRoot ? user : {}) },
        request,
        options.outputKillBytes,
      );
      recordKill(options.metrics, outcome.killedBecause);
      return outcome;
    },
    stats(): SandboxStats {
      return { backend: "bubblewrap", idle: 0, busy: 0, targetPoolSize: 0 };
    },
    async close(): Promise<void> {
      // Commands are children of calls in flight; each call ends them itself.
    },
  };
}
