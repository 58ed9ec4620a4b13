import { readFile } from "node:fs/promises";
import type { AgentTypeInfo } from "@vlinders/proto";
import { ConfigError, type Logger } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import { z } from "zod";
import { noHooks, type AgentTypeHooks, type HookTarget } from "../hooks/hook-types";
import { parseYamlFile, validateYamlFile } from "@vlinders/yaml-config";

/** An agents file that cannot be used; names the file, the key path and the line. */
export class AgentTypesConfigError extends ConfigError {
  override name = "AgentTypesConfigError";
}

/** Limits of one run, shared with its sub-agents (one pool). */
export interface AgentBudgets {
  /** Prompt plus completion tokens over the whole run, sub-agents included. */
  readonly maxTokens: number;
  /** Wall-clock limit of the run, sub-agents included. */
  readonly timeoutMs: number;
  /** Tool calls over the whole run, sub-agents included. */
  readonly maxToolCalls: number;
  /** US dollars over the whole run, sub-agents included, priced by model_prices; undefined: no limit. */
  readonly maxCostUsd: number | undefined;
}

/** What a model's tokens cost, in US dollars per million (model_prices of the agents file). */
export interface ModelPrice {
  readonly promptUsdPerMillionTokens: number;
  readonly completionUsdPerMillionTokens: number;
}

/** One agent type: what it is told, what it may call and how long it may go on. */
export interface AgentType {
  readonly name: string;
  readonly description: string;
  /** Empty: the broker's default model. */
  readonly model: string;
  readonly maxIterations: number;
  /** Tool names, or "*" for every tool the tool-runner lets this type use. */
  readonly tools: "*" | readonly string[];
  readonly workspaceAccess: "read-only" | "read-write";
  /** Agent types it may start through the spawn_subagents tool (none: it does not get the tool). */
  readonly subagents: readonly string[];
  readonly systemPrompt: string;
  readonly budgets: AgentBudgets;
  /**
   * The model's context window as the context service keeps it (when CONTEXT_ADDRESS is set): past
   * 75 % of it the conversation is compacted. Default 32768.
   */
  readonly contextBudgetTokens: number;
  readonly hooks: AgentTypeHooks;
  /**
   * The agent type the tool-runner knows this one as, for its permissions. The file's types are
   * the tool-runner's too (it reads the same file); a type registered in code borrows one of them.
   */
  readonly toolAgentType: string;
  /** Where it was defined. */
  readonly source: "file" | "code";
}

/** An agent type registered in code (a plugin); unset fields take the defaults below. */
export type AgentTypeDefinition = Pick<AgentType, "name" | "description" | "maxIterations" | "toolAgentType"> &
  Partial<Pick<AgentType, "model" | "tools" | "workspaceAccess" | "subagents" | "systemPrompt" | "budgets" | "contextBudgetTokens" | "hooks">>;

/** The agent types of the agents file plus those registered in code, reloadable (SIGHUP). */
export interface AgentTypeCatalog {
  /** Grows with every successful reload or registration: caches keyed on it are dropped then. */
  readonly version: number;
  get(name: string): AgentType | undefined;
  /** The agent type, or INVALID_ARGUMENT `agent_type: unknown agent type "x" (known: …)`. */
  require(name: string): AgentType;
  /** Sorted by name. */
  list(): readonly AgentType[];
  /** The price of a model's tokens (model_prices; its "default" entry for a model it does not name). */
  priceOf(model: string): ModelPrice | undefined;
  /**
   * Reads the file again. An invalid file leaves the catalog as it was: the error is returned
   * (and logged), never thrown, so that a typo in a live edit does not take running agents down.
   */
  reload(): Promise<{ readonly ok: true } | { readonly ok: false; readonly error: string }>;
  /** Adds an agent type defined in code; it survives reloads. Throws when the name is taken. */
  register(definition: AgentTypeDefinition): void;
}

const agentTypeName = z.string().regex(/^[a-z][a-z0-9_-]{0,63}$/, "agent type names are 1-64 lowercase letters, digits, '_' or '-'");
const positiveInteger = z.number().int().positive();

/** The longest timeout_ms: Node's timers hold at most 2^31-1 ms (about 24.8 days). */
export const maxTimeoutMs = 2_147_483_647;

/** The context budget of an agent type that names none. */
export const defaultContextBudgetTokens = 32_768;

const hookTargetSchema = z.union([
  z.object({ plugin: z.string().min(1), timeout_ms: positiveInteger.optional() }).strict(),
  z.object({ url: z.string().regex(/^https?:\/\/\S+$/, "must be an http:// or https:// URL"), timeout_ms: positiveInteger.optional() }).strict(),
]);

const hookList = z.array(hookTargetSchema).default([]);

const agentSchema = z
  .object({
    description: z.string().min(1),
    model: z.string().default(""),
    max_iterations: positiveInteger.max(1000),
    // Read by the tool-runner as well, with the same meaning.
    tools: z.union([z.literal("*"), z.array(z.string().min(1))]),
    workspace_access: z.enum(["read-only", "read-write"]),
    subagents: z.array(agentTypeName).default([]),
    system_prompt: z.string().default(""),
    budgets: z
      .object({
        max_tokens: positiveInteger,
        // Node's timers hold at most 2^31-1 ms; a longer AbortSignal.timeout would fire after 1 ms instead.
        timeout_ms: positiveInteger.max(maxTimeoutMs),
        max_tool_calls: z.number().int().min(0),
        max_cost_usd: z.number().positive().optional(),
      })
      .strict(),
    // The context service's budgets are uint32; a window smaller than 256 tokens holds no conversation.
    context_budget_tokens: positiveInteger.min(256).max(4_000_000_000).default(defaultContextBudgetTokens),
    hooks: z
      .object({ pre_tool_use: hookList, post_tool_use: hookList, on_iteration: hookList, on_finish: hookList })
      .strict()
      .optional(),
  })
  // Unknown keys are refused: in this file they are typos (max_iteration) that would silently fall back.
  .strict();

const agentsFileSchema = z
  .object({
    /** Read by the tool-runner only (the agent type of a tool call that names none). */
    default_agent_type: z.string().optional(),
    /** Prices of the models' tokens by model id ("default": any other model), for max_cost_usd. */
    model_prices: z
      .record(
        z.string().min(1),
        z.object({ prompt_usd_per_million_tokens: z.number().min(0), completion_usd_per_million_tokens: z.number().min(0) }).strict(),
      )
      .default({}),
    agents: z.record(agentTypeName, agentSchema),
  })
  .strict();

/** Defaults of an agent type registered in code. */
const codeDefaults = {
  model: "",
  tools: [] as readonly string[],
  workspaceAccess: "read-only",
  subagents: [] as readonly string[],
  systemPrompt: "",
  budgets: { maxTokens: 100_000, timeoutMs: 300_000, maxToolCalls: 50, maxCostUsd: undefined },
  contextBudgetTokens: defaultContextBudgetTokens,
  hooks: noHooks,
} as const;

/** Which in-process hooks exist: a `{plugin: name}` naming none is refused when the file is read. */
export interface HookPluginNames {
  get(name: string): unknown;
}

/** Parses an agents file; every problem names `source`, the key path and the line. */
export function parseAgentTypes(
  text: string,
  source: string,
  codeTypes: ReadonlyMap<string, AgentType> = new Map(),
  hookPlugins?: HookPluginNames,
): Map<string, AgentType> {
  return parseAgentsFile(text, source, codeTypes, hookPlugins).types;
}

/** The agent types of an agents file and its model prices. */
function parseAgentsFile(
  text: string,
  source: string,
  codeTypes: ReadonlyMap<string, AgentType>,
  hookPlugins: HookPluginNames | undefined,
): { types: Map<string, AgentType>; prices: Map<string, ModelPrice> } {
  const parsed = parseYamlFile(text, source);
  if ("error" in parsed) throw new AgentTypesConfigError(parsed.error);
  const validated = validateYamlFile(agentsFileSchema, parsed.file);
  if ("error" in validated) throw new AgentTypesConfigError(validated.error);
  const file = parsed.file;
  const types = new Map<string, AgentType>();
  for (const [name, agent] of Object.entries(validated.data.agents)) {
    if (codeTypes.has(name)) throw new AgentTypesConfigError(file.describe(["agents", name], `agent type "${name}" is already registered in code`, true));
    const hooks = agent.hooks ?? { pre_tool_use: [], post_tool_use: [], on_iteration: [], on_finish: [] };
    types.set(name, {
      name,
      description: agent.description,
      model: agent.model,
      maxIterations: agent.max_iterations,
      tools: agent.tools,
      workspaceAccess: agent.workspace_access,
      subagents: agent.subagents,
      systemPrompt: agent.system_prompt,
      budgets: {
        maxTokens: agent.budgets.max_tokens,
        timeoutMs: agent.budgets.timeout_ms,
        maxToolCalls: agent.budgets.max_tool_calls,
        maxCostUsd: agent.budgets.max_cost_usd,
      },
      contextBudgetTokens: agent.context_budget_tokens,
      hooks: {
        pre_tool_use: hooks.pre_tool_use.map(toHookTarget),
        post_tool_use: hooks.post_tool_use.map(toHookTarget),
        on_iteration: hooks.on_iteration.map(toHookTarget),
        on_finish: hooks.on_finish.map(toHookTarget),
      },
      toolAgentType: name,
      source: "file",
    });
  }
  // A cost limit needs a price for whatever model a run uses (an override may name any), so a
  // default price: without one, a model with no price would cost 0 and the limit would never hold.
  if (validated.data.model_prices.default === undefined) {
    for (const [name, agent] of types) {
      if (agent.budgets.maxCostUsd !== undefined) {
        throw new AgentTypesConfigError(file.describe(["agents", name, "budgets", "max_cost_usd"], "needs a default entry in model_prices (the price of any model it does not name)"));
      }
    }
  }
  // A hook plugin nobody registered would deny every call of the type at run time (fail closed):
  // a typo in the file is refused now, with its line, instead.
  if (hookPlugins) {
    for (const [name, agent] of types) {
      for (const [event, targets] of Object.entries(agent.hooks)) {
        targets.forEach((target, index) => {
          if (target.kind === "plugin" && hookPlugins.get(target.plugin) === undefined) {
            throw new AgentTypesConfigError(file.describe(["agents", name, "hooks", event, index, "plugin"], `hook plugin "${target.plugin}" is not registered (see ORCHESTRATOR_PLUGINS)`));
          }
        });
      }
    }
  }
  // Checked once the whole file is read: a type may name one defined further down.
  for (const [name, agent] of types) {
    agent.subagents.forEach((subagent, index) => {
      if (!types.has(subagent) && !codeTypes.has(subagent)) {
        const known = [...types.keys(), ...codeTypes.keys()].sort().join(", ");
        throw new AgentTypesConfigError(file.describe(["agents", name, "subagents", index], `unknown agent type "${subagent}" (known: ${known})`));
      }
      const child = types.get(subagent) ?? codeTypes.get(subagent);
      // A sub-agent works in its parent's workspace: a read-write one would let a read-only type write through it.
      if (agent.workspaceAccess === "read-only" && child?.workspaceAccess === "read-write") {
        throw new AgentTypesConfigError(
          file.describe(["agents", name, "subagents", index], `read-only agent type "${name}" may not start read-write agent type "${subagent}" (it could write through it)`),
        );
      }
    });
  }
  const prices = new Map(
    Object.entries(validated.data.model_prices).map(([model, price]) => [
      model,
      { promptUsdPerMillionTokens: price.prompt_usd_per_million_tokens, completionUsdPerMillionTokens: price.completion_usd_per_million_tokens },
    ]),
  );
  return { types, prices };
}

function toHookTarget(target: z.infer<typeof hookTargetSchema>): HookTarget {
  return "plugin" in target
    ? { kind: "plugin", plugin: target.plugin, timeoutMs: target.timeout_ms }
    : { kind: "webhook", url: target.url, timeoutMs: target.timeout_ms };
}

/**
 * Reads the agents file (AGENTS_CONFIG) and returns the catalog; an unreadable or invalid file
 * throws an AgentTypesConfigError naming the file, key path and line, so the service refuses to start.
 */
export async function loadAgentTypeCatalog(path: string, options: { logger: Logger; hookPlugins?: HookPluginNames }): Promise<AgentTypeCatalog> {
  const codeTypes = new Map<string, AgentType>();
  const { hookPlugins } = options;
  let { types: fileTypes, prices } = parseAgentsFile(await readAgentsFile(path), path, codeTypes, hookPlugins);
  let version = 1;
  let merged = merge(fileTypes, codeTypes);

  return {
    get version() {
      return version;
    },
    get: (name) => merged.get(name),
    require(name) {
      const agentType = merged.get(name);
      if (agentType) return agentType;
      const known = [...merged.keys()].sort().join(", ");
      if (name === "") throw new ServerError(Status.INVALID_ARGUMENT, `agent_type: is required (known: ${known})`);
      throw new ServerError(Status.INVALID_ARGUMENT, `agent_type: unknown agent type ${JSON.stringify(name)} (known: ${known})`);
    },
    list: () => [...merged.values()].sort((a, b) => a.name.localeCompare(b.name)),
    priceOf: (model) => prices.get(model) ?? prices.get("default"),
    async reload() {
      try {
        ({ types: fileTypes, prices } = parseAgentsFile(await readAgentsFile(path), path, codeTypes, hookPlugins));
      } catch (error: unknown) {
        const message = error instanceof Error ? error.message : String(error);
        options.logger.error({ err: error }, `agent types not reloaded, the previous ones stay in use: ${message}`);
        return { ok: false, error: message };
      }
      merged = merge(fileTypes, codeTypes);
      version += 1;
      options.logger.info({ agentTypes: [...merged.keys()] }, "agent types reloaded");
      return { ok: true };
    },
    register(definition) {
      if (merged.has(definition.name)) throw new Error(`agent type "${definition.name}" is already defined`);
      if (!agentTypeName.safeParse(definition.name).success) throw new Error(`agent type "${definition.name}": names are 1-64 lowercase letters, digits, '_' or '-'`);
      if (!fileTypes.has(definition.toolAgentType)) {
        throw new Error(`agent type "${definition.name}": toolAgentType "${definition.toolAgentType}" is not an agent type of ${path}`);
      }
      const agentType: AgentType = { ...codeDefaults, ...definition, source: "code" };
      for (const subagent of agentType.subagents) {
        // The same rule as for the file's types (see parseAgentTypes).
        if (agentType.workspaceAccess === "read-only" && merged.get(subagent)?.workspaceAccess === "read-write") {
          throw new Error(`agent type "${definition.name}": read-only agent type may not start read-write agent type "${subagent}" (it could write through it)`);
        }
      }
      if (agentType.budgets.timeoutMs > maxTimeoutMs) throw new Error(`agent type "${definition.name}": budgets.timeoutMs must be at most ${maxTimeoutMs}`);
      for (const [event, targets] of Object.entries(agentType.hooks)) {
        for (const target of targets) {
          if (target.kind === "plugin" && hookPlugins && hookPlugins.get(target.plugin) === undefined) {
            throw new Error(`agent type "${definition.name}": hooks.${event}: hook plugin "${target.plugin}" is not registered`);
          }
        }
      }
      codeTypes.set(definition.name, agentType);
      merged = merge(fileTypes, codeTypes);
      version += 1;
    },
  };
}

function merge(fileTypes: ReadonlyMap<string, AgentType>, codeTypes: ReadonlyMap<string, AgentType>): Map<string, AgentType> {
  return new Map([...fileTypes, ...codeTypes]);
}

async function readAgentsFile(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : error instanceof Error ? error.message : String(error);
    throw new AgentTypesConfigError(`invalid configuration: AGENTS_CONFIG: cannot read ${JSON.stringify(path)}: ${reason}`);
  }
}

/** Name of the tool through which agent types start sub-agents. */
export const spawnSubagentsToolName = "spawn_subagents";

/** What ListAgentTypes says of an agent type; `tools` are the names it may call (from the tool-runner when "*"). */
export function agentTypeInfo(agentType: AgentType, tools: readonly string[]): AgentTypeInfo {
  return {
    name: agentType.name,
    description: agentType.description,
    model: agentType.model,
    maxIterations: agentType.maxIterations,
    tools: agentType.subagents.length > 0 ? [...tools, spawnSubagentsToolName] : [...tools],
    subagentTypes: [...agentType.subagents],
    workspaceAccess: agentType.workspaceAccess,
  };
}
