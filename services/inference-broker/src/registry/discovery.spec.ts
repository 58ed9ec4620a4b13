import type { Logger } from "@vlinders/service-runtime";
import type { WorkerClient } from "../upstream/worker-client";
import { applyModelSettings, describeWorkers, discoverModels, parseWorkerUrls } from "./discovery";
import type { ModelCatalog, WorkerEndpoint } from "./model-registry";
import { ModelsConfigError, parseModelSettings } from "./models-config";

describe("parseWorkerUrls", () => {
  it("names workers by position and removes trailing slashes and the /v1 suffix", () => {
    expect(parseWorkerUrls("http://gpu-0:8000,http://gpu-1:8000/,http://gpu-2:8000/v1,http://gpu-3:8000/v1/,http://gpu-4:8000/v1//")).toEqual([
      { id: "worker-0", url: "http://gpu-0:8000" },
      { id: "worker-1", url: "http://gpu-1:8000" },
      { id: "worker-2", url: "http://gpu-2:8000" },
      { id: "worker-3", url: "http://gpu-3:8000" },
      { id: "worker-4", url: "http://gpu-4:8000" },
    ]);
  });

  it("keeps a path prefix other than /v1", () => {
    expect(parseWorkerUrls("https://proxy.example/vllm/a/v1/")).toEqual([{ id: "worker-0", url: "https://proxy.example/vllm/a" }]);
  });

  it("trims spaces and skips empty entries without leaving gaps in the ids", () => {
    expect(parseWorkerUrls(" http://a:8000/v1 , ,http://b:8000,")).toEqual([
      { id: "worker-0", url: "http://a:8000" },
      { id: "worker-1", url: "http://b:8000" },
    ]);
  });

  it("gives no workers for an empty value", () => {
    expect(parseWorkerUrls("")).toEqual([]);
    expect(parseWorkerUrls(" , ")).toEqual([]);
  });
});

describe("discoverModels", () => {
  const gpu0: WorkerEndpoint = { id: "worker-0", url: "http://gpu-0:8000" };
  const gpu1: WorkerEndpoint = { id: "worker-1", url: "http://gpu-1:8000" };

  function fakeClient(answers: Record<string, unknown>): WorkerClient {
    const client: Pick<WorkerClient, "getJson"> = {
      getJson: async (worker, path) => {
        expect(path).toBe("/v1/models");
        const answer = answers[worker.id];
        if (answer instanceof Error) throw answer;
        return answer;
      },
    };
    return client as WorkerClient;
  }

  function fakeLogger(): { logger: Logger; warn: jest.Mock } {
    const warn = jest.fn();
    return { logger: { warn } as unknown as Logger, warn };
  }

  it("merges the models of all workers and keeps vLLM's max_model_len", async () => {
    const { logger } = fakeLogger();
    const client = fakeClient({
      "worker-0": { object: "list", data: [{ id: "qwen", object: "model", max_model_len: 32768 }] },
      "worker-1": { object: "list", data: [{ id: "qwen", max_model_len: 32768 }, { id: "bge-m3" }] },
    });
    const catalog = await discoverModels([gpu0, gpu1], client, { logger, signal: new AbortController().signal, defaultModel: "qwen" });
    expect(catalog).toEqual({
      defaultModel: "qwen",
      models: [
        { id: "qwen", aliases: [], workers: [gpu0, gpu1], maxContextTokens: 32768 },
        { id: "bge-m3", aliases: [], workers: [gpu1], maxContextTokens: 0 },
      ],
    });
  });

  it("leaves out a worker that does not answer and logs it, and skips entries without an id", async () => {
    const { logger, warn } = fakeLogger();
    const client = fakeClient({ "worker-0": new Error("ECONNREFUSED"), "worker-1": { data: [{ id: "" }, { id: 7 }, { id: "qwen" }] } });
    const catalog = await discoverModels([gpu0, gpu1], client, { logger, signal: new AbortController().signal });
    expect(catalog).toEqual({ models: [{ id: "qwen", aliases: [], workers: [gpu1], maxContextTokens: 0 }] });
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn.mock.calls[0]?.[0]).toMatchObject({ worker: "worker-0", url: "http://gpu-0:8000" });
  });

  it("keeps the models of a worker that does not answer, even under the new name the file gives it", async () => {
    const { logger } = fakeLogger();
    const renamed: WorkerEndpoint = { id: "gpu-zero", url: gpu0.url };
    const previous: ModelCatalog = { models: [{ id: "qwen", aliases: [], workers: [gpu0], maxContextTokens: 0 }] };
    const client = fakeClient({ "gpu-zero": new Error("ECONNREFUSED") });
    const catalog = await discoverModels([renamed], client, { logger, signal: new AbortController().signal, previous });
    expect(catalog.models).toEqual([{ id: "qwen", aliases: [], workers: [renamed], maxContextTokens: 0 }]);
  });
});

describe("a models file beside VLLM_URLS", () => {
  const settings = parseModelSettings(
    [
      "default_model: coder",
      "default_embedding_model: embedder",
      "providers:\n  - id: acme\n    rpm: 100",
      "workers:\n  - id: gpu-a\n    url: http://gpu-a:8000/v1\n    max_num_seqs: 64\n  - id: acme-eu\n    url: https://api.acme.example\n    provider: acme",
      "models:",
      "  - id: qwen\n    aliases: [coder, mistral]\n    max_context_tokens: 16384\n    routing:\n      policy: round-robin\n    tpm: 5000",
      "  - id: bge\n    aliases: [embedder]",
      "  - id: llama\n    aliases: [fast]",
    ].join("\n"),
    "settings.yaml",
  );

  it("describes a VLLM_URLS worker the file lists at the same URL, and leaves the others as they are", () => {
    const workers = describeWorkers(parseWorkerUrls("http://gpu-a:8000,http://gpu-b:8000,https://api.acme.example/v1"), settings, "settings.yaml");
    expect(workers).toEqual([
      { id: "gpu-a", url: "http://gpu-a:8000", maxNumSeqs: 64 },
      { id: "worker-1", url: "http://gpu-b:8000" },
      { id: "acme-eu", url: "https://api.acme.example", provider: "acme" },
    ]);
  });

  it("refuses a file worker id that a VLLM_URLS worker at another URL already has", () => {
    const clash = parseModelSettings("workers:\n  - id: worker-1\n    url: http://gpu-a:8000\nmodels:\n  - id: qwen\n", "settings.yaml");
    const describe = () => describeWorkers(parseWorkerUrls("http://gpu-a:8000,http://gpu-b:8000"), clash, "settings.yaml");
    expect(describe).toThrow(ModelsConfigError);
    expect(describe).toThrow('settings.yaml: the worker id "worker-1" would name both http://gpu-a:8000 and http://gpu-b:8000');
  });

  const gpu: WorkerEndpoint = { id: "worker-0", url: "http://gpu-0:8000" };
  const discovered: ModelCatalog = {
    models: [
      { id: "qwen", aliases: [], workers: [gpu], maxContextTokens: 0 },
      { id: "bge", aliases: [], workers: [gpu], maxContextTokens: 512 },
      { id: "mistral", aliases: [], workers: [gpu], maxContextTokens: 8192 },
    ],
  };

  it("gives each discovered model the file's aliases, routing and quota, and adds no model no worker serves", () => {
    const catalog = applyModelSettings(discovered, settings);
    expect(catalog.models).toEqual([
      // "mistral" is dropped from qwen's aliases: it is a discovered model's own id.
      { id: "qwen", aliases: ["coder"], workers: [gpu], maxContextTokens: 16384, routing: { policy: "round-robin", sessionAffinity: true, prefixAffinity: true }, quota: { tpm: 5000 } },
      // The worker's own context length wins over the file's.
      { id: "bge", aliases: ["embedder"], workers: [gpu], maxContextTokens: 512 },
      { id: "mistral", aliases: [], workers: [gpu], maxContextTokens: 8192 },
    ]);
    expect(catalog.providers).toEqual([{ id: "acme", rpm: 100 }]);
    expect(catalog).toMatchObject({ defaultModel: "coder", defaultEmbeddingModel: "embedder" });
  });

  it("drops settings a model carried from an earlier catalog that the file no longer gives", () => {
    const carried: ModelCatalog = {
      models: [
        { id: "mistral", aliases: ["old-name"], workers: [gpu], maxContextTokens: 8192, routing: { policy: "round-robin", sessionAffinity: false, prefixAffinity: false }, quota: { rpm: 1 } },
        { id: "qwen", aliases: ["older"], workers: [gpu], maxContextTokens: 16384, quota: { rpm: 1 } },
      ],
    };
    expect(applyModelSettings(carried, settings).models).toEqual([
      { id: "mistral", aliases: [], workers: [gpu], maxContextTokens: 8192 },
      { id: "qwen", aliases: ["coder"], workers: [gpu], maxContextTokens: 16384, routing: { policy: "round-robin", sessionAffinity: true, prefixAffinity: true }, quota: { tpm: 5000 } },
    ]);
  });

  it("prefers DEFAULT_MODEL, and drops a file default that no worker serves", () => {
    expect(applyModelSettings({ ...discovered, defaultModel: "mistral" }, settings).defaultModel).toBe("mistral");
    const withoutBge = applyModelSettings({ models: discovered.models.filter((model) => model.id !== "bge") }, settings);
    expect(withoutBge).not.toHaveProperty("defaultEmbeddingModel");
    expect(withoutBge.defaultModel).toBe("coder");
  });
});
