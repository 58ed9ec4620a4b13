import { readFile } from "node:fs/promises";
import { ConfigError } from "@vlinders/service-runtime";
import { parseYamlFile, validateYamlFile, type YamlFile } from "@vlinders/yaml-config";
import { z } from "zod";
import { ToolArgumentError } from "../tools/tool";

/** A tools or agents file that cannot be used; the service refuses to start, naming file, key and line. */
export class PermissionsConfigError extends ConfigError {
  override name = "PermissionsConfigError";
}

/** The call named an agent type the agents file does not define (or none, with no default). Maps to INVALID_ARGUMENT. */
export class UnknownAgentTypeError extends ToolArgumentError {
  override name = "UnknownAgentTypeError";
}

/** The agent type may not use the tool. Maps to PERMISSION_DENIED. */
export class PermissionDeniedError extends Error {
  override name = "PermissionDeniedError";
}

/** What the permissions need to know of a tool. */
export interface ToolAccessInfo {
  readonly name: string;
  readonly readOnly: boolean;
  /** See ToolDefinition.honoursReadOnlyAccess. */
  readonly honoursReadOnlyAccess?: boolean;
}

/** Per-tool settings from the tools file; absent fields fall back to the service's limits. */
export interface ToolSettings {
  readonly enabled: boolean;
  /** Timeout of a call to this tool that names none. */
  readonly defaultTimeoutMs?: number;
  /** Bytes of output returned by this tool. */
  readonly outputLimitBytes?: number;
}

/** Which agent type may use which tool, and whether it may write. */
export interface ToolPermissions {
  /** Tools the agent type may call (enabled ones only), or undefined for an unknown agent type. "" is the default agent type, if any. */
  allowedTools(agentType: string): ReadonlySet<string> | undefined;
  /** Whether the agent type has read-write workspace access; false for an unknown one. */
  mayWrite(agentType: string): boolean;
  /**
   * Throws an UnknownAgentTypeError (`agent_type: unknown agent type "x" (known: …)`) or a
   * PermissionDeniedError (`tool "write_file" is not allowed for agent type "plan" (allowed: …)`)
   * unless the agent type may call the tool.
   */
  check(agentType: string, toolName: string): void;
  /** The agent types defined, sorted. */
  agentTypes(): readonly string[];
  /** The tools file's settings of a tool (enabled, with no overrides, when the file does not name it). */
  toolSettings(toolName: string): ToolSettings;
}

// Unknown keys are stripped, not refused: the agent loop adds model, max_iterations, system_prompt
// and subagents to the same file, and this loader must keep working when it does.
const agentSchema = z.object({
  tools: z.union([z.literal("*"), z.array(z.string().min(1))]),
  workspace_access: z.enum(["read-only", "read-write"]),
});

const agentsFileSchema = z.object({
  /** The agent type of a call that names none; without it, agent_type is required. */
  default_agent_type: z.string().min(1).optional(),
  agents: z.record(z.string().regex(/^[a-z][a-z0-9_-]{0,63}$/, "agent type names are 1-64 lowercase letters, digits, '_' or '-'"), agentSchema),
});

const toolSettingsSchema = z.object({
  enabled: z.boolean().default(true),
  timeout_ms: z.number().int().positive().optional(),
  output_limit_bytes: z.number().int().positive().optional(),
});

const toolsFileSchema = z.object({
  tools: z.record(z.string(), toolSettingsSchema.nullable()).default({}),
});

interface AgentType {
  readonly tools: ReadonlySet<string>;
  readonly mayWrite: boolean;
}

/** Reads and checks both files; every problem names the file, the key path and, when known, the line. */
export async function loadToolPermissions(agentsPath: string, toolsPath: string, tools: readonly ToolAccessInfo[]): Promise<ToolPermissions> {
  const [agentsText, toolsText] = await Promise.all([readConfig(agentsPath, "AGENTS_CONFIG"), readConfig(toolsPath, "TOOLS_CONFIG")]);
  return parseToolPermissions({ agentsText, agentsSource: agentsPath, toolsText, toolsSource: toolsPath, tools });
}

/** As loadToolPermissions, from the files' text; `*Source` names them in errors. */
export function parseToolPermissions(input: {
  agentsText: string;
  agentsSource: string;
  toolsText: string;
  toolsSource: string;
  tools: readonly ToolAccessInfo[];
}): ToolPermissions {
  const known = new Map(input.tools.map((tool) => [tool.name, tool]));
  const knownList = [...known.keys()].join(", ");

  const toolsDocument = parseYaml(input.toolsText, input.toolsSource);
  const toolsFile = validate(toolsFileSchema, toolsDocument);
  const settings = new Map<string, ToolSettings>();
  for (const [name, entry] of Object.entries(toolsFile.tools)) {
    if (!known.has(name)) throw toolsDocument.error(["tools", name], `unknown tool "${name}" (known: ${knownList})`, true);
    const value = entry ?? { enabled: true };
    settings.set(name, {
      enabled: value.enabled,
      ...(value.timeout_ms === undefined ? {} : { defaultTimeoutMs: value.timeout_ms }),
      ...(value.output_limit_bytes === undefined ? {} : { outputLimitBytes: value.output_limit_bytes }),
    });
  }
  const enabled = (name: string): boolean => settings.get(name)?.enabled ?? true;

  const agentsDocument = parseYaml(input.agentsText, input.agentsSource);
  const agentsFile = validate(agentsFileSchema, agentsDocument);
  const agents = new Map<string, AgentType>();
  for (const [agentType, agent] of Object.entries(agentsFile.agents)) {
    const mayWrite = agent.workspace_access === "read-write";
    const names = agent.tools === "*" ? [...known.keys()].filter((name) => mayWrite || usableReadOnly(known.get(name)!)) : agent.tools;
    if (agent.tools !== "*") {
      agent.tools.forEach((name, index) => {
        const path = ["agents", agentType, "tools", index];
        const tool = known.get(name);
        if (!tool) throw agentsDocument.error(path, `unknown tool "${name}" (known: ${knownList})`);
        // A contradiction in the file is caught at start, not at the first call that trips on it.
        if (!mayWrite && !usableReadOnly(tool)) throw agentsDocument.error(path, `tool "${name}" writes files, but the agent type has workspace_access: read-only`);
      });
    }
    agents.set(agentType, { tools: new Set(names.filter(enabled)), mayWrite });
  }
  if (agentsFile.default_agent_type !== undefined && !agents.has(agentsFile.default_agent_type)) {
    throw agentsDocument.error(["default_agent_type"], `no agent type is named "${agentsFile.default_agent_type}"`);
  }

  const agentTypes = [...agents.keys()].sort();
  const find = (agentType: string): AgentType | undefined => agents.get(agentType === "" ? (agentsFile.default_agent_type ?? "") : agentType);

  return {
    allowedTools: (agentType) => find(agentType)?.tools,
    mayWrite: (agentType) => find(agentType)?.mayWrite ?? false,
    agentTypes: () => agentTypes,
    toolSettings: (toolName) => settings.get(toolName) ?? { enabled: true },
    check(agentType, toolName) {
      const agent = find(agentType);
      if (!agent) {
        const knownTypes = agentTypes.join(", ");
        if (agentType === "") throw new UnknownAgentTypeError(`agent_type: required (known: ${knownTypes})`);
        throw new UnknownAgentTypeError(`agent_type: unknown agent type ${JSON.stringify(agentType)} (known: ${knownTypes})`);
      }
      if (agent.tools.has(toolName)) return;
      const shownType = JSON.stringify(agentType === "" ? agentsFile.default_agent_type : agentType);
      if (!enabled(toolName) && known.has(toolName)) throw new PermissionDeniedError(`tool "${toolName}" is disabled in ${input.toolsSource}`);
      const tool = known.get(toolName);
      if (tool && !agent.mayWrite && !usableReadOnly(tool)) {
        throw new PermissionDeniedError(`tool "${toolName}" writes files, and agent type ${shownType} has read-only workspace access`);
      }
      const allowed = [...agent.tools].join(", ") || "none";
      throw new PermissionDeniedError(`tool "${toolName}" is not allowed for agent type ${shownType} (allowed: ${allowed})`);
    },
  };
}

function usableReadOnly(tool: ToolAccessInfo): boolean {
  return tool.readOnly || tool.honoursReadOnlyAccess === true;
}

async function readConfig(path: string, variable: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : error instanceof Error ? error.message : String(error);
    throw new PermissionsConfigError(`invalid configuration: ${variable}: cannot read ${JSON.stringify(path)}: ${reason}`);
  }
}

/** A parsed YAML file whose errors are PermissionsConfigErrors naming the file, key path and line. */
interface PermissionsFile {
  readonly file: YamlFile;
  error(path: ReadonlyArray<string | number>, message: string, atKey?: boolean): PermissionsConfigError;
}

function parseYaml(text: string, source: string): PermissionsFile {
  const parsed = parseYamlFile(text, source);
  if ("error" in parsed) throw new PermissionsConfigError(parsed.error);
  return { file: parsed.file, error: (path, message, atKey) => new PermissionsConfigError(parsed.file.describe(path, message, atKey)) };
}

function validate<Schema extends z.ZodType>(schema: Schema, document: PermissionsFile): z.infer<Schema> {
  const result = validateYamlFile(schema, document.file);
  if ("error" in result) throw new PermissionsConfigError(result.error);
  return result.data;
}
