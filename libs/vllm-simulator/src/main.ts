#!/usr/bin/env node
import { VllmSimulator, defaultSimulatorOptions } from "./simulator";

/**
 * Runs the simulated vLLM worker as its own process. Environment: SIM_HOST (127.0.0.1), SIM_PORT
 * (8000; 0 picks a free port), SIM_MODELS (comma-separated model ids), SIM_TTFT_MS, SIM_ITL_MS.
 * Prints one JSON line with msg "listening" and the bound port.
 */
function readNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    process.stderr.write(`fatal: invalid configuration: ${name}: must be a non-negative number (got ${JSON.stringify(raw)})\n`);
    process.exit(78);
  }
  return value;
}

async function main(): Promise<void> {
  const modelIds = (process.env.SIM_MODELS ?? "").split(",").map((id) => id.trim()).filter(Boolean);
  const simulator = new VllmSimulator({
    models: modelIds.length > 0 ? modelIds.map((id) => ({ id, maxModelLen: 32_768 })) : defaultSimulatorOptions.models,
    timeToFirstTokenMs: readNumber("SIM_TTFT_MS", defaultSimulatorOptions.timeToFirstTokenMs),
    interTokenLatencyMs: readNumber("SIM_ITL_MS", defaultSimulatorOptions.interTokenLatencyMs),
  });
  const host = process.env.SIM_HOST || "127.0.0.1";
  const { url, port } = await simulator.listen(readNumber("SIM_PORT", 8000), host);
  const log = (msg: string, fields: Record<string, unknown> = {}) =>
    process.stdout.write(`${JSON.stringify({ level: "info", time: new Date().toISOString(), service: "vllm-simulator", msg, ...fields })}\n`);
  log("listening", { url, http_port: port, models: modelIds.length > 0 ? modelIds : defaultSimulatorOptions.models.map((m) => m.id) });
  const stop = () => {
    log("shutting down");
    simulator.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main().catch((error: unknown) => {
  process.stderr.write(`fatal: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
