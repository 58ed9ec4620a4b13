import {
  simulatedFailureKinds,
  toolCallStyles,
  type SimulatedFailureKind,
  type SimulatorFaults,
  type ToolCallStyle,
  type VllmSimulatorOptions,
} from "./options";

/** A variable of the environment that is out of range; its message names it. */
export class SimulatorConfigError extends Error {
  constructor(
    readonly variable: string,
    rule: string,
    raw: string,
  ) {
    super(`${variable}: ${rule} (got ${JSON.stringify(raw)})`);
    this.name = "SimulatorConfigError";
  }
}

export interface SimulatorEnvConfig {
  host: string;
  port: number;
  options: Partial<VllmSimulatorOptions>;
  faults: SimulatorFaults;
}

interface NumberRule {
  min: number;
  max?: number;
  integer?: boolean;
  rule: string;
}

const nonNegative: NumberRule = { min: 0, rule: "must be a non-negative number" };
const ratio: NumberRule = { min: 0, max: 1, rule: "must be a number between 0 and 1" };
const positiveInteger: NumberRule = { min: 1, integer: true, rule: "must be a positive integer" };

/**
 * Reads the simulator's configuration from the environment (all optional):
 * SIM_HOST (127.0.0.1), SIM_PORT (8000; 0 picks a free port), SIM_MODELS (comma-separated ids),
 * SIM_TTFT_MS, SIM_ITL_MS, SIM_JITTER (0 to 1, e.g. 0.1 for ±10 %), SIM_SEED (integer),
 * SIM_LOAD_LATENCY_FACTOR, SIM_MAX_NUM_SEQS, SIM_KV_CACHE_TOKENS, SIM_TOOL_CALL_STYLE
 * (current or legacy), SIM_FAILURE_RATE (0 to 1) and SIM_FAILURE_KINDS (comma-separated kinds).
 * Throws a SimulatorConfigError naming the first bad variable.
 */
export function readSimulatorEnv(env: NodeJS.ProcessEnv): SimulatorEnvConfig {
  const raw = (name: string): string | undefined => {
    const value = env[name]?.trim();
    return value === undefined || value === "" ? undefined : value;
  };
  const number = (name: string, rule: NumberRule): number | undefined => {
    const text = raw(name);
    if (text === undefined) return undefined;
    const value = Number(text);
    const ok = Number.isFinite(value) && value >= rule.min && (rule.max === undefined || value <= rule.max) && (rule.integer !== true || Number.isSafeInteger(value));
    if (!ok) throw new SimulatorConfigError(name, rule.rule, text);
    return value;
  };
  const list = (name: string): string[] | undefined =>
    raw(name)
      ?.split(",")
      .map((item) => item.trim())
      .filter(Boolean);

  const options: Partial<VllmSimulatorOptions> = {};
  const set = <K extends keyof VllmSimulatorOptions>(key: K, value: VllmSimulatorOptions[K] | undefined) => {
    if (value !== undefined) options[key] = value;
  };
  const models = list("SIM_MODELS");
  if (models !== undefined && models.length > 0) set("models", models.map((id) => ({ id, maxModelLen: 32_768 })));
  set("timeToFirstTokenMs", number("SIM_TTFT_MS", nonNegative));
  set("interTokenLatencyMs", number("SIM_ITL_MS", nonNegative));
  set("jitterRatio", number("SIM_JITTER", ratio));
  set("randomSeed", number("SIM_SEED", { min: -(2 ** 53), integer: true, rule: "must be an integer" }));
  set("loadLatencyFactor", number("SIM_LOAD_LATENCY_FACTOR", nonNegative));
  set("maxNumSeqs", number("SIM_MAX_NUM_SEQS", positiveInteger));
  set("kvCacheCapacityTokens", number("SIM_KV_CACHE_TOKENS", positiveInteger));
  const style = raw("SIM_TOOL_CALL_STYLE");
  if (style !== undefined) {
    if (!toolCallStyles.includes(style as ToolCallStyle)) throw new SimulatorConfigError("SIM_TOOL_CALL_STYLE", `must be one of ${toolCallStyles.join(", ")}`, style);
    set("toolCallStyle", style as ToolCallStyle);
  }

  const faults: SimulatorFaults = {};
  const failureRate = number("SIM_FAILURE_RATE", ratio);
  if (failureRate !== undefined) faults.failureRate = failureRate;
  const kinds = list("SIM_FAILURE_KINDS");
  if (kinds !== undefined) {
    const unknown = kinds.find((kind) => !simulatedFailureKinds.includes(kind as SimulatedFailureKind));
    if (unknown !== undefined) {
      throw new SimulatorConfigError("SIM_FAILURE_KINDS", `must be a comma-separated list of ${simulatedFailureKinds.join(", ")}; ${JSON.stringify(unknown)} is not one`, raw("SIM_FAILURE_KINDS") ?? "");
    }
    faults.kinds = kinds as SimulatedFailureKind[];
  }

  return {
    host: raw("SIM_HOST") ?? "127.0.0.1",
    port: number("SIM_PORT", { min: 0, max: 65_535, integer: true, rule: "must be a port number (0 to 65535)" }) ?? 8000,
    options,
    faults,
  };
}
