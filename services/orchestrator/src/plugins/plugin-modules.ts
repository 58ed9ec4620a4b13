import { isAbsolute, resolve } from "node:path";
import type { AgentTypeDefinition } from "../agents/agent-types";
import { createHookRegistry, type HookRegistry } from "../hooks/hook-runner";
import { createPluginToolRegistry, type PluginToolRegistry } from "./plugin-tools";

/** What a plugin module's `register` is given: the registries of this orchestrator. */
export interface OrchestratorPluginApi {
  /** In-process hooks, referenced from agents.yaml as `{plugin: name}`. */
  readonly hooks: HookRegistry;
  /** In-process tools, offered to agent types beside the tool-runner's. */
  readonly tools: PluginToolRegistry;
  /** Agent types defined in code; added once agents.yaml is read (a name taken there is an error). */
  readonly agentTypes: { register(definition: AgentTypeDefinition): void };
}

/**
 * A plugin module (ORCHESTRATOR_PLUGINS): CommonJS or ESM, exporting `register`, called once at
 * start. For example:
 *
 *     exports.register = ({ hooks, tools }) => {
 *       hooks.register("no-rm", ({ toolCall }) => (/\brm\b/.test(toolCall?.argumentsJson ?? "") ? { decision: "deny", reason: "no rm" } : undefined));
 *       tools.registerTool({ name: "now", description: "The time.", parametersJsonSchema: "{}" }, async () => ({ success: true, output: new Date().toISOString() }));
 *     };
 */
export interface OrchestratorPluginModule {
  register(api: OrchestratorPluginApi): void | Promise<void>;
}

/** The registries with every plugin module's registrations, and the agent types they define. */
export interface LoadedPlugins {
  readonly hooks: HookRegistry;
  readonly tools: PluginToolRegistry;
  readonly agentTypes: readonly AgentTypeDefinition[];
}

/** A plugin module that cannot be loaded; names the module. The service refuses to start. */
export class PluginModuleError extends Error {
  override name = "PluginModuleError";
}

/**
 * Loads the plugin modules named in ORCHESTRATOR_PLUGINS (comma-separated paths, relative to
 * `baseDir`), in order, and lets each register its hooks, tools and agent types.
 */
export async function loadPluginModules(list: string, baseDir: string = process.cwd()): Promise<LoadedPlugins> {
  const hooks = createHookRegistry();
  const tools = createPluginToolRegistry();
  const agentTypes: AgentTypeDefinition[] = [];
  const api: OrchestratorPluginApi = { hooks, tools, agentTypes: { register: (definition) => void agentTypes.push(definition) } };
  const paths = list
    .split(",")
    .map((path) => path.trim())
    .filter((path) => path !== "");
  for (const path of paths) {
    const file = isAbsolute(path) ? path : resolve(baseDir, path);
    let loaded: unknown;
    try {
      // An absolute path, not a file: URL: ESM's import and CommonJS's require both take it.
      loaded = await import(file);
    } catch (error: unknown) {
      throw new PluginModuleError(`ORCHESTRATOR_PLUGINS: cannot load ${JSON.stringify(path)}: ${error instanceof Error ? error.message : String(error)}`);
    }
    const module = loaded as Partial<OrchestratorPluginModule> & { default?: Partial<OrchestratorPluginModule> };
    // A CommonJS module imported as ESM has its exports under `default`.
    const register = module.register ?? module.default?.register;
    if (typeof register !== "function") throw new PluginModuleError(`ORCHESTRATOR_PLUGINS: ${JSON.stringify(path)} exports no register function`);
    try {
      await register(api);
    } catch (error: unknown) {
      throw new PluginModuleError(`ORCHESTRATOR_PLUGINS: ${JSON.stringify(path)} failed to register: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return { hooks, tools, agentTypes };
}
