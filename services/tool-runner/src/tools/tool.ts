import type { CommandSandbox } from "../sandbox/sandbox";
import type { Workspace } from "../workspace/workspace";

/** JSON schema (draft 2020-12 subset that Ajv understands) of a tool's arguments. */
export type JsonSchema = Record<string, unknown>;

/** What a tool call runs with. */
export interface ToolContext {
  readonly workspace: Workspace;
  /** The calling agent's type ("" when the caller gave none). */
  readonly agentType: string;
  /** False when the agent type may only read: write tools are refused and mounts are read-only. */
  readonly mayWrite: boolean;
  /** Wall-clock limit for this call in milliseconds (already defaulted and capped). */
  readonly timeoutMs: number;
  /** Bytes of text output kept; longer output keeps head and tail with the cut marked. */
  readonly outputLimitBytes: number;
  readonly sandbox: CommandSandbox;
  /** Aborted when the caller cancels, the deadline passes, or the service shuts down. */
  readonly signal: AbortSignal;
}

/** What a tool call produced. A tool that could not do its job returns success false, not a throw. */
export interface ToolOutcome {
  readonly success: boolean;
  readonly output: string;
  /** Serialised as result_json when present. */
  readonly result?: unknown;
  readonly error?: string;
  readonly exitCode?: number;
  readonly truncated: boolean;
}

export interface ToolDefinition<Arguments = Record<string, unknown>> {
  readonly name: string;
  readonly description: string;
  readonly parameters: JsonSchema;
  /** True when the tool never changes the workspace (its results may be cached). */
  readonly readOnly: boolean;
  /**
   * For a tool that is not readOnly: true when it is still safe for an agent type with read-only
   * workspace access, because everything it does sees the workspace read-only (commands run in a
   * read-only mount). Tools that write files themselves leave it unset and are refused to such agents.
   */
  readonly honoursReadOnlyAccess?: boolean;
  /** Arguments have been validated against `parameters` before this is called. */
  execute(args: Arguments, context: ToolContext): Promise<ToolOutcome>;
  /**
   * For a readOnly tool whose result depends on something that can change outside the tool-runner
   * (a file's content): a short string that changes with it (e.g. the file's mtime and size), made
   * part of the cache key. Undefined means "do not cache this call".
   */
  cacheFingerprint?(args: Arguments, workspace: Workspace, signal: AbortSignal): Promise<string | undefined>;
  /**
   * For a readOnly tool: seconds its results are cached, when shorter than TOOL_CACHE_TTL_S. A
   * tool whose result depends on the workspace but that has no cacheFingerprint (list_files,
   * search_code) sets it short: nothing else tells its entries that a command's background
   * process or someone outside the tool-runner changed the files.
   */
  readonly cacheTtlSeconds?: number;
  /**
   * False for a tool that never touches the workspace (web_search): the service then neither
   * requires workspace_id nor opens (or creates) the workspace, and `context.workspace` is a
   * stand-in whose resolve throws. An id given is still validated. Default true.
   */
  readonly needsWorkspace?: false;
}

/**
 * Thrown by a tool for a mistake in the request itself (a path outside the workspace, a missing
 * file named by the caller is NOT this: that is a failed outcome). The service maps it to
 * INVALID_ARGUMENT; the message names the argument, e.g. `path: resolves outside the workspace`.
 */
export class ToolArgumentError extends Error {
  override name = "ToolArgumentError";
}
