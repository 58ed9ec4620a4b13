import { addressVariable, commonConfigShape, millisecondsVariable, portVariable } from "@vlinders/service-runtime";
import { z } from "zod";

export const orchestratorConfigSchema = z.object({
  ...commonConfigShape,
  GRPC_PORT: portVariable(50052),
  INFERENCE_BROKER_ADDRESS: addressVariable("127.0.0.1:50053"),
  /** Longest a model call may take when the caller set no shorter deadline. */
  MODEL_CALL_DEADLINE_MS: millisecondsVariable(600_000),
});

export type OrchestratorConfig = z.infer<typeof orchestratorConfigSchema>;
