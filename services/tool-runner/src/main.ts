import { bootstrapService, loadConfig, runMain, serveUntilSignalled } from "@vlinders/service-runtime";
import { toolRunnerConfigSchema } from "./config";
import { createToolRunner } from "./tool-runner";

runMain(async () => {
  const config = loadConfig(toolRunnerConfigSchema);
  const runtime = bootstrapService("tool-runner", config);
  const host = await createToolRunner(config, runtime);
  await serveUntilSignalled(host, { host: config.GRPC_HOST, grpcPort: config.GRPC_PORT, metricsPort: config.METRICS_PORT }, runtime.logger);
});
