import { SandboxContainerDiedError, SandboxUnavailableError, type CommandOutcome } from "../sandbox/sandbox";
import { failure } from "./file-helpers";
import type { ToolContext, ToolDefinition, ToolOutcome } from "./tool";

export interface RunCommandArguments {
  command: string;
  timeout_ms?: number;
}

/** The sandbox's limits, named in the message of a command killed for passing one. */
export interface SandboxLimits {
  /** SANDBOX_MEMORY_MB. */
  readonly memoryLimitMb?: number;
  /** COMMAND_OUTPUT_KILL_BYTES. */
  readonly outputKillBytes?: number;
}

/**
 * `run_command`: one shell command in the workspace, through the sandbox (isolated, no network,
 * hard limits). The workspace is mounted read-only for agent types that may only read, which is
 * why read-only agents may be given this tool.
 */
export function createRunCommandTool(limits: SandboxLimits = {}): ToolDefinition<RunCommandArguments> {
  return {
    name: "run_command",
    description:
      "Runs a shell command (sh -c) in the workspace directory, in a sandbox without network access, and returns its " +
      "combined stdout and stderr and its exit code. Long output keeps its beginning and end.",
    parameters: {
      type: "object",
      properties: {
        command: { type: "string", minLength: 1, description: "The command line, run by /bin/sh -c." },
        timeout_ms: { type: "integer", minimum: 1, description: "Kill the command after this many milliseconds (capped by the call's own timeout)." },
      },
      required: ["command"],
      additionalProperties: false,
    },
    readOnly: false,
    honoursReadOnlyAccess: true,

    execute: (args, context) => runInSandbox(args.command, args.timeout_ms, context, limits),
  };
}

/** Runs a command through the context's sandbox and describes how it ended; shared with run_test. */
export async function runInSandbox(command: string, timeoutMs: number | undefined, context: ToolContext, limits: SandboxLimits): Promise<ToolOutcome> {
  // The call's timeout is the ceiling: a command may ask for less, never for more.
  const limit = Math.min(timeoutMs ?? context.timeoutMs, context.timeoutMs);
  let outcome: CommandOutcome;
  try {
    outcome = await context.sandbox.run(
      { id: context.workspace.id, hostPath: context.workspace.rootPath, writable: context.mayWrite },
      { command, timeoutMs: limit, outputLimitBytes: context.outputLimitBytes, signal: context.signal },
    );
  } catch (error) {
    // An abort (the caller cancelled, the deadline passed) goes on to the service, which reports it as such.
    if (context.signal.aborted || (error as Error | undefined)?.name === "AbortError") throw error;
    // Anything else the sandbox throws (no backend here, the container died under the command,
    // Docker timed out creating or starting one) is this command's failure, not an internal error
    // of the service: the model can retry, and the sandbox starts a fresh container next time.
    if (error instanceof SandboxUnavailableError || error instanceof SandboxContainerDiedError) return failure(error.message);
    return failure(`the sandbox failed: ${error instanceof Error ? error.message : String(error)}`);
  }
  const result = { exit_code: outcome.exitCode, duration_ms: Math.round(outcome.durationMs), ...(outcome.killedBecause ? { killed_because: outcome.killedBecause } : {}) };
  const base = { output: outcome.output, truncated: outcome.truncated, result };
  if (outcome.killedBecause !== undefined || outcome.exitCode === null) {
    return { ...base, success: false, error: killMessage(outcome, limit, limits) };
  }
  if (outcome.exitCode !== 0) return { ...base, success: false, exitCode: outcome.exitCode, error: `exited with code ${outcome.exitCode}` };
  return { ...base, success: true, exitCode: 0 };
}

function killMessage(outcome: CommandOutcome, timeoutMs: number, limits: SandboxLimits): string {
  switch (outcome.killedBecause) {
    case "timeout":
      return `killed: timed out after ${timeoutMs} ms`;
    case "out-of-memory":
      return `killed: out of memory (limit ${limits.memoryLimitMb === undefined ? "of the sandbox" : `${limits.memoryLimitMb} MB`})`;
    case "output-limit":
      return `killed: output passed ${limits.outputKillBytes === undefined ? "the sandbox's limit" : `${limits.outputKillBytes} bytes`}`;
    case "cancelled":
      return "cancelled";
    default:
      return "killed";
  }
}
