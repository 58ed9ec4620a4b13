import { hostname } from "node:os";
import { databaseConfigShape } from "@vlinders/database";
import { addressVariable, commonConfigShape, millisecondsVariable, optionalAddressVariable, portVariable } from "@vlinders/service-runtime";
import { z } from "zod";

export const orchestratorConfigSchema = z.object({
  ...commonConfigShape,
  GRPC_PORT: portVariable(50052),
  INFERENCE_BROKER_ADDRESS: addressVariable("127.0.0.1:50053"),
  TOOL_RUNNER_ADDRESS: addressVariable("127.0.0.1:50054"),
  /**
   * The context service: each run's conversation is kept there and compacted before it overflows
   * the agent type's context_budget_tokens. Unset: each run keeps its whole conversation itself.
   */
  CONTEXT_ADDRESS: optionalAddressVariable(),
  /** Deadline of each call to the context service (an append may wait for a summary from the broker). */
  CONTEXT_CALL_DEADLINE_MS: millisecondsVariable(30_000),
  /** Longest a model call may take when the caller set no shorter deadline. */
  MODEL_CALL_DEADLINE_MS: millisecondsVariable(600_000),
  /**
   * Plugin modules (comma-separated paths, relative to the working directory), each exporting
   * `register({ hooks, tools, agentTypes })`: in-process hooks, tools and agent types.
   */
  ORCHESTRATOR_PLUGINS: z.string().default(""),
  /** The agent types; SIGHUP re-reads the file (an invalid one keeps the types as they were). */
  AGENTS_CONFIG: z.string().default("configs/agents.yaml"),
  /** Agent runs executing at once in this replica; more wait in a queue that is fair across users. */
  MAX_CONCURRENT_RUNS: z.coerce.number().int().positive().default(64),
  /** Runs that may wait for a slot; one more is refused at once with RESOURCE_EXHAUSTED. */
  MAX_QUEUED_RUNS: z.coerce.number().int().min(0).default(256),
  /** Longest a run waits in the queue before it is refused. */
  ADMISSION_QUEUE_TIMEOUT_MS: millisecondsVariable(60_000),
  /** Names this replica on its run records, so that at restart it marks its own unfinished runs interrupted. */
  ORCHESTRATOR_REPLICA_ID: z.string().min(1).default(hostname()),
  /** Runs, tool calls and stats (DATABASE_URL); an in-process PGlite when unset. */
  ...databaseConfigShape,
  /** With several replicas, CancelAgent reaches a run on another replica through Redis; unset: one replica. */
  REDIS_URL: z.string().url().optional(),
});

export type OrchestratorConfig = z.infer<typeof orchestratorConfigSchema>;
