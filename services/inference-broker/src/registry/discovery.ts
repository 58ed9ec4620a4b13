import type { Logger } from "@vlinders/service-runtime";
import { normalizeWorkerUrl, type ModelCatalog, type ModelEntry, type WorkerEndpoint } from "./model-registry";
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
      for (const model of options.previous?.models ?? []) {
        if (!model.workers.some((known) => known.id === worker.id)) continue;
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
