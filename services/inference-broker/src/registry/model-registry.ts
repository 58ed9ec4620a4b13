import { ServerError, Status } from "nice-grpc-common";

/** A worker: one vLLM (or other OpenAI-compatible) server. */
export interface WorkerEndpoint {
  id: string;
  /** Base URL without the /v1 suffix, e.g. http://gpu-0:8000. */
  url: string;
  /** The worker's concurrency (vLLM's --max-num-seqs), when known. */
  maxNumSeqs?: number;
  /** The remote provider whose key (from the vault) authenticates requests to this worker. */
  provider?: string;
}

/** A worker's base URL as the broker uses it: no trailing slash, no /v1 (the broker adds the paths). */
export function normalizeWorkerUrl(url: string): string {
  return url.trim().replace(/\/+$/, "").replace(/\/v1$/, "");
}

/** How a model's requests are spread over its workers. */
export interface RoutingSettings {
  /** "least-loaded" weighs in-flight requests and scraped vLLM metrics; "round-robin" rotates. */
  policy: "least-loaded" | "round-robin";
  /** Requests of one session_id go to the same worker while it is healthy and not overloaded. */
  sessionAffinity: boolean;
  /** Requests that share a prompt prefix go to the same worker, for vLLM's prefix cache. */
  prefixAffinity: boolean;
}

export const defaultRoutingSettings: RoutingSettings = { policy: "least-loaded", sessionAffinity: true, prefixAffinity: true };

/** Requests and tokens per minute; unset means unlimited. */
export interface QuotaLimits {
  rpm?: number;
  tpm?: number;
}

export interface ProviderEntry extends QuotaLimits {
  id: string;
}

export interface ModelEntry {
  id: string;
  aliases: string[];
  workers: WorkerEndpoint[];
  /** 0 when unknown. */
  maxContextTokens: number;
  /** Defaults to defaultRoutingSettings. */
  routing?: RoutingSettings;
  /** Per-model quota, on top of the provider's. */
  quota?: QuotaLimits;
}

export interface ModelCatalog {
  models: ModelEntry[];
  /** Used when a request names no model; undefined selects the first model. */
  defaultModel?: string;
  defaultEmbeddingModel?: string;
  /** Remote providers with quotas; workers name them. */
  providers?: ProviderEntry[];
}

/**
 * Which models exist and which workers serve them. The catalog is replaced as a whole (reload,
 * rediscovery), so a request that resolved a model keeps a consistent view while it runs.
 */
export class ModelRegistry {
  private catalog: ModelCatalog = { models: [] };
  private byName = new Map<string, ModelEntry>();

  replace(catalog: ModelCatalog): void {
    const byName = new Map<string, ModelEntry>();
    for (const model of catalog.models) {
      byName.set(model.id, model);
      for (const alias of model.aliases) if (!byName.has(alias)) byName.set(alias, model);
    }
    this.catalog = catalog;
    this.byName = byName;
  }

  list(): readonly ModelEntry[] {
    return this.catalog.models;
  }

  /** The catalog as last replaced (reload and admin changes start from it). */
  current(): ModelCatalog {
    return this.catalog;
  }

  provider(id: string): ProviderEntry | undefined {
    return this.catalog.providers?.find((provider) => provider.id === id);
  }

  /** Resolves a model id or alias; empty selects the default. Unknown names are NOT_FOUND. */
  resolve(name: string, purpose: "chat" | "embedding" = "chat"): ModelEntry {
    const wanted = name !== "" ? name : purpose === "embedding" ? this.catalog.defaultEmbeddingModel : this.catalog.defaultModel;
    if (wanted === undefined) {
      const first = this.catalog.models[0];
      if (first) return first;
      throw new ServerError(Status.UNAVAILABLE, "no model is available: no worker has been discovered yet");
    }
    const model = this.byName.get(wanted);
    if (!model) {
      const known = [...this.byName.keys()].slice(0, 20).join(", ");
      throw new ServerError(Status.NOT_FOUND, `model: "${wanted}" is not served here (known: ${known || "none"})`);
    }
    return model;
  }
}
