import { bootstrapService, loadConfig, runMain, serveUntilSignalled } from "@vlinders/service-runtime";
import { orchestratorConfigSchema } from "./config";
import { createOrchestrator } from "./orchestrator";

runMain(async () => {
  const config = loadConfig(orchestratorConfigSchema);
  const runtime = bootstrapService("orchestrator", config);
  const host = createOrchestrator(config, runtime);
  await serveUntilSignalled(host, { host: config.GRPC_HOST, grpcPort: config.GRPC_PORT, metricsPort: config.METRICS_PORT }, runtime.logger);
});
