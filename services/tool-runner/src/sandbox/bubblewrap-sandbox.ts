import { existsSync, lstatSync, readlinkSync } from "node:fs";
import type { Logger } from "@vlinders/service-runtime";
import { runHostProcess, type HostProcessSpec } from "./host-process";
import { findMemoryCgroupRoot, MemoryCgroup, type MemoryCgroupRoot } from "./memory-cgroup";
import type { CommandOutcome, CommandRequest, CommandSandbox, SandboxStats, SandboxWorkspace } from "./sandbox";
import { recordKill, type SandboxMetrics } from "./sandbox-metrics";
import { defaultSandboxUser, sandboxUser, type SandboxUser } from "./sandbox-user";

/** Limits of a bubblewrap sandbox. */
export interface BubblewrapSandboxOptions {
  /** The whole sandbox's memory (processes and /tmp) when a memory cgroup can be made, else each process's address space. */
  readonly memoryMb: number;
  readonly pidsLimit: number;
  /** Size of the sandbox's /tmp (a tmpfs, so memory). */
  readonly tmpfsMb: number;
  /** Largest file a command may write (RLIMIT_FSIZE), in the workspace too; default 1024. */
  readonly maxFileMb?: number;
  readonly outputKillBytes: number;
  readonly metrics: SandboxMetrics;
  readonly fallbackUser?: SandboxUser;
  /** The bwrap binary (default: `bwrap` on PATH). */
  readonly bwrapPath?: string;
  readonly logger?: Logger;
}

const sandboxPath = "/usr/local/bin:/usr/bin:/bin";
const defaultMaxFileMb = 1024;
// Enters the cgroup named by $0, then becomes the command ($@): every process of the sandbox,
// bwrap included, is born inside the cgroup, with no window in which a fork escapes it.
// Enters every cgroup listed in VLINDERS_CGROUP_PROCS (paths without spaces), then becomes the command.
const enterCgroupScript = 'for procs in $VLINDERS_CGROUP_PROCS; do echo $$ > "$procs" || exit 125; done; exec "$@"';

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
 * host's /usr read-only, a private /proc, /dev and a /tmp of `tmpfsMb`, the workspace at
 * /workspace (read-only for read-only sessions).
 *
 * Memory: when this service runs as root, each command runs in a memory cgroup of its own
 * (`memoryMb`, no swap) that counts every process of the sandbox and its /tmp pages, so neither a
 * memory bomb nor a full /tmp can take the host's memory; the OOM killer ends the command and the
 * outcome says out-of-memory. Without root the only limits are rlimits set by `prlimit`: address
 * space per process (not a total; Node needs about 1 GB of it), processes of the sandbox uid, file
 * size; the tmpfs size still bounds /tmp.
 *
 * When this service runs as root, bwrap is started as the workspace's sandbox user (see
 * `sandboxUser`), so commands run unprivileged and with the same ownership as under Docker; inside
 * bwrap's user namespace that user keeps its uid. There is no per-workspace session to keep.
 */
export function createBubblewrapSandbox(options: BubblewrapSandboxOptions): CommandSandbox {
  const rootArguments = hostRootArguments();
  const isRoot = process.getuid?.() === 0;
  const found = findMemoryCgroupRoot();
  // The user switch happens after the cgroup is entered (only root may enter it), so setpriv is needed too.
  const cgroupRoot: MemoryCgroupRoot | undefined = "problem" in found || !onPath("setpriv") ? undefined : found;
  if (cgroupRoot === undefined) {
    const problem = "problem" in found ? found.problem : "setpriv (util-linux) is not installed";
    options.logger?.warn({ backend: "bubblewrap", problem, memoryMb: options.memoryMb }, "bubblewrap memory limit is per process only (no memory cgroup): a sandbox may use more than SANDBOX_MEMORY_MB in total");
  }
  const memoryBytes = options.memoryMb * 1024 * 1024;
  return {
    backend: "bubblewrap",
    async run(workspace: SandboxWorkspace, request: CommandRequest): Promise<CommandOutcome> {
      const user = await sandboxUser(workspace.hostPath, options.fallbackUser ?? defaultSandboxUser);
      const cgroup = cgroupRoot === undefined ? undefined : await MemoryCgroup.create(cgroupRoot, memoryBytes, options.pidsLimit);
      // RLIMIT_NPROC counts the uid's processes across the whole host; a pids cgroup counts only this command's.
      const processLimit = cgroup?.limitsProcesses === true ? [] : [`--nproc=${options.pidsLimit}`];
      const limits = [`--as=${memoryBytes}`, ...processLimit, `--fsize=${(options.maxFileMb ?? defaultMaxFileMb) * 1024 * 1024}`, "--core=0"];
      const prlimitArgs = [
        ...limits,
        "--",
        options.bwrapPath ?? "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        ...rootArguments,
        "--proc", "/proc",
        "--dev", "/dev",
        // Without a size a tmpfs may take half the host's RAM, and rlimits do not count its pages.
        "--size", String(options.tmpfsMb * 1024 * 1024), "--tmpfs", "/tmp",
        workspace.writable ? "--bind" : "--ro-bind", workspace.hostPath, "/workspace",
        "--chdir", "/workspace",
        "--clearenv",
        "--setenv", "PATH", sandboxPath,
        "--setenv", "HOME", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
        "--",
        "/bin/sh", "-c", request.command,
      ];
      const base = { cwd: "/", env: { PATH: sandboxPath } };
      if (cgroup === undefined) {
        const outcome = await runHostProcess({ ...base, file: "prlimit", args: prlimitArgs, ...(isRoot ? user : {}) }, request, options.outputKillBytes);
        recordKill(options.metrics, outcome.killedBecause);
        return outcome;
      }
      try {
        const spec: HostProcessSpec = {
          ...base,
          env: { ...base.env, VLINDERS_CGROUP_PROCS: cgroup.procsFiles.join(" ") },
          file: "/bin/sh",
          args: ["-c", enterCgroupScript, "sh", "setpriv", `--reuid=${user.uid}`, `--regid=${user.gid}`, "--clear-groups", "--", "prlimit", ...prlimitArgs],
        };
        let outcome = await runHostProcess(spec, request, options.outputKillBytes);
        // Like Docker's: an OOM kill in the command's own cgroup is what ended a command that failed.
        if (outcome.killedBecause === undefined && outcome.exitCode !== 0 && (await cgroup.oomKills()) > 0) {
          outcome = { ...outcome, exitCode: null, killedBecause: "out-of-memory" };
        }
        recordKill(options.metrics, outcome.killedBecause);
        return outcome;
      } finally {
        await cgroup.remove();
      }
    },
    stats(): SandboxStats {
      return { backend: "bubblewrap", idle: 0, busy: 0, targetPoolSize: 0 };
    },
    async close(): Promise<void> {
      // Commands are children of calls in flight; each call ends them itself (and removes its cgroup).
    },
  };
}

function onPath(binary: string): boolean {
  return sandboxPath.split(":").some((dir) => existsSync(`${dir}/${binary}`));
}
