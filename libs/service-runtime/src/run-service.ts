import { ConfigError } from "./config";
import type { Logger } from "./logger";
import type { ListenOptions, ServiceHost } from "./service-host";

/**
 * Starts a composed service: listens, logs one `listening` line with the bound ports (the mesh
 * launcher reads it), and shuts down gracefully on SIGINT or SIGTERM.
 */
export async function serveUntilSignalled(host: ServiceHost, listen: ListenOptions, logger: Logger): Promise<void> {
  const ports = await host.listen(listen);
  logger.info({ grpc_port: ports.grpcPort, metrics_port: ports.metricsPort }, "listening");
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.warn({ signal }, "second signal; exiting now");
      process.exit(1);
    }
    signalled = true;
    logger.info({ signal }, "shutting down");
    host.shutdown().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

/**
 * Runs a service's main function. A configuration error prints one clear line naming the variable
 * and exits with status 78 (EX_CONFIG); anything else that escapes is fatal.
 */
export function runMain(main: () => Promise<void>): void {
  process.on("unhandledRejection", (reason) => {
    process.stderr.write(`fatal: unhandled rejection: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}\n`);
    process.exit(1);
  });
  main().catch((error: unknown) => {
    const isConfigError = error instanceof ConfigError;
    process.stderr.write(`fatal: ${error instanceof Error ? (isConfigError ? error.message : (error.stack ?? error.message)) : String(error)}\n`);
    process.exit(isConfigError ? 78 : 1);
  });
}
