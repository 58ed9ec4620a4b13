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

/**
 * What operators changed at run time (AddWorker, RemoveWorker), kept so that every later reload
 * (the models file, SIGHUP, ReloadModels, VLLM_URLS rediscovery) applies it again: without it the
 * next rediscovery removed a worker an operator had added, and brought back one they had removed.
 * The last edit of a worker wins; a worker is an operator's until the process restarts.
 */
export class OperatorEdits {
  private readonly edits = new Map<string, { kind: "added"; endpoint: WorkerEndpoint; modelIds: readonly string[] } | { kind: "removed" }>();

  added(endpoint: WorkerEndpoint, modelIds: readonly string[]): void {
    // Re-inserted: the edits apply in the order they were made.
    this.edits.delete(endpoint.id);
    this.edits.set(endpoint.id, { kind: "added", endpoint, modelIds });
  }

  removed(workerId: string): void {
    this.edits.delete(workerId);
    this.edits.set(workerId, { kind: "removed" });
  }

  /** The catalog as loaded, with the operators' edits on top. */
  apply(catalog: ModelCatalog): ModelCatalog {
    let edited = catalog;
    for (const [workerId, edit] of this.edits) {
      edited = edit.kind === "added" ? withWorker(edited, edit.endpoint, edit.modelIds) : withoutWorker(edited, workerId);
    }
    return edited;
  }
}
