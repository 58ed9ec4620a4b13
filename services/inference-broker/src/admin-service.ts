import type { InferenceAdminServiceImplementation, ProviderKeyInfo, UsageRow } from "@vlinders/proto";
import { ServerError, Status } from "nice-grpc-common";
import type { WorkerPool } from "./pool/worker-pool";
import { withWorker, withoutWorker, type OperatorEdits } from "./registry/catalog-edits";
import { normalizeWorkerUrl, type ModelCatalog, type ModelRegistry, type WorkerEndpoint } from "./registry/model-registry";
import type { WorkerClient } from "./upstream/worker-client";
import { providerIdPattern, providerIdRule } from "./providers/provider-id";

/** The key vault as the admin service uses it; keys go in and never come out. */
export interface KeyVaultAdminPort {
  store(provider: string, apiKey: string, signal: AbortSignal): Promise<ProviderKeyInfo>;
  rotate(provider: string, apiKey: string, signal: AbortSignal): Promise<ProviderKeyInfo>;
  delete(provider: string, signal: AbortSignal): Promise<boolean>;
  list(signal: AbortSignal): Promise<ProviderKeyInfo[]>;
  /** The provider's key, decrypted for one request (listing a new worker's models). */
  retrieve(provider: string, signal: AbortSignal): Promise<string>;
}

export interface UsageReportPort {
  report(filter: { provider?: string; model?: string; since?: Date }, signal: AbortSignal): Promise<UsageRow[]>;
}

export interface AdminServiceDependencies {
  registry: ModelRegistry;
  pool: WorkerPool;
  workers: WorkerClient;
  /** Reads the worker configuration again (models file or VLLM_URLS discovery) and applies it. */
  reload(signal: AbortSignal): Promise<{ models: string[]; added: string[]; removed: string[] }>;
  /** AddWorker and RemoveWorker are recorded here, so that `reload` keeps them. */
  operatorEdits: OperatorEdits;
  /** The models file's settings (beside VLLM_URLS) on a catalog AddWorker changed: aliases, quotas. */
  withModelSettings?: (catalog: ModelCatalog) => ModelCatalog;
  vault?: KeyVaultAdminPort;
  usage?: UsageReportPort;
}

const workerIdPattern = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

function requireVault(vault: KeyVaultAdminPort | undefined): KeyVaultAdminPort {
  if (!vault) throw new ServerError(Status.FAILED_PRECONDITION, "the key vault is off: set VAULT_MASTER_KEY (32 bytes, base64 or hex) to store provider keys");
  return vault;
}

function requireProvider(provider: string): void {
  if (!providerIdPattern.test(provider)) {
    throw new ServerError(Status.INVALID_ARGUMENT, `provider: must be ${providerIdRule} (got ${JSON.stringify(provider.slice(0, 40))})`);
  }
}

function requireApiKey(apiKey: string): void {
  if (apiKey.length < 8 || apiKey.length > 4_096 || /\s/.test(apiKey)) {
    throw new ServerError(Status.INVALID_ARGUMENT, "api_key: must be 8 to 4096 characters without white space");
  }
}

/** InferenceAdminService: the worker pool and provider keys, changed at run time. */
export function createInferenceAdminService(deps: AdminServiceDependencies): InferenceAdminServiceImplementation {
  const { registry, pool } = deps;

  async function providerKey(provider: string, signal: AbortSignal): Promise<string> {
    if (!deps.vault) throw new ServerError(Status.FAILED_PRECONDITION, `provider "${provider}" needs its API key to list the worker's models, but the key vault is not configured (VAULT_MASTER_KEY); or name the models`);
    try {
      return await deps.vault.retrieve(provider, signal);
    } catch (error: unknown) {
      if (error instanceof ServerError && error.code === Status.NOT_FOUND) {
        throw new ServerError(Status.FAILED_PRECONDITION, `provider "${provider}" has no stored API key to list the worker's models: store it first (StoreProviderKey), or name the models`);
      }
      throw error;
    }
  }

  return {
    async getPoolStatus() {
      return { workers: pool.status() };
    },

    async addWorker(request, context) {
      if (!workerIdPattern.test(request.id)) throw new ServerError(Status.INVALID_ARGUMENT, "id: must be 1-63 letters, digits, \"_\", \".\" or \"-\"");
      let url: URL;
      try {
        url = new URL(request.url);
      } catch {
        throw new ServerError(Status.INVALID_ARGUMENT, `url: not a URL (got ${JSON.stringify(request.url.slice(0, 80))})`);
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") throw new ServerError(Status.INVALID_ARGUMENT, "url: must be http or https");
      if (request.provider !== "" && !registry.provider(request.provider)) {
        throw new ServerError(Status.INVALID_ARGUMENT, `provider: no provider "${request.provider}" in the models file`);
      }
      const endpoint: WorkerEndpoint = {
        id: request.id,
        url: normalizeWorkerUrl(request.url),
        ...(request.maxNumSeqs > 0 ? { maxNumSeqs: request.maxNumSeqs } : {}),
        ...(request.provider !== "" ? { provider: request.provider } : {}),
      };
      let models = request.models;
      if (models.length === 0) {
        // A remote provider's worker answers only with its key, as requests to it do.
        const apiKey = endpoint.provider === undefined ? undefined : await providerKey(endpoint.provider, context.signal);
        const listed = (await deps.workers.getJson(endpoint, "/v1/models", context.signal, apiKey)) as { data?: Array<{ id?: unknown }> };
        models = (listed.data ?? []).flatMap((model) => (typeof model.id === "string" && model.id !== "" ? [model.id] : []));
        if (models.length === 0) throw new ServerError(Status.FAILED_PRECONDITION, `worker ${request.id} lists no models at ${endpoint.url}/v1/models`);
      }
      deps.operatorEdits.added(endpoint, models);
      const catalog = withWorker(registry.current(), endpoint, models);
      registry.replace(deps.withModelSettings ? deps.withModelSettings(catalog) : catalog);
      const worker = pool.add(endpoint, models);
      return worker.status(performance.now(), pool.settings.metricsStaleAfterMs);
    },

    async drainWorker(request) {
      const worker = pool.drain(request.id);
      if (!worker) throw new ServerError(Status.NOT_FOUND, `id: no worker "${request.id}"`);
      return worker.status(performance.now(), pool.settings.metricsStaleAfterMs);
    },

    async removeWorker(request, context) {
      if (!pool.get(request.id)) throw new ServerError(Status.NOT_FOUND, `id: no worker "${request.id}"`);
      deps.operatorEdits.removed(request.id);
      registry.replace(withoutWorker(registry.current(), request.id));
      const removed = pool.remove(request.id, request.force);
      // Waiting for requests in flight is bounded by this call's deadline; the worker leaves anyway.
      await new Promise<void>((resolve, reject) => {
        if (context.signal.aborted) {
          reject(new ServerError(Status.DEADLINE_EXCEEDED, `worker ${request.id} still has requests in flight; it leaves once they end`));
          return;
        }
        const onAbort = () => reject(new ServerError(Status.DEADLINE_EXCEEDED, `worker ${request.id} still has requests in flight; it leaves once they end`));
        context.signal.addEventListener("abort", onAbort, { once: true });
        removed.then(() => {
          context.signal.removeEventListener("abort", onAbort);
          resolve();
        }, reject);
      });
      return {};
    },

    async reloadModels(_request, context) {
      const result = await deps.reload(context.signal);
      return { models: result.models, workersAdded: result.added, workersRemoved: result.removed };
    },

    async storeProviderKey(request, context) {
      requireProvider(request.provider);
      requireApiKey(request.apiKey);
      return requireVault(deps.vault).store(request.provider, request.apiKey, context.signal);
    },

    async rotateProviderKey(request, context) {
      requireProvider(request.provider);
      requireApiKey(request.apiKey);
      return requireVault(deps.vault).rotate(request.provider, request.apiKey, context.signal);
    },

    async deleteProviderKey(request, context) {
      requireProvider(request.provider);
      return { deleted: await requireVault(deps.vault).delete(request.provider, context.signal) };
    },

    async listProviderKeys(_request, context) {
      return { keys: await requireVault(deps.vault).list(context.signal) };
    },

    async getUsage(request, context) {
      if (!deps.usage) throw new ServerError(Status.FAILED_PRECONDITION, "usage is not recorded: the broker has no database");
      const rows = await deps.usage.report(
        {
          ...(request.provider ? { provider: request.provider } : {}),
          ...(request.model ? { model: request.model } : {}),
          ...(request.since ? { since: request.since } : {}),
        },
        context.signal,
      );
      return { rows };
    },
  };
}
