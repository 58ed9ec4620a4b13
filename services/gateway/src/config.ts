import { addressVariable, commonConfigShape, millisecondsVariable, portVariable } from "@vlinders/service-runtime";
import { z } from "zod";

export const gatewayConfigSchema = z.object({
  ...commonConfigShape,
  GRPC_PORT: portVariable(50051),
  ORCHESTRATOR_ADDRESS: addressVariable("127.0.0.1:50052"),
  INFERENCE_BROKER_ADDRESS: addressVariable("127.0.0.1:50053"),
  TOOL_RUNNER_ADDRESS: addressVariable("127.0.0.1:50054"),
  /** Deadline of a downstream call when the caller set none (streamed chats can be long). */
  DOWNSTREAM_DEADLINE_MS: millisecondsVariable(600_000),
  /**
   * Deadline of an agent run (RunAgent, StreamAgent) when the caller set none: longer than any
   * agent type's own timeout, which is what ends a run (edit allows 15 minutes).
   */
  AGENT_RUN_DEADLINE_MS: millisecondsVariable(3_600_000),
});

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
