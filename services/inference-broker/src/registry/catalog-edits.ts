import type { ModelCatalog, WorkerEndpoint } from "./model-registry";

/** The catalog with the worker serving the given models (models it names that are new are created). */
export function withWorker(catalog: ModelCatalog, endpoint: WorkerEndpoint, modelIds: readonly string[]): ModelCatalog {
  const wanted = new Set(modelIds);
  const models = catalog.models.map((model) => {
    const others = model.workers.filter((worker) => worker.id !== endpoint.id);
    return wanted.has(model.id) ? { ...model, workers: [...others, endpoint] } : { ...model, workers: others };
  });
  for (const id of wanted) {
    if (!models.some((model) => model.id === id)) models.push({ id, aliases: [], workers: [endpoint], maxContextTokens: 0 });
  }
  return { ...catalog, models };
}

/** The catalog without the worker; models keep their other workers (and stay listed without any). */
export function withoutWorker(catalog: ModelCatalog, workerId: string): ModelCatalog {
  return {
    ...catalog,
    models: catalog.models.map((model) => ({ ...model, workers: model.workers.filter((worker) => worker.id !== workerId) })),
  };
}
