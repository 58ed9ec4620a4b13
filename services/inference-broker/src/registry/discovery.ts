import type { Logger } from "@vlinders/service-runtime";
import { normalizeWorkerUrl, type ModelCatalog, type ModelEntry, type WorkerEndpoint } from "./model-registry";
import { ModelsConfigError, type ModelSettings } from "./models-config";
import type { WorkerClient } from "../upstream/worker-client";

interface ModelsListBody {
  data?: Array<{ id?: unknown; max_model_len?: unknown }>;
}

/** Workers named by VLLM_URLS: comma-separated base URLs, with or without the /v1 suffix. */
export function parseWorkerUrls(value: string): WorkerEndpoint[] {
  return value
    .split(",")
    .map((url) => url.trim())
    .filter(Boolean)
    .map((url, index) => ({ id: `worker-${index}`, url: normalizeWorkerUrl(url) }));
}

/**
 * Asks each worker's /v1/models which models it serves and builds the catalog. A worker that does
 * not answer is logged and left out until the next discovery.
 */
export async function discoverModels(
  workers: readonly WorkerEndpoint[],
  client: WorkerClient,
  options: { logger: Logger; signal: AbortSignal; defaultModel?: string; defaultEmbeddingModel?: string; previous?: ModelCatalog },
): Promise<ModelCatalog> {
  const models = new Map<string, ModelEntry>();
  const answers = await Promise.allSettled(workers.map((worker) => client.getJson(worker, "/v1/models", options.signal)));
  answers.forEach((answer, index) => {
    const worker = workers[index];
    if (!worker) return;
    if (answer.status === "rejected") {
      options.logger.warn({ worker: worker.id, url: worker.url, err: answer.reason }, "model discovery failed for worker");
      // A worker that is briefly down keeps the models it served: its requests then fail over or
      // get UNAVAILABLE (health decides), not NOT_FOUND as if the model had never existed.
      // Matched by URL: a models file beside VLLM_URLS may have renamed the worker since.
      for (const model of options.previous?.models ?? []) {
        if (!model.workers.some((known) => known.url === worker.url)) continue;
        const entry = models.get(model.id) ?? { ...model, workers: [] };
        entry.workers.push(worker);
        models.set(model.id, entry);
      }
      return;
    }
    for (const listed of (answer.value as ModelsListBody).data ?? []) {
      if (typeof listed.id !== "string" || listed.id === "") continue;
      const entry = models.get(listed.id) ?? {
        id: listed.id,
        aliases: [],
        workers: [],
        maxContextTokens: typeof listed.max_model_len === "number" ? listed.max_model_len : 0,
      };
      entry.workers.push(worker);
      models.set(listed.id, entry);
    }
  });
  return {
    models: [...models.values()],
    ...(options.defaultModel === undefined ? {} : { defaultModel: options.defaultModel }),
    ...(options.defaultEmbeddingModel === undefined ? {} : { defaultEmbeddingModel: options.defaultEmbeddingModel }),
  };
}

/**
 * VLLM_URLS workers as the models file (MODELS_CONFIG, beside VLLM_URLS) describes them: a worker
 * the file lists at the same URL takes its id, `max_num_seqs` and provider; the others keep their
 * positional ids. Throws a ModelsConfigError when two workers would share an id.
 */
export function describeWorkers(endpoints: readonly WorkerEndpoint[], settings: ModelSettings, source: string): WorkerEndpoint[] {
  const described = endpoints.map((endpoint) => {
    const known = settings.workers.find((worker) => worker.url === endpoint.url);
    return known ? { ...known, url: endpoint.url } : endpoint;
  });
  const urlsById = new Map<string, string>();
  for (const worker of described) {
    const other = urlsById.get(worker.id);
    if (other !== undefined && other !== worker.url) {
      throw new ModelsConfigError(`${source}: the worker id "${worker.id}" would name both ${other} and ${worker.url} (from VLLM_URLS); give the file's worker another id`);
    }
    urlsById.set(worker.id, worker.url);
  }
  return described;
}

/**
 * The discovered catalog, with the operators' edits, and the models file's settings on top: each
 * model the file names takes its aliases, routing and quota (and its context length when the
 * worker reports none); the file's providers and quotas apply. The workers stay the discovered
 * ones: a model the file names but no worker serves is not added. The default models are
 * DEFAULT_MODEL and DEFAULT_EMBEDDING_MODEL when set, else the file's when a worker serves them,
 * else the first.
 */
export function applyModelSettings(discovered: ModelCatalog, settings: ModelSettings): ModelCatalog {
  const fileModels = new Map(settings.catalog.models.map((model) => [model.id, model]));
  const discoveredIds = new Set(discovered.models.map((model) => model.id));
  const models = discovered.models.map((model): ModelEntry => {
    // Settings a model carries from an earlier catalog (a worker that is down keeps its models as
    // they were) are dropped first: the file as it is now is what counts.
    const { routing: _routing, quota: _quota, ...bare } = model;
    const fromFile = fileModels.get(model.id);
    if (!fromFile) return { ...bare, aliases: [] };
    return {
      ...bare,
      // An alias that is the id of another discovered model would hide that model.
      aliases: fromFile.aliases.filter((alias) => !discoveredIds.has(alias)),
      maxContextTokens: model.maxContextTokens > 0 ? model.maxContextTokens : fromFile.maxContextTokens,
      ...(fromFile.routing ? { routing: fromFile.routing } : {}),
      ...(fromFile.quota ? { quota: fromFile.quota } : {}),
    };
  });
  const served = new Set(models.flatMap((model) => [model.id, ...model.aliases]));
  const pick = (fromEnvironment: string | undefined, fromFile: string | undefined) =>
    fromEnvironment ?? (fromFile !== undefined && served.has(fromFile) ? fromFile : undefined);
  const defaultModel = pick(discovered.defaultModel, settings.catalog.defaultModel);
  const defaultEmbeddingModel = pick(discovered.defaultEmbeddingModel, settings.catalog.defaultEmbeddingModel);
  return {
    models,
    ...(settings.catalog.providers ? { providers: settings.catalog.providers } : {}),
    ...(defaultModel === undefined ? {} : { defaultModel }),
    ...(defaultEmbeddingModel === undefined ? {} : { defaultEmbeddingModel }),
  };
}
