import { readSimulatorEnv, SimulatorConfigError } from "./env-config";

describe("readSimulatorEnv", () => {
  it("has defaults for everything", () => {
    expect(readSimulatorEnv({})).toEqual({ host: "127.0.0.1", port: 8000, options: {}, faults: {} });
  });

  it("reads every variable", () => {
    const config = readSimulatorEnv({
      SIM_HOST: "0.0.0.0",
      SIM_PORT: "0",
      SIM_MODELS: "coder, chat ,",
      SIM_TTFT_MS: "20",
      SIM_ITL_MS: "12.5",
      SIM_JITTER: "0.1",
      SIM_SEED: "42",
      SIM_LOAD_LATENCY_FACTOR: "0.5",
      SIM_MAX_NUM_SEQS: "16",
      SIM_KV_CACHE_TOKENS: "65536",
      SIM_TOOL_CALL_STYLE: "legacy",
      SIM_FAILURE_RATE: "0.05",
      SIM_FAILURE_KINDS: "http_500, hang,mid_stream_error",
    });
    expect(config).toEqual({
      host: "0.0.0.0",
      port: 0,
      options: {
        models: [
          { id: "coder", maxModelLen: 32_768 },
          { id: "chat", maxModelLen: 32_768 },
        ],
        timeToFirstTokenMs: 20,
        interTokenLatencyMs: 12.5,
        jitterRatio: 0.1,
        randomSeed: 42,
        loadLatencyFactor: 0.5,
        maxNumSeqs: 16,
        kvCacheCapacityTokens: 65_536,
        toolCallStyle: "legacy",
      },
      faults: { failureRate: 0.05, kinds: ["http_500", "hang", "mid_stream_error"] },
    });
  });

  it.each([
    ["SIM_PORT", "70000", "must be a port number"],
    ["SIM_PORT", "http", "must be a port number"],
    ["SIM_TTFT_MS", "-1", "must be a non-negative number"],
    ["SIM_ITL_MS", "fast", "must be a non-negative number"],
    ["SIM_MAX_NUM_SEQS", "0", "must be a positive integer"],
    ["SIM_MAX_NUM_SEQS", "2.5", "must be a positive integer"],
    ["SIM_JITTER", "10", "must be a number between 0 and 1"],
    ["SIM_SEED", "1.5", "must be an integer"],
    ["SIM_TOOL_CALL_STYLE", "hermes", "must be one of current, legacy"],
    ["SIM_FAILURE_RATE", "1.5", "must be a number between 0 and 1"],
    ["SIM_FAILURE_KINDS", "http_500,explode", '"explode" is not one'],
  ])("refuses %s=%j, naming the variable", (variable, value, rule) => {
    const read = () => readSimulatorEnv({ [variable]: value });
    expect(read).toThrow(SimulatorConfigError);
    expect(read).toThrow(new RegExp(`^${variable}: .*${rule.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}.*\\(got ${JSON.stringify(value)}\\)$`));
  });
});
