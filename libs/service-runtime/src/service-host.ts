import { setMaxListeners } from "node:events";
import { fileDescriptorSet } from "@vlinders/proto";
import type { CompatServiceDefinition, ServiceImplementation } from "nice-grpc";
import { HealthDefinition, HealthServiceImpl, HealthState } from "nice-grpc-server-health";
import { ServerReflection, ServerReflectionService } from "nice-grpc-server-reflection";
import type { Registry } from "prom-client";
import type { Logger } from "./logger";
import { createGrpcServerMetrics, startMetricsServer } from "./metrics";
import { createCallPipeline } from "./middleware/call-pipeline";
import { createCallSignalInterceptor } from "./middleware/call-signal";
import { ServiceShutdownError } from "./shutdown-error";
import { createGrpcServer, type GrpcServer } from "./transport/grpc-server";

export interface ServiceHostOptions {
  service: string;
  logger: Logger;
  metricsRegistry: Registry;
  internalSecret: string;
  /** How long in-flight calls may run on after shutdown begins before they are aborted. */
  shutdownGraceMs: number;
  /** How long to report NOT_SERVING while still accepting calls before refusing new ones. */
  shutdownDrainDelayMs?: number;
}

export interface ListenOptions {
  host: string;
  grpcPort: number;
  /** Omit to serve no metrics endpoint (tests that start many servers in one process). */
  metricsPort?: number;
}

export interface ServiceHost {
  /** Serves a service behind the mesh's middleware; exposed through reflection and health. */
  add<Definition extends CompatServiceDefinition>(definition: Definition, implementation: ServiceImplementation<Definition>): void;
  /** Starts listening; resolves with the bound ports (useful with port 0). */
  listen(options: ListenOptions): Promise<{ grpcPort: number; metricsPort?: number }>;
  /** Runs once the server has drained, in registration order (close clients, pools, databases). */
  onShutdown(cleanup: () => Promise<void> | void): void;
  /**
   * Health turns NOT_SERVING, new calls are refused, in-flight calls (streams included) may finish
   * within the grace period, then they are aborted. Resolves when everything is closed.
   */
  shutdown(): Promise<void>;
  /** Aborted when the grace period after shutdown has passed; long work should listen to it. */
  readonly shutdownSignal: AbortSignal;
}

/** `grpc.health.v1` and server reflection are built in. */
const healthServiceName = HealthDefinition.fullName;

export function createServiceHost(options: ServiceHostOptions): ServiceHost {
  const { logger } = options;
  // Aborts in-flight calls once the grace period is over.
  const shutdownController = new AbortController();
  // Aborts endless streams (health Watch) the moment draining begins, so they do not hold it up.
  const drainingController = new AbortController();
  // Every call in flight listens to these two: thousands of listeners is the normal case here.
  setMaxListeners(0, shutdownController.signal, drainingController.signal);
  const healthState = HealthState();
  const exposedServices: string[] = [];
  const cleanups: Array<() => Promise<void> | void> = [];
  let server: GrpcServer | undefined = createGrpcServer({
    interceptor: createCallPipeline({
      logger,
      metrics: createGrpcServerMetrics(options.metricsRegistry),
      internalSecret: options.internalSecret,
      shutdownSignal: shutdownController.signal,
    }),
  });
  server.add(HealthDefinition, HealthServiceImpl(healthState), { interceptor: createCallSignalInterceptor(drainingController.signal) });
  let metricsServer: { close(): Promise<void> } | undefined;
  let shutdownPromise: Promise<void> | undefined;

  function requireServer(): GrpcServer {
    if (!server) throw new Error(`${options.service}: the server has been shut down`);
    return server;
  }

  return {
    shutdownSignal: shutdownController.signal,

    add(definition, implementation) {
      requireServer().add(definition, implementation);
      const fullName = (definition as { fullName?: string }).fullName;
      if (fullName) {
        exposedServices.push(fullName);
        healthState.setStatus("healthy", fullName);
      }
    },

    async listen(listenOptions) {
      const activeServer = requireServer();
      activeServer.add(ServerReflectionService, ServerReflection(fileDescriptorSet, [...exposedServices, healthServiceName]));
      const grpcPort = await activeServer.listen(listenOptions.host, listenOptions.grpcPort);
      let metricsPort: number | undefined;
      if (listenOptions.metricsPort !== undefined) {
        const started = await startMetricsServer(options.metricsRegistry, {
          host: listenOptions.host,
          port: listenOptions.metricsPort,
        });
        metricsServer = started;
        metricsPort = started.port;
      }
      healthState.setStatus("healthy");
      return metricsPort === undefined ? { grpcPort } : { grpcPort, metricsPort };
    },

    onShutdown(cleanup) {
      cleanups.push(cleanup);
    },

    shutdown() {
      shutdownPromise ??= (async () => {
        const activeServer = requireServer();
        healthState.setStatus("unhealthy");
        for (const name of exposedServices) healthState.setStatus("unhealthy", name);
        if (options.shutdownDrainDelayMs) {
          logger.info({ delay_ms: options.shutdownDrainDelayMs }, "reporting NOT_SERVING before refusing calls");
          await new Promise((resolve) => setTimeout(resolve, options.shutdownDrainDelayMs));
        }
        drainingController.abort();
        logger.info({ grace_ms: options.shutdownGraceMs }, "draining in-flight calls");
        const graceTimer = setTimeout(() => {
          logger.warn("grace period over; aborting in-flight calls");
          shutdownController.abort(new ServiceShutdownError());
        }, options.shutdownGraceMs);
        // Aborted handlers end quickly, but a handler that ignores its signal must not hold the
        // process forever: after a further moment the transport is torn down.
        const forceTimer = setTimeout(() => activeServer.forceShutdown(), options.shutdownGraceMs + 2_000);
        try {
          await activeServer.shutdown();
        } finally {
          clearTimeout(graceTimer);
          clearTimeout(forceTimer);
          shutdownController.abort(new ServiceShutdownError());
          server = undefined;
        }
        for (const cleanup of cleanups) {
          try {
            await cleanup();
          } catch (error: unknown) {
            logger.error({ err: error }, "cleanup failed during shutdown");
          }
        }
        await metricsServer?.close();
        logger.info("stopped");
      })();
      return shutdownPromise;
    },
  };
}
