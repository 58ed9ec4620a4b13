import { databaseConfigShape } from "@vlinders/database";
import { commonConfigShape, millisecondsVariable, portVariable } from "@vlinders/service-runtime";
import { z } from "zod";

const positiveInteger = (fallback: number) => z.coerce.number().int().positive().default(fallback);

export const brokerConfigSchema = z.object({
  ...commonConfigShape,
  GRPC_PORT: portVariable(50053),
  /** Comma-separated worker base URLs; when set, models are discovered from each worker's /v1/models. */
  VLLM_URLS: z
    .string()
    .refine(
      (value) => value.split(",").every((url) => url.trim() === "" || /^https?:\/\/[^\s/]+/.test(url.trim())),
      "must be comma-separated http:// or https:// base URLs, e.g. http://gpu-0:8000,http://gpu-1:8000",
    )
    .optional(),
  /**
   * The models file. Without VLLM_URLS it is the catalog (default configs/models.yaml); beside
   * VLLM_URLS, when set, it gives the discovered models their aliases, routing and quotas.
   */
  MODELS_CONFIG: z.string().optional(),
  /** With VLLM_URLS: the model used when a request names none (default: the first discovered). */
  DEFAULT_MODEL: z.string().optional(),
  /** With VLLM_URLS: the embedding model used when an Embed names none. */
  DEFAULT_EMBEDDING_MODEL: z.string().optional(),
  /** With VLLM_URLS: how often workers are asked again which models they serve. */
  DISCOVERY_INTERVAL_MS: millisecondsVariable(30_000),
  WORKER_CONNECT_TIMEOUT_MS: millisecondsVariable(10_000),
  WORKER_FIRST_TOKEN_TIMEOUT_MS: millisecondsVariable(120_000),
  WORKER_IDLE_TIMEOUT_MS: millisecondsVariable(30_000),
  /** Active health: how often each worker's /health is probed and /metrics scraped. */
  HEALTH_PROBE_INTERVAL_MS: millisecondsVariable(2_000),
  HEALTH_PROBE_TIMEOUT_MS: millisecondsVariable(1_500),
  /** Passive health: consecutive failures that eject a worker, and for how long. */
  EJECT_AFTER_FAILURES: positiveInteger(3),
  EJECT_COOLDOWN_MS: millisecondsVariable(10_000),
  /** Scraped metrics older than this count as missing; the worker is then treated as saturated. */
  METRICS_STALE_AFTER_MS: millisecondsVariable(10_000),
  /** Attempts per request, the first included; retries happen only before the first token. */
  FAILOVER_MAX_ATTEMPTS: positiveInteger(3),
  /** Redis for the response cache and cross-replica quotas; in-process equivalents when unset. */
  REDIS_URL: z.string().optional(),
  /** Put before every key this broker writes to Redis, so that environments can share one Redis. */
  REDIS_KEY_PREFIX: z.string().default(""),
  INFERENCE_CACHE_TTL_S: positiveInteger(3_600),
  /** Bounds of the in-process cache used without Redis. */
  INFERENCE_CACHE_MAX_ENTRIES: positiveInteger(10_000),
  INFERENCE_CACHE_MAX_BYTES: positiveInteger(64 * 1024 * 1024),
  /** PostgreSQL for provider keys and usage (DATABASE_URL); an in-process PGlite when unset. */
  ...databaseConfigShape,
  /** 32 bytes, base64 or hex, that encrypt provider keys at rest. Without it the key vault is off. */
  VAULT_MASTER_KEY: z.string().optional(),
  USAGE_FLUSH_INTERVAL_MS: millisecondsVariable(2_000),
});

export type BrokerConfig = z.infer<typeof brokerConfigSchema>;

/** The models file read when neither VLLM_URLS nor MODELS_CONFIG is set. */
export const defaultModelsConfig = "configs/models.yaml";
