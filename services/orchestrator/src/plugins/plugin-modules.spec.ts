import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadPluginModules, PluginModuleError } from "./plugin-modules";

const rootDir = join(__dirname, "../../../..");

describe("plugin modules (ORCHESTRATOR_PLUGINS)", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "plugin-modules-"));
    await writeFile(join(dir, "no-register.cjs"), "exports.nothing = 1;\n");
    await writeFile(join(dir, "throws.cjs"), 'exports.register = () => { throw new Error("bad plugin"); };\n');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("loads the example plugin: its hook, its tool and its agent type, paths relative to the working directory", async () => {
    const plugins = await loadPluginModules(" configs/plugins/example-plugin.cjs ,", rootDir);
    expect(plugins.hooks.get("no-dotenv")).toBeInstanceOf(Function);
    expect(plugins.tools.forAgentType("counter").map((tool) => tool.definition.name)).toEqual(["word_count"]);
    await expect(plugins.tools.get("word_count")!.execute({ text: "a b  c" }, { runId: "r", agentType: "counter", workspaceId: "w", signal: AbortSignal.timeout(1_000) })).resolves.toEqual({
      success: true,
      output: "3",
    });
    expect(plugins.agentTypes.map((type) => type.name)).toEqual(["counter"]);
  });

  it("loads nothing from an empty list", async () => {
    const plugins = await loadPluginModules("");
    expect(plugins.agentTypes).toEqual([]);
    expect(plugins.tools.forAgentType("explore")).toEqual([]);
  });

  it.each([
    ["a missing module", "missing.cjs", /cannot load "[^"]*missing\.cjs"/],
    ["a module without register", "no-register.cjs", /exports no register function/],
    ["a module whose register throws", "throws.cjs", /failed to register: bad plugin/],
  ])("refuses %s, naming it", async (_, file, message) => {
    const failure = loadPluginModules(join(dir, file));
    await expect(failure).rejects.toBeInstanceOf(PluginModuleError);
    await expect(failure).rejects.toThrow(message);
  });
});
