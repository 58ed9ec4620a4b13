import { compileToolSchema } from "./argument-validation";
import type { ToolDefinition } from "./tool";

/** A tool of any argument type, as the registry holds it. */
// Each tool narrows its own arguments; a list of them can only be typed this loosely.
export type AnyToolDefinition = ToolDefinition<any>;

/** The tools a tool-runner offers, by name. */
export interface ToolRegistry {
  get(name: string): AnyToolDefinition | undefined;
  /** Every tool, in the order registered. */
  list(): readonly AnyToolDefinition[];
  /** Adds a tool (a plugin). Throws when the name is taken or the parameters schema does not compile. */
  register(tool: AnyToolDefinition): void;
}

const toolNamePattern = /^[a-z][a-z0-9_]{0,63}$/;

/** A registry holding `tools`; their schemas are compiled now, so that a broken one fails at start. */
export function createToolRegistry(tools: readonly AnyToolDefinition[] = []): ToolRegistry {
  const byName = new Map<string, AnyToolDefinition>();
  const registry: ToolRegistry = {
    get: (name) => byName.get(name),
    list: () => [...byName.values()],
    register(tool) {
      // Models see the name; OpenAI-style function names allow little more than this.
      if (!toolNamePattern.test(tool.name)) throw new Error(`tool name ${JSON.stringify(tool.name)}: use 1-64 lowercase letters, digits and '_'`);
      if (byName.has(tool.name)) throw new Error(`tool ${JSON.stringify(tool.name)} is registered twice`);
      compileToolSchema(tool);
      byName.set(tool.name, tool);
    },
  };
  for (const tool of tools) registry.register(tool);
  return registry;
}
