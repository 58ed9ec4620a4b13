import type { ServiceRuntime } from "./bootstrap";
import { createLogger } from "./logger";
import { createMetricsRegistry } from "./metrics";

/**
 * A runtime for running a service inside another process (integration tests, benchmarks): no
 * global tracing set-up, logs off unless LOG_LEVEL is set, its own metrics registry.
 */
export function createInProcessRuntime(service: string, overrides: Partial<ServiceRuntime> = {}): ServiceRuntime {
  return {
    service,
    logger: createLogger({ service, level: process.env.LOG_LEVEL ?? "silent" }),
    metricsRegistry: createMetricsRegistry(service),
    internalSecret: "in-process-secret-0123456789",
    shutdownGraceMs: 2_000,
    shutdownDrainDelayMs: 0,
    ...overrides,
  };
}
