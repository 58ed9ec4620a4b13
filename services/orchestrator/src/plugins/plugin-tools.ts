import type { ToolDefinition } from "@vlinders/proto";

/** What an in-process tool returns; like a ToolResult without the fields the loop fills in. */
export interface PluginToolOutcome {
  readonly success: boolean;
  readonly output: string;
  readonly error?: string;
  /** Structured result, sent as result_json. */
  readonly result?: unknown;
}

export interface PluginToolContext {
  readonly runId: string;
  readonly agentType: string;
  readonly workspaceId: string;
  /** Aborted when the run is cancelled or reaches its deadline. */
  readonly signal: AbortSignal;
}

/** A tool the orchestrator runs itself; `args` is the parsed JSON object the model sent. */
export type PluginToolExecute = (args: Record<string, unknown>, context: PluginToolContext) => Promise<PluginToolOutcome>;

export interface PluginTool {
  readonly definition: ToolDefinition;
  /** Agent types that get the tool ("*": all but those with no tools at all, like chat). */
  readonly agentTypes: "*" | readonly string[];
  readonly execute: PluginToolExecute;
}

/** Custom tools implemented in the orchestrator's process, offered to agent types beside the tool-runner's. */
export interface PluginToolRegistry {
  /** Throws when the name is taken. */
  registerTool(definition: ToolDefinition, execute: PluginToolExecute, options?: { agentTypes?: "*" | readonly string[] }): PluginToolRegistry;
  get(name: string): PluginTool | undefined;
  /** The tools an agent type gets, in registration order. */
  forAgentType(agentType: string): readonly PluginTool[];
}

/** An empty registry of in-process tools. */
export function createPluginToolRegistry(): PluginToolRegistry {
  const tools = new Map<string, PluginTool>();
  const registry: PluginToolRegistry = {
    registerTool(definition, execute, options = {}) {
      if (tools.has(definition.name)) throw new Error(`plugin tool "${definition.name}" is already registered`);
      tools.set(definition.name, { definition, execute, agentTypes: options.agentTypes ?? "*" });
      return registry;
    },
    get: (name) => tools.get(name),
    forAgentType: (agentType) => [...tools.values()].filter((tool) => tool.agentTypes === "*" || tool.agentTypes.includes(agentType)),
  };
  return registry;
}
