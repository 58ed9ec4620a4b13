/**
 * What the tools need from a sandbox: run one shell command against a workspace, isolated from the
 * host and the network, with hard limits. Backends: Docker (warm pool of containers), bubblewrap,
 * and — only when explicitly allowed for development — the bare host.
 */

/** A workspace as a sandbox sees it. */
export interface SandboxWorkspace {
  /** The workspace id (also the session key). */
  readonly id: string;
  /** Absolute host path of the workspace directory. */
  readonly hostPath: string;
  /** False when the caller's agent type may not write: the workspace is mounted read-only. */
  readonly writable: boolean;
}

export interface CommandRequest {
  /** Run by `/bin/sh -c` with the workspace as the working directory. */
  readonly command: string;
  /** Wall-clock limit; when it passes the whole process tree is killed. */
  readonly timeoutMs: number;
  /** Bytes of output kept (head and tail); the cut is marked. */
  readonly outputLimitBytes: number;
  /** Aborts the command (the process tree is killed) when the caller cancels. */
  readonly signal: AbortSignal;
}

/** Why a command was killed rather than left to exit by itself. */
export type CommandKillReason = "timeout" | "out-of-memory" | "output-limit" | "cancelled";

export interface CommandOutcome {
  /** The exit code, or null when the command was killed. */
  readonly exitCode: number | null;
  /** stdout and stderr interleaved as they arrived, cut to the limit (head and tail kept). */
  readonly output: string;
  readonly truncated: boolean;
  readonly killedBecause?: CommandKillReason;
  readonly durationMs: number;
}

export interface SandboxStats {
  readonly backend: SandboxBackendName;
  /** Started containers waiting to be handed over (Docker only). */
  readonly idle: number;
  /** Containers bound to a workspace session. */
  readonly busy: number;
  readonly targetPoolSize: number;
}

export type SandboxBackendName = "docker" | "bubblewrap" | "unsafe-host" | "none";

export interface CommandSandbox {
  readonly backend: SandboxBackendName;
  /**
   * Runs a command for a workspace. The sandbox keeps one session (container) per workspace and
   * access mode while it is in use and hands it back after an idle period.
   */
  run(workspace: SandboxWorkspace, request: CommandRequest): Promise<CommandOutcome>;
  stats(): SandboxStats;
  /** Stops every container this process started and waits for them to be removed. */
  close(): Promise<void>;
}

/** Thrown when commands cannot run at all here (no Docker, no bubblewrap, unsafe mode off). */
export class SandboxUnavailableError extends Error {
  override name = "SandboxUnavailableError";
}

/**
 * Thrown by `run` when the sandbox container (or the command server in it) died while the command
 * ran: killed from inside, removed by an operator, the daemon restarted. The session's next
 * command gets a fresh container.
 */
export class SandboxContainerDiedError extends Error {
  override name = "SandboxContainerDiedError";
}
