import { bootstrapService, loadConfig, runMain, serveUntilSignalled } from "@vlinders/service-runtime";
import { gatewayConfigSchema } from "./config";
import { createGateway } from "./gateway";

runMain(async () => {
  const config = loadConfig(gatewayConfigSchema);
  const runtime = bootstrapService("gateway", config);
  const host = createGateway(config, runtime);
  await serveUntilSignalled(host, { host: config.GRPC_HOST, grpcPort: config.GRPC_PORT, metricsPort: config.METRICS_PORT }, runtime.logger);
});
