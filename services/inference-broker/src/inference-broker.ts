import { InferenceServiceDefinition } from "@vlinders/proto";
import { createServiceHost, type ServiceHost, type ServiceRuntime } from "@vlinders/service-runtime";
import type { BrokerConfig } from "./config";
import { createInferenceService } from "./inference-service";
import { discoverModels, parseWorkerUrls } from "./registry/discovery";
import { ModelRegistry } from "./registry/model-registry";
import { loadModelsConfig } from "./registry/models-config";
import { createRoundRobinPicker } from "./routing/round-robin";
import { WorkerClient } from "./upstream/worker-client";

/**
 * Composes the inference-broker: the model registry (from VLLM_URLS discovery or the models
 * file), the worker client and the InferenceService, on a service host ready to listen.
 */
export async function createInferenceBroker(config: BrokerConfig, runtime: ServiceRuntime): Promise<ServiceHost> {
  const { logger } = runtime;
  const workers = new WorkerClient({
    connectMs: config.WORKER_CONNECT_TIMEOUT_MS,
    firstEventMs: config.WORKER_FIRST_TOKEN_TIMEOUT_MS,
    idleMs: config.WORKER_IDLE_TIMEOUT_MS,
  });
  const registry = new ModelRegistry();
  const host = createServiceHost(runtime);

  if (config.VLLM_URLS !== undefined) {
    const endpoints = parseWorkerUrls(config.VLLM_URLS);
    const discover = async () => {
      const catalog = await discoverModels(endpoints, workers, {
        logger,
        signal: AbortSignal.timeout(config.WORKER_CONNECT_TIMEOUT_MS),
        ...(config.DEFAULT_MODEL === undefined ? {} : { defaultModel: config.DEFAULT_MODEL }),
      });
      // Keep serving what was known when every worker is briefly unreachable.
      if (catalog.models.length > 0 || registry.list().length === 0) registry.replace(catalog);
      return catalog;
    };
    const catalog = await discover();
    logger.info({ workers: endpoints.map((worker) => worker.url), models: catalog.models.map((model) => model.id) }, "workers discovered");
    const rediscovery = setInterval(() => {
      discover().catch((error: unknown) => logger.warn({ err: error }, "model rediscovery failed"));
    }, config.DISCOVERY_INTERVAL_MS);
    rediscovery.unref();
    host.onShutdown(() => clearInterval(rediscovery));
  } else {
    const catalog = await loadModelsConfig(config.MODELS_CONFIG);
    registry.replace(catalog);
    logger.info({ config: config.MODELS_CONFIG, models: catalog.models.map((model) => model.id) }, "model catalog loaded");
  }

  host.add(InferenceServiceDefinition, createInferenceService({ registry, picker: createRoundRobinPicker(), workers }));
  return host;
}
