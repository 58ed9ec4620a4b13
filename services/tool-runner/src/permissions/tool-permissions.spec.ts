import { resolve } from "node:path";
import { createBuiltinTools } from "../tools/builtin-tools";
import {
  loadToolPermissions,
  parseToolPermissions,
  PermissionDeniedError,
  PermissionsConfigError,
  UnknownAgentTypeError,
} from "./tool-permissions";
import { ToolArgumentError } from "../tools/tool";

const tools = createBuiltinTools();
const repositoryRoot = resolve(__dirname, "../../../..");

function parse(agentsText: string, toolsText = "tools: {}\n") {
  return parseToolPermissions({ agentsText, agentsSource: "agents.yaml", toolsText, toolsSource: "tools.yaml", tools });
}

function errorOf(action: () => unknown): Error {
  try {
    action();
  } catch (error) {
    return error as Error;
  }
  throw new Error("expected an error");
}

describe("the shipped configs/agents.yaml and configs/tools.yaml", () => {
  it("load, and give each agent type the tools and access it is documented to have", async () => {
    const permissions = await loadToolPermissions(resolve(repositoryRoot, "configs/agents.yaml"), resolve(repositoryRoot, "configs/tools.yaml"), tools);
    expect(permissions.agentTypes()).toEqual(["chat", "edit", "explore", "plan"]);
    expect([...permissions.allowedTools("chat")!]).toEqual([]);
    expect([...permissions.allowedTools("plan")!]).toEqual(["read_file", "list_files", "search_code", "web_search"]);
    expect([...permissions.allowedTools("explore")!]).toEqual(["read_file", "list_files", "search_code", "web_search", "run_command", "run_test"]);
    expect([...permissions.allowedTools("edit")!]).toEqual(tools.map((tool) => tool.name));
    expect(permissions.mayWrite("plan")).toBe(false);
    expect(permissions.mayWrite("explore")).toBe(false);
    expect(permissions.mayWrite("edit")).toBe(true);
    expect(permissions.toolSettings("run_test")).toEqual({ enabled: true, defaultTimeoutMs: 300_000 });
    expect(permissions.toolSettings("read_file")).toEqual({ enabled: true });
  });
});

describe("ToolPermissions.check", () => {
  const permissions = parse(`
agents:
  plan:
    tools: [read_file, search_code]
    workspace_access: read-only
    model: coder            # keys of the agent loop are ignored
    system_prompt: Plan.
  edit:
    tools: "*"
    workspace_access: read-write
  reader:
    tools: "*"
    workspace_access: read-only
`);

  it("lets an agent type call its tools", () => {
    expect(() => permissions.check("plan", "read_file")).not.toThrow();
    expect(() => permissions.check("edit", "write_file")).not.toThrow();
  });

  it("refuses a tool the agent type does not have, naming the ones it has", () => {
    const error = errorOf(() => permissions.check("plan", "write_file"));
    expect(error).toBeInstanceOf(PermissionDeniedError);
    expect(error.message).toBe('tool "write_file" writes files, and agent type "plan" has read-only workspace access');
    expect(errorOf(() => permissions.check("plan", "list_files")).message).toBe('tool "list_files" is not allowed for agent type "plan" (allowed: read_file, search_code)');
  });

  it("gives a read-only agent with tools: * every tool that does not write files", () => {
    expect([...permissions.allowedTools("reader")!]).toEqual(["read_file", "list_files", "search_code", "run_command", "run_test", "web_search"]);
    expect(errorOf(() => permissions.check("reader", "edit_file"))).toBeInstanceOf(PermissionDeniedError);
  });

  it("refuses an unknown agent type as an argument error naming agent_type and the known ones", () => {
    const error = errorOf(() => permissions.check("admin", "read_file"));
    expect(error).toBeInstanceOf(UnknownAgentTypeError);
    expect(error).toBeInstanceOf(ToolArgumentError);
    expect(error.message).toBe('agent_type: unknown agent type "admin" (known: edit, plan, reader)');
    expect(permissions.allowedTools("admin")).toBeUndefined();
    expect(permissions.mayWrite("admin")).toBe(false);
  });

  it("requires agent_type when the file names no default", () => {
    expect(errorOf(() => permissions.check("", "read_file")).message).toBe("agent_type: required (known: edit, plan, reader)");
  });

  it("takes default_agent_type for a call without agent_type", () => {
    const withDefault = parse("default_agent_type: plan\nagents:\n  plan:\n    tools: [read_file]\n    workspace_access: read-only\n");
    expect(() => withDefault.check("", "read_file")).not.toThrow();
    expect(errorOf(() => withDefault.check("", "list_files")).message).toBe('tool "list_files" is not allowed for agent type "plan" (allowed: read_file)');
    expect(withDefault.mayWrite("")).toBe(false);
  });

  it("leaves out tools disabled in tools.yaml and says so when one is called", () => {
    const disabled = parse("agents:\n  edit:\n    tools: '*'\n    workspace_access: read-write\n", "tools:\n  web_search:\n    enabled: false\n");
    expect(disabled.allowedTools("edit")!.has("web_search")).toBe(false);
    expect(errorOf(() => disabled.check("edit", "web_search")).message).toBe('tool "web_search" is disabled in tools.yaml');
  });
});

describe("configuration errors", () => {
  it.each<[string, string, string, string]>([
    ["an unknown tool in an agent", "agents:\n  plan:\n    tools: [read_file, rm_rf]\n    workspace_access: read-only\n", "tools: {}\n",
      'agents.yaml:3: agents.plan.tools.1: unknown tool "rm_rf" (known: read_file, list_files, search_code, write_file, edit_file, run_command, run_test, web_search)'],
    ["a write tool for a read-only agent", "agents:\n  plan:\n    workspace_access: read-only\n    tools:\n      - read_file\n      - edit_file\n", "tools: {}\n",
      'agents.yaml:6: agents.plan.tools.1: tool "edit_file" writes files, but the agent type has workspace_access: read-only'],
    ["a missing workspace_access", "agents:\n  plan:\n    tools: []\n", "tools: {}\n", "agents.yaml:3: agents.plan.workspace_access: "],
    ["a wrong workspace_access", "agents:\n  plan:\n    tools: []\n    workspace_access: write\n", "tools: {}\n", "agents.yaml:4: agents.plan.workspace_access: "],
    ["tools that are not a list", "agents:\n  plan:\n    tools: read_file\n    workspace_access: read-only\n", "tools: {}\n", "agents.yaml:3: agents.plan.tools: "],
    ["a default that is not an agent type", "default_agent_type: boss\nagents: {}\n", "tools: {}\n", 'agents.yaml:1: default_agent_type: no agent type is named "boss"'],
    ["no agents", "agent: {}\n", "tools: {}\n", "agents.yaml:1: agents: "],
    ["invalid YAML", "agents:\n  plan: [\n", "tools: {}\n", "agents.yaml:3: not valid YAML: "],
    ["an unknown tool in tools.yaml", "agents: {}\n", "tools:\n  read_file:\n  grep:\n    enabled: true\n", 'tools.yaml:3: tools.grep: unknown tool "grep"'],
    ["a bad timeout in tools.yaml", "agents: {}\n", "tools:\n  run_test:\n    timeout_ms: -5\n", "tools.yaml:3: tools.run_test.timeout_ms: "],
  ])("%s: names the file, the line and the key", (_, agentsText, toolsText, message) => {
    const error = errorOf(() => parse(agentsText, toolsText));
    expect(error).toBeInstanceOf(PermissionsConfigError);
    expect(error.message.startsWith(message)).toBe(true);
  });

  it("names the variable and the path when a file cannot be read", async () => {
    await expect(loadToolPermissions("/nonexistent/agents.yaml", resolve(repositoryRoot, "configs/tools.yaml"), tools)).rejects.toThrow(
      'invalid configuration: AGENTS_CONFIG: cannot read "/nonexistent/agents.yaml": no such file',
    );
  });
});
