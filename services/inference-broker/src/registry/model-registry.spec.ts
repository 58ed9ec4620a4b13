import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ServerError, Status } from "nice-grpc-common";
import { ModelRegistry, type ModelCatalog, type ModelEntry } from "./model-registry";
import { parseModelsConfig } from "./models-config";

const worker = { id: "gpu-0", url: "http://10.0.0.10:8000" };

function model(id: string, aliases: string[] = []): ModelEntry {
  return { id, aliases, workers: [worker], maxContextTokens: 0 };
}

function registryWith(catalog: ModelCatalog): ModelRegistry {
  const registry = new ModelRegistry();
  registry.replace(catalog);
  return registry;
}

function resolveError(registry: ModelRegistry, name: string, purpose?: "chat" | "embedding"): ServerError {
  try {
    registry.resolve(name, purpose);
  } catch (error: unknown) {
    expect(error).toBeInstanceOf(ServerError);
    return error as ServerError;
  }
  throw new Error(`expected resolving "${name}" to fail`);
}

describe("ModelRegistry", () => {
  describe("with the repository's configs/models.yaml", () => {
    const path = join(__dirname, "../../../../configs/models.yaml");
    const registry = registryWith(parseModelsConfig(readFileSync(path, "utf8"), path));

    it("resolves ids and aliases to their model", () => {
      expect(registry.resolve("vlinders-sim-chat").id).toBe("vlinders-sim-chat");
      expect(registry.resolve("chat").id).toBe("vlinders-sim-chat");
      expect(registry.resolve("default").id).toBe("vlinders-sim-chat");
      expect(registry.resolve("embed").id).toBe("vlinders-sim-embed");
    });

    it("resolves an empty name to default_model for chat and default_embedding_model for embeddings", () => {
      expect(registry.resolve("").id).toBe("vlinders-sim-chat");
      expect(registry.resolve("", "chat").id).toBe("vlinders-sim-chat");
      expect(registry.resolve("", "embedding").id).toBe("vlinders-sim-embed");
    });

    it("answers NOT_FOUND naming the unknown model and the known ones", () => {
      const error = resolveError(registry, "gpt-4o");
      expect(Status[error.code]).toBe("NOT_FOUND");
      expect(error.details).toBe('model: "gpt-4o" is not served here (known: vlinders-sim-chat, chat, default, vlinders-sim-embed, embed)');
    });

    it("matches names exactly", () => {
      expect(Status[resolveError(registry, "Chat").code]).toBe("NOT_FOUND");
      expect(Status[resolveError(registry, " chat").code]).toBe("NOT_FOUND");
    });

    it("lists the models in file order", () => {
      expect(registry.list().map((entry) => entry.id)).toEqual(["vlinders-sim-chat", "vlinders-sim-embed"]);
    });
  });

  it("resolves an empty name to the first model when no default is configured", () => {
    const registry = registryWith({ models: [model("a"), model("b")] });
    expect(registry.resolve("").id).toBe("a");
    expect(registry.resolve("", "embedding").id).toBe("a");
  });

  it("answers UNAVAILABLE when no model has been discovered yet", () => {
    const error = resolveError(new ModelRegistry(), "");
    expect(Status[error.code]).toBe("UNAVAILABLE");
    expect(error.details).toContain("no model is available");
  });

  it('answers NOT_FOUND with "known: none" for a named model when there are none', () => {
    const error = resolveError(new ModelRegistry(), "coder");
    expect(Status[error.code]).toBe("NOT_FOUND");
    expect(error.details).toBe('model: "coder" is not served here (known: none)');
  });

  it("answers NOT_FOUND naming the default when the default model is not served", () => {
    // Discovery from VLLM_URLS may find workers that do not serve the configured default.
    const error = resolveError(registryWith({ models: [model("a")], defaultModel: "b" }), "");
    expect(Status[error.code]).toBe("NOT_FOUND");
    expect(error.details).toContain('model: "b"');
  });

  it("prefers a model's id over another model's alias of the same name", () => {
    const registry = registryWith({ models: [model("a", ["b"]), model("b")] });
    expect(registry.resolve("b").id).toBe("b");
  });

  it("replaces the catalog as a whole", () => {
    const registry = registryWith({ models: [model("old", ["alias"])] });
    registry.replace({ models: [model("new")] });
    expect(registry.list().map((entry) => entry.id)).toEqual(["new"]);
    expect(Status[resolveError(registry, "old").code]).toBe("NOT_FOUND");
    expect(Status[resolveError(registry, "alias").code]).toBe("NOT_FOUND");
  });

  it("lists at most 20 known names in the NOT_FOUND message", () => {
    const registry = registryWith({ models: Array.from({ length: 30 }, (_, index) => model(`m${index}`)) });
    const details = resolveError(registry, "x").details;
    expect(details).toContain("m19");
    expect(details).not.toContain("m20");
  });
});
