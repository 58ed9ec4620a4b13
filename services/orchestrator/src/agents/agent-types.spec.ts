import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "@vlinders/service-runtime";
import { Status } from "nice-grpc-common";
import { createHookRegistry } from "../hooks/hook-runner";
import { agentTypeInfo, loadAgentTypeCatalog, parseAgentTypes } from "./agent-types";

const rootDir = join(__dirname, "../../../..");
const logger = createLogger({ service: "orchestrator", level: "silent" });

const minimal = (extra = "") => `agents:
  explore:
    description: Reads.
    max_iterations: 5
    tools: [read_file]
    workspace_access: read-only
    budgets: { max_tokens: 1000, timeout_ms: 1000, max_tool_calls: 3 }
${extra}`;

describe("agent types", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "agent-types-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("loads configs/agents.yaml: chat, plan, explore and edit, plan and edit delegating to explore", async () => {
    const catalog = await loadAgentTypeCatalog(join(rootDir, "configs/agents.yaml"), { logger });
    expect(catalog.list().map((type) => type.name)).toEqual(["chat", "edit", "explore", "plan"]);
    expect(catalog.get("chat")).toMatchObject({ tools: [], subagents: [], systemPrompt: "", maxIterations: 1 });
    expect(catalog.get("plan")).toMatchObject({ subagents: ["explore"], workspaceAccess: "read-only", toolAgentType: "plan", source: "file" });
    expect(catalog.get("edit")?.tools).toBe("*");
    expect(catalog.get("explore")?.budgets).toEqual({ maxTokens: 100000, timeoutMs: 300000, maxToolCalls: 40 });
    expect(agentTypeInfo(catalog.get("plan")!, ["read_file"])).toMatchObject({ name: "plan", tools: ["read_file", "spawn_subagents"], subagentTypes: ["explore"] });
  });

  it("reads max_cost_usd and model_prices, and refuses a cost limit without prices", async () => {
    expect(parseAgentTypes(minimal(), "agents.yaml").get("explore")?.budgets.maxCostUsd).toBeUndefined();
    const withCost = minimal().replace("max_tool_calls: 3 }", "max_tool_calls: 3, max_cost_usd: 0.5 }");
    expect(() => parseAgentTypes(withCost, "agents.yaml")).toThrow(/^agents\.yaml:7: agents\.explore\.budgets\.max_cost_usd: needs a default entry in model_prices/);
    // Prices of some models only: a model without one would cost nothing.
    expect(() => parseAgentTypes(`model_prices:\n  big: { prompt_usd_per_million_tokens: 3, completion_usd_per_million_tokens: 15 }\n${withCost}`, "agents.yaml")).toThrow(/needs a default entry/);
    const path = join(dir, "agents.yaml");
    await writeFile(
      path,
      `model_prices:\n  big: { prompt_usd_per_million_tokens: 3, completion_usd_per_million_tokens: 15 }\n  default: { prompt_usd_per_million_tokens: 0.1, completion_usd_per_million_tokens: 0.4 }\n${withCost}`,
    );
    const catalog = await loadAgentTypeCatalog(path, { logger });
    expect(catalog.get("explore")?.budgets.maxCostUsd).toBe(0.5);
    expect(catalog.priceOf("big")).toEqual({ promptUsdPerMillionTokens: 3, completionUsdPerMillionTokens: 15 });
    expect(catalog.priceOf("other")).toEqual({ promptUsdPerMillionTokens: 0.1, completionUsdPerMillionTokens: 0.4 });
  });

  it("reads context_budget_tokens, 32768 when unset", () => {
    expect(parseAgentTypes(minimal(), "agents.yaml").get("explore")?.contextBudgetTokens).toBe(32_768);
    expect(parseAgentTypes(minimal("    context_budget_tokens: 4096\n"), "agents.yaml").get("explore")?.contextBudgetTokens).toBe(4096);
    expect(() => parseAgentTypes(minimal("    context_budget_tokens: 10\n"), "agents.yaml")).toThrow(/^agents\.yaml:8: agents\.explore\.context_budget_tokens: /);
  });

  it("reads hooks: plugins and webhooks with their timeouts", () => {
    const types = parseAgentTypes(
      minimal(`    hooks:
      pre_tool_use:
        - plugin: audit
        - url: http://policy.local/hook
          timeout_ms: 500
`),
      "agents.yaml",
    );
    expect(types.get("explore")?.hooks).toEqual({
      pre_tool_use: [
        { kind: "plugin", plugin: "audit", timeoutMs: undefined },
        { kind: "webhook", url: "http://policy.local/hook", timeoutMs: 500 },
      ],
      post_tool_use: [],
      on_iteration: [],
      on_finish: [],
    });
  });

  it.each([
    ["a misspelt key, at its line", minimal("    max_iteration: 3\n"), /^agents\.yaml:8: agents\.explore\.max_iteration: Unrecognized key/],
    ["a missing budget, at its parent", minimal().replace(/    budgets:.*\n/, ""), /^agents\.yaml:3: agents\.explore\.budgets: /],
    ["an unknown sub-agent type", minimal("    subagents: [explorer]\n"), /^agents\.yaml:8: agents\.explore\.subagents\.0: unknown agent type "explorer" \(known: explore\)/],
    ["a webhook that is not a URL", minimal("    hooks:\n      on_finish:\n        - url: ftp://x\n"), /^agents\.yaml:10: agents\.explore\.hooks\.on_finish\.0\.url: must be an http/],
    ["broken YAML", "agents:\n  explore: [\n", /^agents\.yaml:\d+: not valid YAML/],
    [
      "a timeout_ms above 2^31-1 ms (Node's timers would fire at once)",
      minimal().replace("timeout_ms: 1000", "timeout_ms: 2147483648"),
      /^agents\.yaml:7: agents\.explore\.budgets\.timeout_ms: /,
    ],
    [
      "a read-only type that may start a read-write one (it could write through it)",
      minimal(`    subagents: [edit]
  edit:
    description: Writes.
    max_iterations: 5
    tools: "*"
    workspace_access: read-write
    budgets: { max_tokens: 1000, timeout_ms: 1000, max_tool_calls: 3 }
`),
      /^agents\.yaml:8: agents\.explore\.subagents\.0: read-only agent type "explore" may not start read-write agent type "edit"/,
    ],
  ])("refuses %s, naming the file, key path and line", (_, text, message) => {
    expect(() => parseAgentTypes(text, "agents.yaml")).toThrow(message);
  });

  it("answers an unknown agent type with INVALID_ARGUMENT naming the known ones", async () => {
    const path = join(dir, "agents.yaml");
    await writeFile(path, minimal());
    const catalog = await loadAgentTypeCatalog(path, { logger });
    expect(() => catalog.require("wizard")).toThrow(expect.objectContaining({ code: Status.INVALID_ARGUMENT, details: 'agent_type: unknown agent type "wizard" (known: explore)' }));
    expect(() => catalog.require("")).toThrow(expect.objectContaining({ code: Status.INVALID_ARGUMENT, details: "agent_type: is required (known: explore)" }));
  });

  it("refuses a hook plugin that is not registered, naming its line, at start and at reload", async () => {
    const hooks = createHookRegistry().register("audit", () => undefined);
    const withHook = (plugin: string) => minimal(`    hooks:\n      post_tool_use:\n        - plugin: ${plugin}\n`);
    expect(parseAgentTypes(withHook("audit"), "agents.yaml", new Map(), hooks).get("explore")?.hooks.post_tool_use).toHaveLength(1);
    expect(() => parseAgentTypes(withHook("audti"), "agents.yaml", new Map(), hooks)).toThrow(
      /^agents\.yaml:10: agents\.explore\.hooks\.post_tool_use\.0\.plugin: hook plugin "audti" is not registered/,
    );
    const path = join(dir, "agents.yaml");
    await writeFile(path, withHook("audit"));
    const catalog = await loadAgentTypeCatalog(path, { logger, hookPlugins: hooks });
    await writeFile(path, withHook("audti"));
    await expect(catalog.reload()).resolves.toMatchObject({ ok: false, error: expect.stringContaining('hook plugin "audti" is not registered') });
    expect(() => catalog.register({ name: "coded", description: "x", maxIterations: 1, toolAgentType: "explore", hooks: { pre_tool_use: [{ kind: "plugin", plugin: "nope", timeoutMs: undefined }], post_tool_use: [], on_iteration: [], on_finish: [] } })).toThrow(
      'agent type "coded": hooks.pre_tool_use: hook plugin "nope" is not registered',
    );
  });

  it("reloads a valid file, and keeps the previous types when the new file is invalid", async () => {
    const path = join(dir, "agents.yaml");
    await writeFile(path, minimal());
    const catalog = await loadAgentTypeCatalog(path, { logger });
    const firstVersion = catalog.version;

    await writeFile(path, minimal().replace("max_iterations: 5", "max_iterations: 7"));
    await expect(catalog.reload()).resolves.toEqual({ ok: true });
    expect(catalog.get("explore")?.maxIterations).toBe(7);
    expect(catalog.version).toBeGreaterThan(firstVersion);

    const before = catalog.version;
    await writeFile(path, minimal().replace("max_iterations: 5", "max_iterations: lots"));
    const result = await catalog.reload();
    expect(result).toMatchObject({ ok: false, error: expect.stringMatching(/agents\.yaml:4: agents\.explore\.max_iterations/) });
    expect(catalog.get("explore")?.maxIterations).toBe(7);
    expect(catalog.version).toBe(before);
  });

  it("registers agent types in code that borrow a file type's tool permissions and survive reloads", async () => {
    const path = join(dir, "agents.yaml");
    await writeFile(path, minimal());
    const catalog = await loadAgentTypeCatalog(path, { logger });
    catalog.register({ name: "reviewer", description: "Reviews.", maxIterations: 3, toolAgentType: "explore", tools: ["read_file"] });
    expect(catalog.get("reviewer")).toMatchObject({ source: "code", toolAgentType: "explore", budgets: { maxToolCalls: 50 } });
    await writeFile(path, minimal("    subagents: [reviewer]\n"));
    await expect(catalog.reload()).resolves.toEqual({ ok: true });
    expect(catalog.list().map((type) => type.name)).toEqual(["explore", "reviewer"]);
    expect(() => catalog.register({ name: "explore", description: "x", maxIterations: 1, toolAgentType: "explore" })).toThrow("already defined");
    expect(() => catalog.register({ name: "other", description: "x", maxIterations: 1, toolAgentType: "nobody" })).toThrow('toolAgentType "nobody"');
    catalog.register({ name: "writer", description: "Writes.", maxIterations: 3, toolAgentType: "explore", workspaceAccess: "read-write" });
    expect(() => catalog.register({ name: "sneaky", description: "x", maxIterations: 1, toolAgentType: "explore", subagents: ["writer"] })).toThrow(
      'read-only agent type may not start read-write agent type "writer"',
    );
  });

  it("is the same file the tool-runner reads: it keeps tools and workspace_access for every type", async () => {
    const text = await readFile(join(rootDir, "configs/agents.yaml"), "utf8");
    for (const type of parseAgentTypes(text, "configs/agents.yaml").values()) {
      expect(type.tools === "*" || Array.isArray(type.tools)).toBe(true);
      expect(["read-only", "read-write"]).toContain(type.workspaceAccess);
    }
  });
});
