import { databaseConfigShape } from "@vlinders/database";
import { addressVariable, commonConfigShape, millisecondsVariable, portVariable } from "@vlinders/service-runtime";
import { z } from "zod";

const positiveInteger = (fallback: number) => z.coerce.number().int().positive().default(fallback);

export const contextConfigSchema = z.object({
  ...commonConfigShape,
  GRPC_PORT: portVariable(50055),
  /** PostgreSQL for conversations and memories (DATABASE_URL); an in-process PGlite when unset. */
  ...databaseConfigShape,
  /**
   * With DATABASE_URL: the schema the tables live in (created if missing), so that several services
   * or test runs can share one database. Unset: the server's search_path (usually public).
   */
  DATABASE_SCHEMA: z
    .string()
    .regex(/^[a-z_][a-z0-9_]{0,62}$/, "must be a lower-case SQL identifier")
    .optional(),
  /** Redis for hot windows; an in-process LRU when unset. */
  REDIS_URL: z.string().url().optional(),
  /** Put before every Redis key, to separate environments that share one Redis. */
  REDIS_KEY_PREFIX: z.string().default(""),
  /** Lifetime of a cached window; appends invalidate it sooner. */
  CONTEXT_WINDOW_CACHE_TTL_S: positiveInteger(60),
  /** Windows the in-process cache keeps (without REDIS_URL); the least recently used go first. */
  CONTEXT_WINDOW_CACHE_MAX_ENTRIES: positiveInteger(1_000),
  /** The budget of a conversation that names none and whose model family has no known context size. */
  CONTEXT_DEFAULT_BUDGET_TOKENS: positiveInteger(8_192),
  /** Share of the budget past which a window is compacted, and under which compaction stops. */
  CONTEXT_COMPACTION_THRESHOLD: z.coerce.number().gt(0).lte(1).default(0.75),
  /** Stage 1 masks every tool output but this many of the most recent ones. */
  CONTEXT_KEEP_TOOL_OUTPUTS: z.coerce.number().int().min(0).default(2),
  /** Stage 2 summarizes every message but the system messages and this many of the most recent ones. */
  CONTEXT_KEEP_LAST_MESSAGES: z.coerce.number().int().min(1).default(6),
  /** The inference-broker that serves the summary model. */
  INFERENCE_BROKER_ADDRESS: addressVariable("127.0.0.1:50053"),
  /** The small model that writes summaries; unset: the broker's default model. */
  SUMMARY_MODEL: z.string().default(""),
  /** Longest summary asked for; also capped at a fifth of the conversation's budget. */
  SUMMARY_MAX_TOKENS: positiveInteger(512),
  /** Longest a summarization may take; past it the window falls back to dropping old messages. */
  SUMMARY_DEADLINE_MS: millisecondsVariable(20_000),
});

export type ContextConfig = z.infer<typeof contextConfigSchema>;
