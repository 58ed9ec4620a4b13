import { bootstrapService, loadConfig, runMain, serveUntilSignalled } from "@vlinders/service-runtime";
import { orchestratorConfigSchema } from "./config";
import { createOrchestrator } from "./orchestrator";

runMain(async () => {
  const config = loadConfig(orchestratorConfigSchema);
  const runtime = bootstrapService("orchestrator", config);
  const orchestrator = await createOrchestrator(config, runtime);
  // SIGHUP re-reads configs/agents.yaml; an invalid file keeps the agent types as they were.
  process.on("SIGHUP", () => {
    orchestrator.catalog.reload().then(
      (result) => (result.ok ? runtime.logger.info("agent types reloaded") : runtime.logger.error({ error: result.error }, "agent types not reloaded; keeping the old ones")),
      (error: unknown) => runtime.logger.error({ err: error }, "agent types not reloaded; keeping the old ones"),
    );
  });
  await serveUntilSignalled(orchestrator.host, { host: config.GRPC_HOST, grpcPort: config.GRPC_PORT, metricsPort: config.METRICS_PORT }, runtime.logger);
});
