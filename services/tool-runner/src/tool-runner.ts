import { createRedisConnection } from "@vlinders/redis";
import { createServiceHost, type ServiceHost, type ServiceRuntime } from "@vlinders/service-runtime";
import { createInProcessToolResultCache, createRedisToolResultCache } from "./cache/tool-result-cache";
import type { ToolRunnerConfig } from "./config";
import { loadToolPermissions } from "./permissions/tool-permissions";
import { createCommandSandbox } from "./sandbox/create-command-sandbox";
import { createToolMetrics } from "./tool-metrics";
import { createToolService, ToolServiceDefinition } from "./tool-service";
import { createBuiltinTools } from "./tools/builtin-tools";
import { createToolRegistry } from "./tools/tool-registry";
import { createWorkspaces } from "./workspace/workspaces";

/** Longest the start may take: building the sandbox image from scratch, reaping a crash's leftovers, filling the pool. */
const sandboxStartDeadlineMs = 180_000;

/**
 * Composes the tool-runner: the tools and who may use them (configs/tools.yaml and agents.yaml,
 * checked before anything starts), the workspaces, the result cache (Redis, or in process), the
 * command sandbox (Docker with a warm pool, bubblewrap, or none) and the ToolService.
 */
export async function createToolRunner(config: ToolRunnerConfig, runtime: ServiceRuntime): Promise<ServiceHost> {
  const { logger } = runtime;
  const registry = createToolRegistry(
    createBuiltinTools({
      memoryLimitMb: config.SANDBOX_MEMORY_MB,
      outputKillBytes: config.COMMAND_OUTPUT_KILL_BYTES,
      ...(config.RUN_TEST_COMMAND === undefined ? {} : { runTestCommand: config.RUN_TEST_COMMAND }),
      ...(config.WEB_SEARCH_URL === undefined ? {} : { webSearchUrl: config.WEB_SEARCH_URL }),
    }),
  );
  const permissions = await loadToolPermissions(config.AGENTS_CONFIG, config.TOOLS_CONFIG, registry.list());

  const redisConnection = config.REDIS_URL === undefined ? undefined : createRedisConnection(config.REDIS_URL, { logger, name: "tool-runner" });
  if (redisConnection && !(await redisConnection.ready(2_000))) logger.warn("Redis is not reachable yet: tool results are not cached until it is");
  const cacheOptions = { ttlSeconds: config.TOOL_CACHE_TTL_S, tools: registry, logger };
  const cache = redisConnection
    ? createRedisToolResultCache({ ...cacheOptions, redis: redisConnection.redis, keyPrefix: config.REDIS_KEY_PREFIX })
    : createInProcessToolResultCache(cacheOptions);

  const sandbox = await createCommandSandbox({
    config,
    logger,
    metrics: runtime.metricsRegistry,
    signal: AbortSignal.timeout(sandboxStartDeadlineMs),
  });

  const host = createServiceHost(runtime);
  host.add(
    ToolServiceDefinition,
    createToolService({
      registry,
      workspaces: createWorkspaces({ rootPath: config.WORKSPACE_ROOT }),
      permissions,
      cache,
      sandbox,
      limits: {
        defaultTimeoutMs: config.TOOL_DEFAULT_TIMEOUT_MS,
        maxTimeoutMs: config.TOOL_MAX_TIMEOUT_MS,
        outputLimitBytes: config.TOOL_OUTPUT_LIMIT_BYTES,
      },
      metrics: createToolMetrics(runtime.metricsRegistry),
      logger,
    }),
  );
  host.onShutdown(async () => {
    await sandbox.close();
    await cache.close();
    await redisConnection?.close();
  });
  return host;
}
