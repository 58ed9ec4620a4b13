import { Counter, Histogram, type Registry } from "prom-client";

export type ToolCallOutcome = "success" | "failure" | "cached" | "rejected";

/** Calls by tool and outcome, and their duration (sandbox metrics live with the sandbox). */
export interface ToolMetrics {
  recordCall(tool: string, outcome: ToolCallOutcome, durationMs: number): void;
}

export function createToolMetrics(registry: Registry): ToolMetrics {
  const calls = new Counter({
    name: "tool_runner_tool_calls_total",
    help: "Tool calls by tool and outcome (success, failure: the tool ran and failed, cached, rejected: a request error)",
    labelNames: ["tool", "outcome"] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "tool_runner_tool_call_duration_seconds",
    help: "Duration of tool calls as the caller sees it",
    labelNames: ["tool", "outcome"] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [registry],
  });
  return {
    recordCall(tool, outcome, durationMs) {
      calls.inc({ tool, outcome });
      duration.observe({ tool, outcome }, durationMs / 1000);
    },
  };
}
