import { bootstrapService, loadConfig, runMain, serveUntilSignalled } from "@vlinders/service-runtime";
import { contextConfigSchema } from "./config";
import { createContextServer } from "./context-server";

runMain(async () => {
  const config = loadConfig(contextConfigSchema);
  const runtime = bootstrapService("context", config);
  const host = await createContextServer(config, runtime);
  await serveUntilSignalled(host, { host: config.GRPC_HOST, grpcPort: config.GRPC_PORT, metricsPort: config.METRICS_PORT }, runtime.logger);
});
