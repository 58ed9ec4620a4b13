import type { ToolResult } from "@vlinders/proto";
import { linkSignals, readLimitedBody, type Logger } from "@vlinders/service-runtime";
import type { HookDecision, HookFunction, HookPayload, HookTarget } from "./hook-types";

/** In-process hooks by name, referenced from agents.yaml as `{plugin: name}`. */
export interface HookRegistry {
  /** Adds a hook; throws when the name is taken (two plugins under one name is a mistake, not an override). */
  register(name: string, hook: HookFunction): HookRegistry;
  get(name: string): HookFunction | undefined;
}

/** An empty registry of in-process hooks. */
export function createHookRegistry(): HookRegistry {
  const hooks = new Map<string, HookFunction>();
  const registry: HookRegistry = {
    register(name, hook) {
      if (hooks.has(name)) throw new Error(`hook plugin "${name}" is already registered`);
      hooks.set(name, hook);
      return registry;
    },
    get: (name) => hooks.get(name),
  };
  return registry;
}

/** What pre_tool_use decided: go on with these arguments, or deny with a reason. */
export type PreToolUseOutcome = { readonly allowed: true; readonly argumentsJson: string } | { readonly allowed: false; readonly reason: string };

/** Calls the configured hooks of a run, each with a timeout and the run's signal. */
export interface HookRunner {
  /**
   * The pre_tool_use hooks in order, each seeing the arguments as rewritten by the one before; the
   * first deny wins. Fail closed: a hook that throws, times out, answers nonsense or is not
   * registered denies the call.
   */
  preToolUse(targets: readonly HookTarget[], payload: HookPayload, signal: AbortSignal): Promise<PreToolUseOutcome>;
  /**
   * The post_tool_use hooks in order; each may rewrite the result. Fail closed: when one throws or
   * times out, the tool's output is withheld (a redaction hook that failed must not let the raw
   * output reach the model or the records) and the result says the call's outcome is unknown.
   */
  postToolUse(targets: readonly HookTarget[], payload: HookPayload, result: ToolResult, signal: AbortSignal): Promise<ToolResult>;
  /** on_iteration and on_finish: told, not asked. A failing hook is logged; the run goes on. */
  notify(targets: readonly HookTarget[], payload: HookPayload, signal: AbortSignal): Promise<void>;
}

export interface HookRunnerDependencies {
  registry: HookRegistry;
  logger: Logger;
  /** Timeout of a hook that names none; 2 s by default. */
  defaultTimeoutMs?: number;
}

/** The most bytes of a webhook's answer that are read: a decision is small, a hook gone wrong may not be. */
export const maxWebhookAnswerBytes = 1024 * 1024;

/** The body as text, or an error as soon as it passes `limit` bytes (the rest is not read). */
async function readCapped(response: Response, limit: number): Promise<string> {
  const declared = Number(response.headers.get("content-length") ?? Number.NaN);
  if (declared > limit) {
    await response.body?.cancel();
    throw new Error(`answered ${declared} bytes, more than the ${limit} a hook may`);
  }
  const text = await readLimitedBody(response, limit);
  if (text === undefined) throw new Error(`answered more than the ${limit} bytes a hook may`);
  return text;
}

/** A result with nothing of the tool's output left in it: only what identifies the call. */
function withheldResult(result: ToolResult, reason: string): ToolResult {
  return { callId: result.callId, toolName: result.toolName, success: false, output: "", resultJson: "", error: reason, durationMs: result.durationMs, truncated: false };
}

/** Builds the HookRunner over the in-process registry and HTTP webhooks (fetch, POST JSON). */
export function createHookRunner(deps: HookRunnerDependencies): HookRunner {
  const defaultTimeoutMs = deps.defaultTimeoutMs ?? 2_000;

  async function call(target: HookTarget, payload: HookPayload, runSignal: AbortSignal): Promise<HookDecision> {
    const { signal, dispose } = linkSignals(runSignal, AbortSignal.timeout(target.timeoutMs ?? defaultTimeoutMs));
    try {
      if (target.kind === "plugin") {
        const hook = deps.registry.get(target.plugin);
        if (!hook) throw new Error(`hook plugin "${target.plugin}" is not registered`);
        // Raced against the signal: an in-process hook that ignores its signal must still not hold the run.
        return checkDecision((await raceSignal(Promise.resolve(hook(payload, signal)), signal)) ?? { decision: "allow" });
      }
      const response = await fetch(target.url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(toWebhookBody(payload)),
        // A policy hook answers itself: a redirect would send the run's tool call to whoever the
        // Location names, so it is refused (and a pre-hook denies).
        redirect: "manual",
        signal,
      });
      if (response.status >= 300 && response.status < 400) {
        await response.body?.cancel();
        throw new Error(`answered HTTP ${response.status} (a redirect to ${response.headers.get("location") ?? "nowhere"}); webhooks are not redirected`);
      }
      const text = await readCapped(response, maxWebhookAnswerBytes);
      if (!response.ok) throw new Error(`answered HTTP ${response.status}: ${text.slice(0, 200)}`);
      return checkDecision(fromWebhookBody(text === "" ? {} : (JSON.parse(text) as unknown)));
    } finally {
      dispose();
    }
  }

  const describe = (target: HookTarget) => (target.kind === "plugin" ? `plugin "${target.plugin}"` : `webhook ${target.url}`);
  const failure = (target: HookTarget, error: unknown, runSignal: AbortSignal) => {
    if (runSignal.aborted) return `the run was stopped while hook ${describe(target)} ran`;
    // By name, not instanceof: the DOMException of AbortSignal.timeout may come from another realm.
    const name = (error as { name?: unknown } | null)?.name;
    const reason = name === "TimeoutError" || name === "AbortError" ? "timed out" : error instanceof Error ? error.message : String(error);
    return `hook ${describe(target)} failed: ${reason}`;
  };

  return {
    async preToolUse(targets, payload, signal) {
      let argumentsJson = payload.toolCall?.argumentsJson ?? "{}";
      for (const target of targets) {
        let decision: HookDecision;
        try {
          decision = await call(target, { ...payload, ...(payload.toolCall ? { toolCall: { ...payload.toolCall, argumentsJson } } : {}) }, signal);
        } catch (error: unknown) {
          const reason = failure(target, error, signal);
          deps.logger.warn({ err: error, runId: payload.runId, hook: describe(target) }, `pre_tool_use denied (fail closed): ${reason}`);
          return { allowed: false, reason: `${reason} (a failing pre_tool_use hook denies)` };
        }
        if (decision.decision === "deny") return { allowed: false, reason: `denied by hook ${describe(target)}: ${decision.reason ?? "no reason given"}` };
        if (decision.decision === "rewrite") {
          if (decision.argumentsJson === undefined) return { allowed: false, reason: `hook ${describe(target)} answered rewrite without arguments_json (denied)` };
          argumentsJson = decision.argumentsJson;
        }
      }
      return { allowed: true, argumentsJson };
    },

    async postToolUse(targets, payload, result, signal) {
      let current = result;
      for (const target of targets) {
        try {
          const decision = await call(target, { ...payload, toolResult: current }, signal);
          if (decision.decision === "rewrite" && decision.result) current = { ...current, ...decision.result };
        } catch (error: unknown) {
          const reason = failure(target, error, signal);
          deps.logger.warn({ err: error, runId: payload.runId, hook: describe(target) }, `post_tool_use withheld the tool's output (fail closed): ${reason}`);
          return withheldResult(current, `${reason}; the tool ran, but its output is withheld (a failing post_tool_use hook withholds it)`);
        }
      }
      return current;
    },

    async notify(targets, payload, signal) {
      for (const target of targets) {
        try {
          await call(target, payload, signal);
        } catch (error: unknown) {
          deps.logger.warn({ err: error, runId: payload.runId, hook: describe(target) }, `${payload.event} hook failed, the run goes on: ${failure(target, error, signal)}`);
        }
      }
    },
  };
}

/** Rejects as soon as `signal` aborts, whatever `promise` does. */
async function raceSignal<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) throw signal.reason as Error;
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort!);
  }
}

function checkDecision(decision: HookDecision): HookDecision {
  if (!["allow", "deny", "rewrite"].includes(decision.decision)) throw new Error(`answered decision ${JSON.stringify(decision.decision)} (expected allow, deny or rewrite)`);
  return decision;
}

/** The webhook's request body: the payload with snake_case keys, as the rest of the API spells them. */
export function toWebhookBody(payload: HookPayload): Record<string, unknown> {
  return {
    event: payload.event,
    run_id: payload.runId,
    parent_run_id: payload.parentRunId,
    agent_type: payload.agentType,
    iteration: payload.iteration,
    ...(payload.toolCall ? { tool_call: { id: payload.toolCall.id, name: payload.toolCall.name, arguments_json: payload.toolCall.argumentsJson } } : {}),
    ...(payload.toolResult
      ? {
          tool_result: {
            success: payload.toolResult.success,
            output: payload.toolResult.output,
            result_json: payload.toolResult.resultJson,
            error: payload.toolResult.error,
          },
        }
      : {}),
    ...(payload.finish ? { finish: { status: payload.finish.status, stop_reason: payload.finish.stopReason, response: payload.finish.response } } : {}),
  };
}

/** Reads a webhook's answer `{decision, reason?, arguments_json?, result?: {success?, output?, error?}}`; an empty body allows. */
function fromWebhookBody(body: unknown): HookDecision {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new Error("answered something other than a JSON object");
  const value = body as Record<string, unknown>;
  const decision = value.decision ?? "allow";
  if (decision !== "allow" && decision !== "deny" && decision !== "rewrite") throw new Error(`answered decision ${JSON.stringify(decision)} (expected allow, deny or rewrite)`);
  const result = typeof value.result === "object" && value.result !== null ? (value.result as Record<string, unknown>) : undefined;
  return {
    decision,
    ...(typeof value.reason === "string" ? { reason: value.reason } : {}),
    ...(typeof value.arguments_json === "string" ? { argumentsJson: value.arguments_json } : {}),
    ...(result
      ? {
          result: {
            ...(typeof result.success === "boolean" ? { success: result.success } : {}),
            ...(typeof result.output === "string" ? { output: result.output } : {}),
            ...(typeof result.error === "string" ? { error: result.error } : {}),
          },
        }
      : {}),
  };
}
