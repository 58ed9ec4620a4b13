import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { CommandKillReason } from "./sandbox";

/** What the sandbox records; all names start with `tool_runner_sandbox_`. */
export interface SandboxMetrics {
  readonly poolIdle: Gauge;
  readonly poolBusy: Gauge;
  readonly poolTarget: Gauge;
  /** How long a session waited for its container: `warm` is a hand-over, `cold` a container start. */
  readonly acquireSeconds: Histogram<"kind">;
  readonly containerStarts: Counter;
  readonly kills: Counter<"reason">;
}

/** Returns the metric of that name already in the registry, or registers the one `create` makes. */
function reuseOrRegister<T>(registry: Registry, name: string, create: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? create();
}

/** Registers the sandbox metrics on `registry` (sandboxes sharing a registry share them). */
export function createSandboxMetrics(registry: Registry): SandboxMetrics {
  const registers = [registry];
  return {
    poolIdle: reuseOrRegister(registry, "tool_runner_sandbox_pool_idle", () => new Gauge({
      name: "tool_runner_sandbox_pool_idle",
      help: "Started sandbox containers waiting to be handed to a workspace session.",
      registers,
    })),
    poolBusy: reuseOrRegister(registry, "tool_runner_sandbox_pool_busy", () => new Gauge({
      name: "tool_runner_sandbox_pool_busy",
      help: "Sandbox containers bound to a workspace session.",
      registers,
    })),
    poolTarget: reuseOrRegister(registry, "tool_runner_sandbox_pool_size", () => new Gauge({
      name: "tool_runner_sandbox_pool_size",
      help: "Idle sandbox containers the pool keeps ready (SANDBOX_POOL_SIZE, 0 when the warm pool is off).",
      registers,
    })),
    acquireSeconds: reuseOrRegister(registry, "tool_runner_sandbox_acquire_seconds", () => new Histogram({
      name: "tool_runner_sandbox_acquire_seconds",
      help: "Time for a workspace session to get its container: warm (hand-over of a pooled one) or cold (a container start).",
      labelNames: ["kind"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    })),
    containerStarts: reuseOrRegister(registry, "tool_runner_sandbox_container_starts_total", () => new Counter({
      name: "tool_runner_sandbox_container_starts_total",
      help: "Sandbox containers started (warm pool and cold).",
      registers,
    })),
    kills: reuseOrRegister(registry, "tool_runner_sandbox_kills_total", () => new Counter({
      name: "tool_runner_sandbox_kills_total",
      help: "Commands killed, by reason.",
      labelNames: ["reason"],
      registers,
    })),
  };
}

/** Counts a kill; a no-op for commands that exited by themselves. */
export function recordKill(metrics: SandboxMetrics, reason: CommandKillReason | undefined): void {
  if (reason !== undefined) metrics.kills.inc({ reason });
}
