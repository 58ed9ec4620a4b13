import { databaseOptionsFrom, openDatabase, runMigrations } from "@vlinders/database";
import { InferenceServiceDefinition } from "@vlinders/proto";
import { createRedisConnection } from "@vlinders/redis";
import {
  createInternalChannel,
  createInternalClient,
  createServiceHost,
  type ServiceHost,
  type ServiceRuntime,
} from "@vlinders/service-runtime";
import { createInProcessWindowCache, createRedisWindowCache } from "./cache/window-cache";
import { createBrokerSummarizer } from "./compaction/broker-summarizer";
import type { ContextConfig } from "./config";
import { createContextMetrics } from "./context-metrics";
import { ContextServiceDefinition, createContextService } from "./context-service";
import { createMemoryStore } from "./memory/memory-store";
import { createConversationStore } from "./store/conversation-store";
import { contextMigrations } from "./store/migrations";
import { effectiveBudget } from "./tokens/token-estimator";

/** Longest the migrations may take at start. */
/** As the orchestrator's: long enough for an index build, bounded against a lock nobody releases. */
const migrationDeadlineMs = 300_000;

/**
 * Composes the context service: PostgreSQL (or an in-process PGlite) with its migrations, the
 * window cache (Redis, or in process), a client of the inference-broker for summaries, and the
 * ContextService.
 */
export async function createContextServer(config: ContextConfig, runtime: ServiceRuntime): Promise<ServiceHost> {
  const { logger } = runtime;
  const database = await openDatabase({
    ...databaseOptionsFrom(config),
    logger,
    service: runtime.service,
    schema: config.DATABASE_SCHEMA,
  });
  try {
    await runMigrations(database.pool, { scope: "context", migrations: contextMigrations, logger, signal: AbortSignal.timeout(migrationDeadlineMs) });
  } catch (error: unknown) {
    await database.close();
    throw error;
  }

  const redisConnection = config.REDIS_URL === undefined ? undefined : createRedisConnection(config.REDIS_URL, { logger, name: "context-windows" });
  if (redisConnection && !(await redisConnection.ready(2_000))) logger.warn("Redis is not reachable yet: windows are read from PostgreSQL until it is");
  const cache = redisConnection
    ? createRedisWindowCache({ redis: redisConnection.redis, keyPrefix: config.REDIS_KEY_PREFIX, ttlSeconds: config.CONTEXT_WINDOW_CACHE_TTL_S, logger })
    : createInProcessWindowCache({ maxEntries: config.CONTEXT_WINDOW_CACHE_MAX_ENTRIES, ttlSeconds: config.CONTEXT_WINDOW_CACHE_TTL_S });

  const brokerChannel = createInternalChannel(config.INFERENCE_BROKER_ADDRESS);
  const inference = createInternalClient(InferenceServiceDefinition, brokerChannel, {
    internalSecret: runtime.internalSecret,
    defaultDeadlineMs: config.SUMMARY_DEADLINE_MS,
  });

  const host = createServiceHost(runtime);
  host.add(
    ContextServiceDefinition,
    createContextService({
      conversations: createConversationStore({
        pool: database.pool,
        effectiveBudget: (model, budgetTokens) => effectiveBudget(model, budgetTokens, config.CONTEXT_DEFAULT_BUDGET_TOKENS),
      }),
      memories: createMemoryStore(database.pool),
      cache,
      summarize: createBrokerSummarizer({ inference, model: config.SUMMARY_MODEL, deadlineMs: config.SUMMARY_DEADLINE_MS }),
      compaction: {
        threshold: config.CONTEXT_COMPACTION_THRESHOLD,
        keepToolOutputs: config.CONTEXT_KEEP_TOOL_OUTPUTS,
        keepLastMessages: config.CONTEXT_KEEP_LAST_MESSAGES,
        summaryMaxTokens: config.SUMMARY_MAX_TOKENS,
      },
      defaultBudgetTokens: config.CONTEXT_DEFAULT_BUDGET_TOKENS,
      metrics: createContextMetrics(runtime.metricsRegistry),
      logger,
    }),
  );
  host.onShutdown(async () => {
    brokerChannel.close();
    await redisConnection?.close();
    await database.close();
  });
  return host;
}
