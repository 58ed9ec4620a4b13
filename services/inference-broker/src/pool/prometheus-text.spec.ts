import { sumPrometheusSamples } from "./prometheus-text";

const vllmMetrics = `# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-7B"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a b} c"} 4
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
vllm:num_requests_running_total 99
process_cpu_seconds_total 12.5
`;

describe("sumPrometheusSamples", () => {
  it("adds up every label set of the named metrics and ignores the rest", () => {
    const samples = sumPrometheusSamples(vllmMetrics, ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc"]);
    expect(Object.fromEntries(samples)).toEqual({
      "vllm:num_requests_running": 5,
      "vllm:num_requests_waiting": 4,
      "vllm:gpu_cache_usage_perc": 0.25,
    });
  });

  it("leaves out metrics that are absent or not numbers", () => {
    const samples = sumPrometheusSamples("vllm:kv_cache_usage_perc{} NaN\nother 1\n", ["vllm:kv_cache_usage_perc", "vllm:num_requests_waiting"]);
    expect(samples.size).toBe(0);
  });
});
