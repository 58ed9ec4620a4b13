import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadModelsConfig, ModelsConfigError, parseModelSettings, parseModelsConfig } from "./models-config";

const repositoryConfig = join(__dirname, "../../../../configs/models.yaml");

const validYaml = `
default_model: coder
workers:
  - id: gpu-0
    url: http://10.0.0.10:8000
    max_num_seqs: 256
  - id: gpu-1
    url: http://10.0.0.11:8000/v1/
models:
  - id: Qwen/Qwen2.5-Coder-32B-Instruct
    aliases: [coder]
    workers: [gpu-0, gpu-1]
    max_context_tokens: 32768
  - id: BAAI/bge-m3
    workers: [gpu-1]
`;

function configError(text: string): ModelsConfigError {
  try {
    parseModelsConfig(text, "models.yaml");
  } catch (error: unknown) {
    expect(error).toBeInstanceOf(ModelsConfigError);
    return error as ModelsConfigError;
  }
  throw new Error("expected parseModelsConfig to throw");
}

describe("parseModelsConfig", () => {
  it("parses the repository's configs/models.yaml", async () => {
    const catalog = parseModelsConfig(readFileSync(repositoryConfig, "utf8"), repositoryConfig);
    expect(catalog.defaultModel).toBe("vlinders-sim-chat");
    expect(catalog.defaultEmbeddingModel).toBe("vlinders-sim-embed");
    expect(catalog.models.map((model) => [model.id, model.aliases, model.maxContextTokens])).toEqual([
      ["vlinders-sim-chat", ["chat", "default"], 32768],
      ["vlinders-sim-embed", ["embed"], 8192],
    ]);
    expect(catalog.models[0]?.workers).toEqual([{ id: "local-simulator", url: "http://127.0.0.1:8000", maxNumSeqs: 256 }]);
    await expect(loadModelsConfig(repositoryConfig)).resolves.toEqual(catalog);
  });

  it("resolves each model's worker ids to endpoints, normalising the URLs", () => {
    const catalog = parseModelsConfig(validYaml, "models.yaml");
    expect(catalog.models[0]?.workers).toEqual([
      { id: "gpu-0", url: "http://10.0.0.10:8000", maxNumSeqs: 256 },
      // Trailing slash and /v1 removed; no maxNumSeqs key when the file gives none.
      { id: "gpu-1", url: "http://10.0.0.11:8000" },
    ]);
    expect(catalog.models[1]).toEqual({ id: "BAAI/bge-m3", aliases: [], maxContextTokens: 0, workers: [{ id: "gpu-1", url: "http://10.0.0.11:8000" }] });
  });

  it("accepts an alias as the default model, and leaves unset defaults out", () => {
    const catalog = parseModelsConfig(validYaml, "models.yaml");
    expect(catalog.defaultModel).toBe("coder");
    expect(catalog).not.toHaveProperty("defaultEmbeddingModel");
  });

  it("names the model and the worker id when a model references an unknown worker", () => {
    const error = configError(validYaml.replace("workers: [gpu-1]", "workers: [gpu-1, gpu-9]"));
    expect(error.message).toBe('models.yaml: models.1.workers.1: no worker has id "gpu-9"');
  });

  it("rejects an alias that is another model's id", () => {
    const error = configError(validYaml.replace("workers: [gpu-1]\n", "workers: [gpu-1]\n    aliases: [Qwen/Qwen2.5-Coder-32B-Instruct]\n"));
    expect(error.message).toBe('models.yaml: models.1: the name "Qwen/Qwen2.5-Coder-32B-Instruct" is used twice');
  });

  it("rejects the same alias on two models", () => {
    const error = configError(validYaml.replace("workers: [gpu-1]\n", "workers: [gpu-1]\n    aliases: [coder]\n"));
    expect(error.message).toBe('models.yaml: models.1: the name "coder" is used twice');
  });

  it("rejects a URL that is not http(s), naming the worker's field", () => {
    expect(configError(validYaml.replace("http://10.0.0.10:8000", "10.0.0.10:8000")).message).toMatch(/^models\.yaml: workers\.0\.url: /);
    expect(configError(validYaml.replace("http://10.0.0.10:8000", "ftp://10.0.0.10")).message).toMatch(/^models\.yaml: workers\.0\.url: /);
  });

  it("requires workers", () => {
    const error = configError("models:\n  - id: m\n    workers: [gpu-0]\n");
    expect(error.message).toMatch(/^models\.yaml: workers: /);
  });

  it("requires at least one worker per model", () => {
    const error = configError(validYaml.replace("workers: [gpu-1]", "workers: []"));
    expect(error.message).toMatch(/^models\.yaml: models\.1\.workers: /);
  });

  it("names each offending field when several are wrong", () => {
    const error = configError("workers:\n  - id: ''\n    url: http://a:1\n    max_num_seqs: -1\nmodels: []\n");
    expect(error.message).toContain("workers.0.id: ");
    expect(error.message).toContain("workers.0.max_num_seqs: ");
    expect(error.message).toContain("models: ");
  });

  it("reports invalid YAML with the file name", () => {
    const error = configError("workers: [\n  - id: gpu-0\n");
    expect(error.message).toMatch(/^models\.yaml: not valid YAML: /);
  });

  it("reports an empty file as a document that is not an object", () => {
    expect(configError("").message).toMatch(/^models\.yaml: \(root\): /);
  });

  it.each([
    ["default_model", "gpt-4o", "default_model: gpt-4o"],
    ["default_embedding_model", "embedder", "default_model: coder\ndefault_embedding_model: embedder"],
  ])("rejects a %s that names no model", (key, name, replacement) => {
    const error = configError(validYaml.replace("default_model: coder", replacement));
    expect(error.message).toBe(`models.yaml: ${key}: no model is named "${name}"`);
  });

  it("rejects two workers with the same id", () => {
    const error = configError(validYaml.replace("id: gpu-1", "id: gpu-0"));
    expect(error.message).toBe('models.yaml: workers.1.id: the id "gpu-0" is used twice');
  });

  it("rejects an unknown top-level key, naming it", () => {
    // A typo such as "model:" would otherwise be silently ignored.
    const error = configError(`${validYaml}defualt_model: coder\n`);
    expect(error.message).toMatch(/^models\.yaml: \(root\): /);
    expect(error.message).toContain("defualt_model");
  });
});

describe("parseModelSettings (a models file beside VLLM_URLS)", () => {
  it("needs no workers, and keeps every worker the file lists for VLLM_URLS to match", () => {
    const settings = parseModelSettings("models:\n  - id: qwen\n    aliases: [coder]\n    rpm: 60\n", "settings.yaml");
    expect(settings).toEqual({ catalog: { models: [{ id: "qwen", aliases: ["coder"], maxContextTokens: 0, quota: { rpm: 60 }, workers: [] }] }, workers: [] });
    const withWorkers = parseModelSettings(validYaml, "models.yaml");
    expect(withWorkers.workers).toEqual([
      { id: "gpu-0", url: "http://10.0.0.10:8000", maxNumSeqs: 256 },
      { id: "gpu-1", url: "http://10.0.0.11:8000" },
    ]);
  });

  it("leaves the models without workers, even when the file names some: discovery decides who serves what", () => {
    const settings = parseModelSettings(validYaml.replace("workers: [gpu-1]", "workers: [gpu-9]"), "models.yaml");
    expect(settings.catalog.models.map((model) => model.workers)).toEqual([[], []]);
  });

  it("checks the rest as strictly as the catalog file", () => {
    expect(() => parseModelSettings("models:\n  - id: qwen\n    rpm: -1\n", "settings.yaml")).toThrow(/settings\.yaml: models\.0\.rpm/);
    expect(() => parseModelSettings("default_model: nope\nmodels:\n  - id: qwen\n", "settings.yaml")).toThrow('settings.yaml: default_model: no model is named "nope"');
    expect(() => parseModelSettings("models: []\n", "settings.yaml")).toThrow(/settings\.yaml: models/);
  });
});
