import { commonConfigShape, millisecondsVariable, portVariable } from "@vlinders/service-runtime";
import { z } from "zod";

export const brokerConfigSchema = z.object({
  ...commonConfigShape,
  GRPC_PORT: portVariable(50053),
  /** Comma-separated worker base URLs; when set, models are discovered from each worker's /v1/models. */
  VLLM_URLS: z.string().optional(),
  /** Model catalog used when VLLM_URLS is unset. */
  MODELS_CONFIG: z.string().default("configs/models.yaml"),
  /** With VLLM_URLS: the model used when a request names none (default: the first discovered). */
  DEFAULT_MODEL: z.string().optional(),
  /** With VLLM_URLS: how often workers are asked again which models they serve. */
  DISCOVERY_INTERVAL_MS: millisecondsVariable(30_000),
  WORKER_CONNECT_TIMEOUT_MS: millisecondsVariable(10_000),
  WORKER_FIRST_TOKEN_TIMEOUT_MS: millisecondsVariable(120_000),
  WORKER_IDLE_TIMEOUT_MS: millisecondsVariable(30_000),
});

export type BrokerConfig = z.infer<typeof brokerConfigSchema>;
