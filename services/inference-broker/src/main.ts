import { bootstrapService, loadConfig, runMain, serveUntilSignalled } from "@vlinders/service-runtime";
import { brokerConfigSchema } from "./config";
import { createInferenceBroker } from "./inference-broker";

runMain(async () => {
  const config = loadConfig(brokerConfigSchema);
  const runtime = bootstrapService("inference-broker", config);
  const broker = await createInferenceBroker(config, runtime);
  // SIGHUP re-reads the workers (models file or VLLM_URLS), as the ReloadModels RPC does.
  process.on("SIGHUP", () => {
    broker.reload(AbortSignal.timeout(30_000)).then(
      (result) => runtime.logger.info(result, "workers reloaded"),
      (error: unknown) => runtime.logger.error({ err: error }, "reload failed; keeping the workers as they were"),
    );
  });
  await serveUntilSignalled(broker.host, { host: config.GRPC_HOST, grpcPort: config.GRPC_PORT, metricsPort: config.METRICS_PORT }, runtime.logger);
});
