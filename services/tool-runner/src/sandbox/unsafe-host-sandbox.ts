import { runHostProcess } from "./host-process";
import type { CommandOutcome, CommandRequest, CommandSandbox, SandboxStats, SandboxWorkspace } from "./sandbox";
import { recordKill, type SandboxMetrics } from "./sandbox-metrics";
import { defaultSandboxUser, sandboxUser, type SandboxUser } from "./sandbox-user";

/**
 * No isolation at all: `/bin/sh -c` on the host in the workspace directory, for development on a
 * machine with neither Docker nor bubblewrap. Timeouts, cancels and the output limit still kill
 * the command's process group. When this service runs as root the command runs as the workspace's
 * sandbox user, which at least keeps it from writing where that user may not. Workspaces are not
 * mounted, so a read-only session is read-only only by the tools' own checks.
 */
export function createUnsafeHostSandbox(options: { outputKillBytes: number; metrics: SandboxMetrics; fallbackUser?: SandboxUser }): CommandSandbox {
  const isRoot = process.getuid?.() === 0;
  return {
    backend: "unsafe-host",
    async run(workspace: SandboxWorkspace, request: CommandRequest): Promise<CommandOutcome> {
      const user = await sandboxUser(workspace.hostPath, options.fallbackUser ?? defaultSandboxUser);
      const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin", HOME: workspace.hostPath, LANG: "C.UTF-8" };
      const outcome = await runHostProcess(
        { file: "/bin/sh", args: ["-c", request.command], cwd: workspace.hostPath, env, ...(isRoot ? user : {}) },
        request,
        options.outputKillBytes,
      );
      recordKill(options.metrics, outcome.killedBecause);
      return outcome;
    },
    stats(): SandboxStats {
      return { backend: "unsafe-host", idle: 0, busy: 0, targetPoolSize: 0 };
    },
    async close(): Promise<void> {},
  };
}
