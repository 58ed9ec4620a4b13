import type { AgentRun, AgentStatus, AgentTypeStats, Usage } from "@vlinders/proto";

/** The stop reason of a run whose process stopped before the run ended. */
export const interruptedStopReason = "interrupted: the orchestrator stopped before the run ended";

/**
 * What the agent loop writes about a run as it goes, and what GetAgent, GetAgentStats and the
 * restart sweep read back. The PostgreSQL implementation is the record of truth: every write
 * below is awaited by the loop, so that a run the caller saw finish is never lost.
 */

export interface RunStartedRecord {
  readonly runId: string;
  readonly agentType: string;
  /** Empty for a top-level run. */
  readonly parentRunId: string;
  readonly userId: string;
  readonly instruction: string;
  readonly model: string;
  readonly workspaceId: string;
  readonly startedAt: Date;
}

export interface ToolCallRecord {
  /** The model's tool call id (unique within the run), or one the loop made up. */
  readonly id: string;
  readonly runId: string;
  readonly iteration: number;
  readonly toolName: string;
  readonly argumentsJson: string;
  /** The ToolResult as JSON (output, result_json, error, exit code, truncated). */
  readonly resultJson: string;
  readonly success: boolean;
  /**
   * Set by the store when reading back: the arguments, or the result, were longer than it keeps
   * (64 KiB each) and end with a truncation marker (so they may no longer parse as JSON).
   */
  readonly argumentsTruncated?: boolean;
  readonly resultTruncated?: boolean;
  readonly durationMs: number;
  readonly startedAt: Date;
  readonly finishedAt: Date;
}

export interface RunFinishedRecord {
  readonly runId: string;
  readonly status: AgentStatus;
  /** "completed", "max_iterations", "budget", "timeout", "stuck", "cancelled", "error", … */
  readonly stopReason: string;
  readonly response: string;
  readonly iterations: number;
  readonly usage: Usage | undefined;
  /** Why it failed, when it did (never shown to other users: no secrets in it). */
  readonly error: string;
  readonly finishedAt: Date;
}

/** The loop's side: writes. */
export interface RunRecorder {
  started(run: RunStartedRecord, signal?: AbortSignal): Promise<void>;
  /** After each iteration, so that GetAgent shows progress. */
  progressed(runId: string, iterations: number, usage: Usage | undefined, signal?: AbortSignal): Promise<void>;
  toolCalled(call: ToolCallRecord, signal?: AbortSignal): Promise<void>;
  finished(run: RunFinishedRecord, signal?: AbortSignal): Promise<void>;
}

/** The service's side: reads, and the sweep of runs a crashed process left `running`. */
export interface RunStore extends RunRecorder {
  get(runId: string, signal: AbortSignal): Promise<AgentRun | undefined>;
  listToolCalls(runId: string, signal: AbortSignal): Promise<ToolCallRecord[]>;
  /** Per agent type (or one), over the recorded runs. */
  stats(agentType: string | undefined, signal: AbortSignal): Promise<AgentTypeStats[]>;
  close(): Promise<void>;
}
