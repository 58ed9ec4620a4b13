import type { AgentBudgets } from "./agent-types";

/**
 * The limits of one top-level run, shared by its sub-agents: tokens and tool calls are drawn from
 * one pool, and one deadline ends them all. Every counter changes on the event loop only, so plain
 * numbers are enough.
 */
export interface RunBudget {
  readonly limits: AgentBudgets;
  /** Aborts when the run's timeout_ms has passed. */
  readonly deadline: AbortSignal;
  readonly tokensUsed: number;
  readonly toolCallsUsed: number;
  /** US dollars spent so far, as priced by the agents file. */
  readonly costUsd: number;
  addTokens(tokens: number): void;
  addCost(usd: number): void;
  /** Whether the run's max_cost_usd is spent (checked after each model call); never without one. */
  costExhausted(): boolean;
  /** Whether the pool's tokens are used up (checked after each model call). */
  tokensExhausted(): boolean;
  /** Takes up to `count` tool calls from the pool; returns how many were granted. */
  takeToolCalls(count: number): number;
}

/** A fresh pool for a top-level run. */
export function createRunBudget(limits: AgentBudgets): RunBudget {
  let tokensUsed = 0;
  let toolCallsUsed = 0;
  let costUsd = 0;
  const deadline = AbortSignal.timeout(limits.timeoutMs);
  return {
    limits,
    deadline,
    get tokensUsed() {
      return tokensUsed;
    },
    get toolCallsUsed() {
      return toolCallsUsed;
    },
    get costUsd() {
      return costUsd;
    },
    addTokens(tokens) {
      tokensUsed += tokens;
    },
    addCost(usd) {
      costUsd += usd;
    },
    costExhausted: () => limits.maxCostUsd !== undefined && costUsd >= limits.maxCostUsd,
    tokensExhausted: () => tokensUsed >= limits.maxTokens,
    takeToolCalls(count) {
      const granted = Math.max(0, Math.min(count, limits.maxToolCalls - toolCallsUsed));
      toolCallsUsed += granted;
      return granted;
    },
  };
}
