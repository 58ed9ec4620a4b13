import { databaseOptionsFrom, openDatabase, runMigrations } from "@vlinders/database";
import { ContextServiceDefinition, ToolServiceDefinition } from "@vlinders/proto";
import { createRedisConnection } from "@vlinders/redis";
import {
  createInternalChannel,
  createInternalClient,
  createServiceHost,
  type ServiceHost,
  type ServiceRuntime,
} from "@vlinders/service-runtime";
import { createAdmissionController } from "./admission/admission-controller";
import { createAgentService, OrchestratorAgentServiceDefinition } from "./agent-service";
import { createAgentRunner } from "./agents/agent-loop";
import { loadAgentTypeCatalog, type AgentTypeCatalog } from "./agents/agent-types";
import { RelayInferenceServiceDefinition } from "./agents/chat-agent";
import type { OrchestratorConfig } from "./config";
import { createHookRunner } from "./hooks/hook-runner";
import { loadPluginModules } from "./plugins/plugin-modules";
import { createActiveRuns, createRunCanceller } from "./runs/active-runs";
import { orchestratorMigrations, orchestratorMigrationScope } from "./runs/migrations";
import { createPostgresRunStore } from "./runs/postgres-run-store";
import { startRunSweeper } from "./runs/run-sweeper";
import { createWriteBehindRecorder } from "./runs/write-behind-recorder";

/**
 * How long the start waits for the run records' migrations, those of another replica holding the
 * lock included: long enough for an index build, short enough that a lock nobody releases fails
 * the start with a clear error instead of hanging it.
 */
const migrationDeadlineMs = 300_000;

/** The composed orchestrator: its host, and the catalog that SIGHUP reloads. */
export interface Orchestrator {
  host: ServiceHost;
  catalog: AgentTypeCatalog;
}

/**
 * Composes the orchestrator: the agent types (configs/agents.yaml, checked before anything
 * starts), clients of the inference-broker, the tool-runner and (when CONTEXT_ADDRESS is set) the
 * context service, the run records (PostgreSQL, or an in-process PGlite) with the sweep of runs a
 * crash left running, admission, cancel (across replicas through Redis when it is configured), and
 * the AgentService.
 */
export async function createOrchestrator(config: OrchestratorConfig, runtime: ServiceRuntime): Promise<Orchestrator> {
  const { logger } = runtime;
  // Plugins first: agents.yaml may name their hooks, which are checked as the file is read.
  const plugins = await loadPluginModules(config.ORCHESTRATOR_PLUGINS);
  const catalog = await loadAgentTypeCatalog(config.AGENTS_CONFIG, { logger, hookPlugins: plugins.hooks });
  for (const definition of plugins.agentTypes) catalog.register(definition);

  const database = await openDatabase({
    ...databaseOptionsFrom(config),
    logger,
    service: runtime.service,
  });
  // What is opened before the service is up is closed again if the start fails after it: a
  // failed start must not leave connections (or a PGlite) holding the process open.
  const openedSoFar: Array<() => Promise<void>> = [() => database.close()];
  const closeOpened = async () => {
    for (const close of openedSoFar.reverse()) await close().catch(() => undefined);
  };
  let store, sweeper, redisConnection, activeRuns, canceller;
  try {
    // Bounded: another replica holding the migration lock (or a database that does not answer) must
    // fail the start with a clear error, not hang it.
    await runMigrations(database.pool, { scope: orchestratorMigrationScope, migrations: orchestratorMigrations, logger, signal: AbortSignal.timeout(migrationDeadlineMs) });
    const runStore = createPostgresRunStore({ pool: database.pool, owner: config.ORCHESTRATOR_REPLICA_ID, logger });
    store = runStore;
    openedSoFar.push(() => runStore.close());
    const runSweeper = await startRunSweeper({ store, logger });
    sweeper = runSweeper;
    openedSoFar.push(() => runSweeper.stop());
    if (sweeper.recovered.length > 0) logger.warn({ runs: sweeper.recovered }, "runs this replica left running before it stopped are marked interrupted");

    const redis = config.REDIS_URL === undefined ? undefined : createRedisConnection(config.REDIS_URL, { logger, name: "orchestrator" });
    redisConnection = redis;
    if (redis) openedSoFar.push(() => redis.close());
    if (redis && !(await redis.ready(2_000))) logger.warn("Redis is not reachable yet: CancelAgent reaches only this replica's runs until it is");
    activeRuns = createActiveRuns();
    canceller = await createRunCanceller({ activeRuns, store, logger, ...(redis ? { redis: redis.redis } : {}) });
  } catch (error: unknown) {
    await closeOpened();
    throw error;
  }

  const brokerChannel = createInternalChannel(config.INFERENCE_BROKER_ADDRESS);
  const toolRunnerChannel = createInternalChannel(config.TOOL_RUNNER_ADDRESS);
  const clientOptions = { internalSecret: runtime.internalSecret, defaultDeadlineMs: config.MODEL_CALL_DEADLINE_MS };
  const inference = createInternalClient(RelayInferenceServiceDefinition, brokerChannel, clientOptions);
  // Optional: without it each run keeps its whole conversation itself, uncompacted.
  const contextChannel = config.CONTEXT_ADDRESS === undefined ? undefined : createInternalChannel(config.CONTEXT_ADDRESS);
  const context = contextChannel && createInternalClient(ContextServiceDefinition, contextChannel, { ...clientOptions, defaultDeadlineMs: config.CONTEXT_CALL_DEADLINE_MS });
  const runner = createAgentRunner({
    inference,
    tools: createInternalClient(ToolServiceDefinition, toolRunnerChannel, clientOptions),
    catalog,
    hooks: createHookRunner({ registry: plugins.hooks, logger }),
    pluginTools: plugins.tools,
    recorder: createWriteBehindRecorder(store, logger),
    activeRuns,
    logger,
    ...(context ? { context } : {}),
    limits: { contextDeadlineMs: config.CONTEXT_CALL_DEADLINE_MS },
  });

  const host = createServiceHost(runtime);
  host.add(
    OrchestratorAgentServiceDefinition,
    createAgentService({
      inference,
      runner,
      catalog,
      store,
      activeRuns,
      canceller,
      admission: createAdmissionController({
        maxConcurrentRuns: config.MAX_CONCURRENT_RUNS,
        maxQueuedRuns: config.MAX_QUEUED_RUNS,
        queueTimeoutMs: config.ADMISSION_QUEUE_TIMEOUT_MS,
        registry: runtime.metricsRegistry,
      }),
    }),
  );
  host.onShutdown(async () => {
    brokerChannel.close();
    toolRunnerChannel.close();
    contextChannel?.close();
    await sweeper.stop();
    await canceller.close();
    await store.close();
    await redisConnection?.close();
    await database.close();
  });
  return { host, catalog };
}
