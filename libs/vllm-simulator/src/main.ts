#!/usr/bin/env node
import { readSimulatorEnv, SimulatorConfigError, type SimulatorEnvConfig } from "./env-config";
import { defaultSimulatorOptions } from "./options";
import { VllmSimulator } from "./simulator";

/**
 * Runs the simulated vLLM worker as its own process, configured by SIM_* variables (see
 * `readSimulatorEnv`). Refuses to start with one line naming a bad variable (exit code 78), and
 * prints one JSON line with msg "listening" and the bound port.
 */
async function main(): Promise<void> {
  let config: SimulatorEnvConfig;
  try {
    config = readSimulatorEnv(process.env);
  } catch (error: unknown) {
    if (!(error instanceof SimulatorConfigError)) throw error;
    process.stderr.write(`fatal: invalid configuration: ${error.message}\n`);
    process.exit(78);
  }
  const simulator = new VllmSimulator(config.options);
  simulator.injectFaults(config.faults);
  const { url, port } = await simulator.listen(config.port, config.host);
  const log = (msg: string, fields: Record<string, unknown> = {}) =>
    process.stdout.write(`${JSON.stringify({ level: "info", time: new Date().toISOString(), service: "vllm-simulator", msg, ...fields })}\n`);
  log("listening", {
    url,
    http_port: port,
    models: (config.options.models ?? defaultSimulatorOptions.models).map((model) => model.id),
    max_num_seqs: config.options.maxNumSeqs ?? defaultSimulatorOptions.maxNumSeqs,
    ...(config.faults.failureRate === undefined ? {} : { failure_rate: config.faults.failureRate, failure_kinds: config.faults.kinds ?? "all" }),
  });
  const stop = () => {
    log("shutting down");
    simulator.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main().catch((error: unknown) => {
  process.stderr.write(`fatal: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
