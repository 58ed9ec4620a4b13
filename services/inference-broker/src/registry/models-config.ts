import { readFile } from "node:fs/promises";
import { parse } from "yaml";
import { z } from "zod";
import type { ModelCatalog } from "./model-registry";

const workerSchema = z.object({
  id: z.string().min(1),
  url: z.url({ protocol: /^https?$/ }).transform((url) => url.replace(/\/+$/, "").replace(/\/v1$/, "")),
  max_num_seqs: z.number().int().positive().optional(),
});

const modelSchema = z.object({
  id: z.string().min(1),
  aliases: z.array(z.string().min(1)).default([]),
  workers: z.array(z.string().min(1)).min(1),
  max_context_tokens: z.number().int().nonnegative().default(0),
});

const modelsFileSchema = z
  .object({
    default_model: z.string().min(1).optional(),
    default_embedding_model: z.string().min(1).optional(),
    workers: z.array(workerSchema).min(1),
    models: z.array(modelSchema).min(1),
  })
  .strict();

export class ModelsConfigError extends Error {
  override name = "ConfigError";
}

/** Parses configs/models.yaml; errors name the file and the path of the offending field. */
export function parseModelsConfig(text: string, source: string): ModelCatalog {
  let raw: unknown;
  try {
    raw = parse(text);
  } catch (error: unknown) {
    throw new ModelsConfigError(`${source}: not valid YAML: ${error instanceof Error ? error.message : String(error)}`);
  }
  const result = modelsFileSchema.safeParse(raw);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`);
    throw new ModelsConfigError(`${source}: ${problems.join("; ")}`);
  }
  const file = result.data;
  // A repeated id would silently replace the earlier worker and take its capacity out of rotation.
  const workers = new Map<string, (typeof file.workers)[number]>();
  file.workers.forEach((worker, index) => {
    if (workers.has(worker.id)) throw new ModelsConfigError(`${source}: workers.${index}.id: the id "${worker.id}" is used twice`);
    workers.set(worker.id, worker);
  });
  const names = new Set<string>();
  const models = file.models.map((model, index) => {
    for (const name of [model.id, ...model.aliases]) {
      if (names.has(name)) throw new ModelsConfigError(`${source}: models.${index}: the name "${name}" is used twice`);
      names.add(name);
    }
    return {
      id: model.id,
      aliases: model.aliases,
      maxContextTokens: model.max_context_tokens,
      workers: model.workers.map((workerId, workerIndex) => {
        const worker = workers.get(workerId);
        if (!worker) throw new ModelsConfigError(`${source}: models.${index}.workers.${workerIndex}: no worker has id "${workerId}"`);
        return worker.max_num_seqs === undefined
          ? { id: worker.id, url: worker.url }
          : { id: worker.id, url: worker.url, maxNumSeqs: worker.max_num_seqs };
      }),
    };
  });
  for (const [key, name] of [
    ["default_model", file.default_model],
    ["default_embedding_model", file.default_embedding_model],
  ] as const) {
    if (name !== undefined && !names.has(name)) throw new ModelsConfigError(`${source}: ${key}: no model is named "${name}"`);
  }
  return {
    models,
    ...(file.default_model === undefined ? {} : { defaultModel: file.default_model }),
    ...(file.default_embedding_model === undefined ? {} : { defaultEmbeddingModel: file.default_embedding_model }),
  };
}

export async function loadModelsConfig(path: string): Promise<ModelCatalog> {
  return parseModelsConfig(await readFile(path, "utf8"), path);
}
