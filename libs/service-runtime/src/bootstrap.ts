import type { Registry } from "prom-client";
import { resolveInternalSecret, type CommonConfig } from "./config";
import { createLogger, type Logger } from "./logger";
import { createMetricsRegistry } from "./metrics";
import { initTracing } from "./tracing";

/** What a service's composition function needs besides its own configuration. */
export interface ServiceRuntime {
  service: string;
  logger: Logger;
  metricsRegistry: Registry;
  internalSecret: string;
  shutdownGraceMs: number;
  shutdownDrainDelayMs: number;
}

/**
 * The first lines of every main.ts: tracing before anything else, then logs, metrics and the
 * shared secret (production refuses to start without one; elsewhere the development default is
 * used with a warning).
 */
export function bootstrapService(service: string, config: CommonConfig): ServiceRuntime {
  initTracing({ service });
  const logger = createLogger({ service, level: config.LOG_LEVEL });
  const { secret, isDevelopmentDefault } = resolveInternalSecret(config);
  if (isDevelopmentDefault) {
    logger.warn("INTERNAL_SECRET is unset: using the development default secret; never do this outside development");
  }
  return {
    service,
    logger,
    metricsRegistry: createMetricsRegistry(service),
    internalSecret: secret,
    shutdownGraceMs: config.SHUTDOWN_GRACE_MS,
    shutdownDrainDelayMs: config.SHUTDOWN_DRAIN_DELAY_MS,
  };
}
