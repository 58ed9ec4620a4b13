import type { ToolCall, ToolResult } from "@vlinders/proto";

/** The moments of a run at which hooks are called. */
export const hookEvents = ["pre_tool_use", "post_tool_use", "on_iteration", "on_finish"] as const;
export type HookEvent = (typeof hookEvents)[number];

/** Where a configured hook runs: an in-process plugin registered by name, or an HTTP webhook. */
export type HookTarget =
  | { readonly kind: "plugin"; readonly plugin: string; readonly timeoutMs: number | undefined }
  | { readonly kind: "webhook"; readonly url: string; readonly timeoutMs: number | undefined };

/** The hooks of an agent type, per event, called in order. */
export type AgentTypeHooks = { readonly [Event in HookEvent]: readonly HookTarget[] };

export const noHooks: AgentTypeHooks = { pre_tool_use: [], post_tool_use: [], on_iteration: [], on_finish: [] };

/** What a hook is told. Webhooks receive it as JSON with snake_case keys (see toWebhookBody). */
export interface HookPayload {
  readonly event: HookEvent;
  readonly runId: string;
  readonly parentRunId: string;
  readonly agentType: string;
  readonly iteration: number;
  /** pre_tool_use and post_tool_use: the call (with the arguments as rewritten by earlier hooks). */
  readonly toolCall?: ToolCall;
  /** post_tool_use: the call's result. */
  readonly toolResult?: ToolResult;
  /** on_finish: how the run ended. */
  readonly finish?: { readonly status: string; readonly stopReason: string; readonly response: string };
}

/**
 * What a hook answers. `allow` (or nothing) lets the call go on; `deny` stops it (pre_tool_use
 * only) and the model is told `reason`; `rewrite` replaces the arguments (pre_tool_use) or the
 * result's output, error or success (post_tool_use).
 */
export interface HookDecision {
  readonly decision: "allow" | "deny" | "rewrite";
  readonly reason?: string;
  readonly argumentsJson?: string;
  readonly result?: { readonly success?: boolean; readonly output?: string; readonly error?: string };
}

/** An in-process hook. It should honour `signal`: it is aborted at the hook's timeout. */
export type HookFunction = (payload: HookPayload, signal: AbortSignal) => HookDecision | void | Promise<HookDecision | void>;
