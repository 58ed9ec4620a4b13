import { readFile } from "node:fs/promises";
import { parse } from "yaml";
import { ConfigError } from "@vlinders/service-runtime";
import { z } from "zod";
import { normalizeWorkerUrl, type ModelCatalog, type WorkerEndpoint } from "./model-registry";
import { providerIdPattern, providerIdRule } from "../providers/provider-id";

const workerSchema = z.object({
  id: z.string().min(1),
  url: z.url({ protocol: /^https?$/ }).transform(normalizeWorkerUrl),
  max_num_seqs: z.number().int().positive().optional(),
  /** A provider id; its key is read from the vault to authenticate requests to this worker. */
  provider: z.string().min(1).optional(),
});

const quotaShape = {
  rpm: z.number().int().positive().optional(),
  tpm: z.number().int().positive().optional(),
};

const providerSchema = z.object({ id: z.string().regex(providerIdPattern, `must be ${providerIdRule}`), ...quotaShape }).strict();

const routingSchema = z
  .object({
    policy: z.enum(["least-loaded", "round-robin"]).default("least-loaded"),
    session_affinity: z.boolean().default(true),
    prefix_affinity: z.boolean().default(true),
  })
  .strict();

const modelSchema = z.object({
  id: z.string().min(1),
  aliases: z.array(z.string().min(1)).default([]),
  workers: z.array(z.string().min(1)).min(1),
  max_context_tokens: z.number().int().nonnegative().default(0),
  routing: routingSchema.optional(),
  ...quotaShape,
});

const modelsFileSchema = z
  .object({
    default_model: z.string().min(1).optional(),
    default_embedding_model: z.string().min(1).optional(),
    providers: z.array(providerSchema).default([]),
    workers: z.array(workerSchema).min(1),
    models: z.array(modelSchema).min(1),
  })
  .strict();

// With VLLM_URLS the workers come from there and the models from the workers' /v1/models; the file
// gives only settings, so it may list no workers, and its models' `workers` lists are not used (a
// catalog file can serve as a settings file unchanged, or with its workers left out).
const modelSettingsFileSchema = modelsFileSchema.extend({
  workers: z.array(workerSchema).default([]),
  models: z.array(modelSchema.extend({ workers: z.array(z.string().min(1)).default([]) })).min(1),
});

/**
 * A models file read for its settings only (VLLM_URLS names the workers): the catalog it describes,
 * and every worker it lists, so that a VLLM_URLS worker at the same URL takes that worker's id,
 * `max_num_seqs` and provider.
 */
export interface ModelSettings {
  catalog: ModelCatalog;
  workers: WorkerEndpoint[];
}

/** A models file that cannot be used; a ConfigError, so the service refuses to start naming it. */
export class ModelsConfigError extends ConfigError {
  override name = "ModelsConfigError";
}

/** Parses configs/models.yaml; errors name the file and the path of the offending field. */
export function parseModelsConfig(text: string, source: string): ModelCatalog {
  return parseModelsFile(text, source, modelsFileSchema, "file").catalog;
}

/**
 * Parses a models file used beside VLLM_URLS: the same checks, but workers are optional and the
 * models of the catalog it gives have none (discovery decides who serves what).
 */
export function parseModelSettings(text: string, source: string): ModelSettings {
  return parseModelsFile(text, source, modelSettingsFileSchema, "discovery");
}

function parseModelsFile(
  text: string,
  source: string,
  schema: typeof modelsFileSchema | typeof modelSettingsFileSchema,
  workersFrom: "file" | "discovery",
): ModelSettings {
  let raw: unknown;
  try {
    raw = parse(text);
  } catch (error: unknown) {
    throw new ModelsConfigError(`${source}: not valid YAML: ${error instanceof Error ? error.message : String(error)}`);
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`);
    throw new ModelsConfigError(`${source}: ${problems.join("; ")}`);
  }
  const file = result.data;
  // A repeated id would silently replace the earlier worker and take its capacity out of rotation.
  const workers = new Map<string, WorkerEndpoint>();
  file.workers.forEach((worker, index) => {
    if (workers.has(worker.id)) throw new ModelsConfigError(`${source}: workers.${index}.id: the id "${worker.id}" is used twice`);
    workers.set(worker.id, withoutUndefined({ id: worker.id, url: worker.url, maxNumSeqs: worker.max_num_seqs, provider: worker.provider }));
  });
  const providerIds = new Set(file.providers.map((provider) => provider.id));
  file.workers.forEach((worker, index) => {
    if (worker.provider !== undefined && !providerIds.has(worker.provider)) {
      throw new ModelsConfigError(`${source}: workers.${index}.provider: no provider has id "${worker.provider}"`);
    }
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
      ...(model.routing
        ? {
            routing: {
              policy: model.routing.policy,
              sessionAffinity: model.routing.session_affinity,
              prefixAffinity: model.routing.prefix_affinity,
            },
          }
        : {}),
      ...(model.rpm !== undefined || model.tpm !== undefined ? { quota: withoutUndefined({ rpm: model.rpm, tpm: model.tpm }) } : {}),
      workers: (workersFrom === "file" ? model.workers : []).map((workerId, workerIndex) => {
        const worker = workers.get(workerId);
        if (!worker) throw new ModelsConfigError(`${source}: models.${index}.workers.${workerIndex}: no worker has id "${workerId}"`);
        return worker;
      }),
    };
  });
  for (const [key, name] of [
    ["default_model", file.default_model],
    ["default_embedding_model", file.default_embedding_model],
  ] as const) {
    if (name !== undefined && !names.has(name)) throw new ModelsConfigError(`${source}: ${key}: no model is named "${name}"`);
  }
  const catalog: ModelCatalog = {
    models,
    ...(file.providers.length > 0 ? { providers: file.providers.map((provider) => withoutUndefined(provider)) } : {}),
    ...(file.default_model === undefined ? {} : { defaultModel: file.default_model }),
    ...(file.default_embedding_model === undefined ? {} : { defaultEmbeddingModel: file.default_embedding_model }),
  };
  return {
    catalog,
    workers: [...workers.values()],
  };
}

/** Drops keys whose value is undefined (the types say "absent", not "undefined"). */
function withoutUndefined<T extends Record<string, unknown>>(value: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(value).filter(([, entry]) => entry !== undefined)) as { [K in keyof T]: Exclude<T[K], undefined> };
}

export async function loadModelsConfig(path: string): Promise<ModelCatalog> {
  return parseModelsConfig(await readModelsFile(path), path);
}

export async function loadModelSettings(path: string): Promise<ModelSettings> {
  return parseModelSettings(await readModelsFile(path), path);
}

async function readModelsFile(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (error: unknown) {
    const reason = (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : error instanceof Error ? error.message : String(error);
    throw new ModelsConfigError(`invalid configuration: MODELS_CONFIG: cannot read ${JSON.stringify(path)}: ${reason}`);
  }
}
