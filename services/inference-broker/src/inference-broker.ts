import { databaseOptionsFrom, openDatabase, runMigrations } from "@vlinders/database";
import { InferenceAdminServiceDefinition, WorkerHealth } from "@vlinders/proto";
import { createServiceHost, type ServiceHost, type ServiceRuntime } from "@vlinders/service-runtime";
import { createInferenceAdminService } from "./admin-service";
import { createBrokerMetrics } from "./broker-metrics";
import { createInProcessResponseCache, createRedisResponseCache } from "./cache/response-cache";
import { defaultModelsConfig, type BrokerConfig } from "./config";
import { ChatDispatcher } from "./dispatch/chat-dispatcher";
import { RetryBudget } from "./dispatch/retry-budget";
import { BrokerInferenceServiceDefinition, createInferenceService } from "./inference-service";
import { startHealthProber } from "./pool/health-prober";
import { WorkerPool } from "./pool/worker-pool";
import { createKeyVault, parseMasterKey } from "./providers/key-vault";
import { brokerMigrations } from "./providers/migrations";
import { createUsageRecorder } from "./providers/usage-recorder";
import { createInProcessQuotaLimiter, createRedisQuotaLimiter } from "./quotas/quota-limiter";
import { createRedisConnection } from "@vlinders/redis";
import { applyModelSettings, describeWorkers, discoverModels, parseWorkerUrls } from "./registry/discovery";
import { OperatorEdits } from "./registry/catalog-edits";
import { ModelRegistry, type ModelCatalog } from "./registry/model-registry";
import { loadModelSettings, loadModelsConfig, type ModelSettings } from "./registry/models-config";
import { WorkerRouter } from "./routing/worker-router";
import { WorkerClient } from "./upstream/worker-client";

/** Who asked for a reload: an operator (start, SIGHUP, ReloadModels) or the periodic rediscovery. */
export type ReloadOrigin = "operator" | "rediscovery";

/** The composed broker: its host, and the reload that SIGHUP and the admin RPC trigger. */
export interface InferenceBroker {
  host: ServiceHost;
  /** An operator's reload (the default) fails on a broken models file; rediscovery keeps its last good settings. */
  reload(signal: AbortSignal, origin?: ReloadOrigin): Promise<{ models: string[]; added: string[]; removed: string[] }>;
}

/**
 * Composes the inference-broker: the worker pool (from VLLM_URLS discovery or the models file)
 * with health probes, the router, the response cache and quotas (Redis, or in process), the key
 * vault and usage records (PostgreSQL, or an in-process PGlite), and the two gRPC services.
 */
export async function createInferenceBroker(config: BrokerConfig, runtime: ServiceRuntime): Promise<InferenceBroker> {
  const { logger } = runtime;
  const metrics = createBrokerMetrics(runtime.metricsRegistry);
  const workers = new WorkerClient({
    connectMs: config.WORKER_CONNECT_TIMEOUT_MS,
    firstEventMs: config.WORKER_FIRST_TOKEN_TIMEOUT_MS,
    idleMs: config.WORKER_IDLE_TIMEOUT_MS,
  });
  const registry = new ModelRegistry();
  const pool = new WorkerPool(
    { ejectAfterFailures: config.EJECT_AFTER_FAILURES, ejectCooldownMs: config.EJECT_COOLDOWN_MS, metricsStaleAfterMs: config.METRICS_STALE_AFTER_MS },
    ({ worker, change }) => {
      metrics.workerHealthy.set({ worker: worker.id }, worker.health === WorkerHealth.WORKER_HEALTH_HEALTHY ? 1 : 0);
      if (change === "removed") {
        metrics.workerHealthy.remove({ worker: worker.id });
        metrics.workerInFlight.remove({ worker: worker.id });
      }
      if (change !== "added") logger.info({ worker: worker.id, change, reason: worker.lastError || undefined }, "worker changed");
    },
  );
  const host = createServiceHost(runtime);

  // The models file beside VLLM_URLS, as last read: its settings go on top of every catalog,
  // AddWorker's included.
  let modelSettings: ModelSettings | undefined;
  const readModelSettings = async (path: string, origin: ReloadOrigin): Promise<void> => {
    try {
      modelSettings = await loadModelSettings(path);
    } catch (error: unknown) {
      // An operator's reload reports the broken file; the periodic rediscovery must not stop
      // finding workers' models over it, so it keeps the last good settings.
      if (origin === "operator" || modelSettings === undefined) throw error;
      logger.error({ err: error }, "the models file cannot be used; rediscovery keeps its last good settings");
    }
  };
  const withModelSettings = (catalog: ModelCatalog): ModelCatalog => (modelSettings ? applyModelSettings(catalog, modelSettings) : catalog);
  const loadCatalog = async (signal: AbortSignal, origin: ReloadOrigin): Promise<ModelCatalog> => {
    if (config.VLLM_URLS === undefined) return loadModelsConfig(config.MODELS_CONFIG ?? defaultModelsConfig);
    // Read on every reload, like the catalog file: SIGHUP picks up edited aliases and quotas.
    if (config.MODELS_CONFIG !== undefined) await readModelSettings(config.MODELS_CONFIG, origin);
    const endpoints = parseWorkerUrls(config.VLLM_URLS);
    return discoverModels(modelSettings ? describeWorkers(endpoints, modelSettings, config.MODELS_CONFIG ?? "") : endpoints, workers, {
      logger,
      signal: AbortSignal.any([signal, AbortSignal.timeout(config.WORKER_CONNECT_TIMEOUT_MS)]),
      previous: registry.current(),
      ...(config.DEFAULT_MODEL === undefined ? {} : { defaultModel: config.DEFAULT_MODEL }),
      ...(config.DEFAULT_EMBEDDING_MODEL === undefined ? {} : { defaultEmbeddingModel: config.DEFAULT_EMBEDDING_MODEL }),
    });
  };
  const operatorEdits = new OperatorEdits();
  const reload = async (signal: AbortSignal, origin: ReloadOrigin = "operator") => {
    const catalog = withModelSettings(operatorEdits.apply(await loadCatalog(signal, origin)));
    // Rediscovery that reached no worker keeps what is known rather than emptying the pool.
    if (catalog.models.length === 0 && registry.list().length > 0) return { models: registry.list().map((model) => model.id), added: [], removed: [] };
    registry.replace(catalog);
    const { added, removed } = pool.sync(catalog);
    return { models: catalog.models.map((model) => model.id), added, removed };
  };

  const initial = await reload(AbortSignal.timeout(config.WORKER_CONNECT_TIMEOUT_MS + 1_000));
  const source =
    config.VLLM_URLS === undefined ? (config.MODELS_CONFIG ?? defaultModelsConfig) : config.MODELS_CONFIG === undefined ? "VLLM_URLS" : `VLLM_URLS with ${config.MODELS_CONFIG}`;
  logger.info({ source, models: initial.models, workers: initial.added }, "workers configured");
  const prober = startHealthProber(pool, { intervalMs: config.HEALTH_PROBE_INTERVAL_MS, timeoutMs: config.HEALTH_PROBE_TIMEOUT_MS }, logger);
  host.onShutdown(() => prober.stop());
  // Probe once before serving, so the first requests are routed on real health and load.
  await prober.probeNow();
  if (config.VLLM_URLS !== undefined) {
    const rediscovery = setInterval(() => {
      reload(AbortSignal.timeout(config.WORKER_CONNECT_TIMEOUT_MS), "rediscovery").catch((error: unknown) => logger.warn({ err: error }, "model rediscovery failed"));
    }, config.DISCOVERY_INTERVAL_MS);
    rediscovery.unref();
    host.onShutdown(() => clearInterval(rediscovery));
  }

  const redisConnection = config.REDIS_URL === undefined ? undefined : createRedisConnection(config.REDIS_URL, { logger, name: "inference-broker" });
  if (redisConnection && !(await redisConnection.ready(2_000))) logger.warn("Redis is not reachable yet: cache misses and open quotas until it is");
  const cache = redisConnection
    ? createRedisResponseCache({ redis: redisConnection.redis, logger, ttlSeconds: config.INFERENCE_CACHE_TTL_S, keyPrefix: config.REDIS_KEY_PREFIX })
    : createInProcessResponseCache({ maxEntries: config.INFERENCE_CACHE_MAX_ENTRIES, maxBytes: config.INFERENCE_CACHE_MAX_BYTES, ttlSeconds: config.INFERENCE_CACHE_TTL_S });
  const quotas = redisConnection ? createRedisQuotaLimiter({ redis: redisConnection.redis, logger, keyPrefix: config.REDIS_KEY_PREFIX }) : createInProcessQuotaLimiter();

  const database = await openDatabase({
    ...databaseOptionsFrom(config),
    logger,
    service: runtime.service,
  });
  await runMigrations(database.pool, { scope: "inference-broker", migrations: brokerMigrations });
  const vault = config.VAULT_MASTER_KEY === undefined ? undefined : createKeyVault({ pool: database.pool, masterKey: parseMasterKey(config.VAULT_MASTER_KEY) });
  const usage = createUsageRecorder({ pool: database.pool, logger, flushIntervalMs: config.USAGE_FLUSH_INTERVAL_MS });

  const dispatcher = new ChatDispatcher({
    registry,
    pool,
    router: new WorkerRouter({ metricsStaleAfterMs: config.METRICS_STALE_AFTER_MS, affinitySlack: 0.25, maxSessions: 100_000 }),
    workers,
    metrics,
    retryBudget: new RetryBudget(),
    logger,
    maxAttempts: config.FAILOVER_MAX_ATTEMPTS,
    cache,
    quotas,
    usage,
    ...(vault ? { vault } : {}),
  });
  host.add(BrokerInferenceServiceDefinition, createInferenceService({ registry, pool, dispatcher }));
  host.add(InferenceAdminServiceDefinition, createInferenceAdminService({ registry, pool, workers, reload, withModelSettings, operatorEdits, usage, ...(vault ? { vault } : {}) }));
  host.onShutdown(async () => {
    await usage.close();
    await cache.close();
    await quotas.close();
    await redisConnection?.close();
    await database.close();
  });
  return { host, reload };
}
