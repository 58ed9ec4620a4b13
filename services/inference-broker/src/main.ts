import {
  bootstrapService,
  loadConfig,
  runMain,
  serveUntilSignalled,
} from "@vlinders/service-runtime";
import { brokerConfigSchema } from "./config";
import { createInferenceBroker } from "./inference-broker";

runMain(async () => {
  const config = loadConfig(brokerConfigSchema);
  const runtime = bootstrapService("inference-broker", config);
  const host = await createInferenceBroker(config, runtime);
  await serveUntilSignalled(host, { host: config.GRPC_HOST, grpcPort: config.GRPC_PORT, metricsPort: config.METRICS_PORT }, runtime.logger);
});
