import { chmod, mkdir, mkdtemp, readdir, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "@vlinders/service-runtime";
import { Registry } from "prom-client";
import { toolRunnerConfigSchema } from "../config";
import { createCommandSandbox, createNoneSandbox } from "../sandbox/create-command-sandbox";
import type { CommandSandbox } from "../sandbox/sandbox";
import type { Workspace } from "../workspace/workspace";
import { createWorkspaces } from "../workspace/workspaces";
import { createRunCommandTool } from "./run-command";
import { createRunTestTool, detectTestCommand } from "./run-test";
import type { ToolContext } from "./tool";

// A real sandbox: bubblewrap, which isolates like production does and mounts read-only workspaces read-only.
const outputKillBytes = 200_000;
let sandbox: CommandSandbox;
let base: string;
let workspace: Workspace;

beforeAll(async () => {
  const config = toolRunnerConfigSchema.parse({ SANDBOX_BACKEND: "bubblewrap", COMMAND_OUTPUT_KILL_BYTES: String(outputKillBytes), SANDBOX_MEMORY_MB: "256" });
  sandbox = await createCommandSandbox({ config, logger: createLogger({ service: "test", level: "silent" }), metrics: new Registry() });
});

afterAll(async () => {
  await sandbox.close();
});

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "run-command-")));
  // The sandbox's user (the workspace's owner, 1000 when root runs the tests) must reach the workspace.
  await chmod(base, 0o755);
  workspace = await createWorkspaces({ rootPath: base, owner: process.getuid?.() === 0 ? { uid: 1000, gid: 1000 } : null }).open("ws", { create: true });
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

function context(overrides: Partial<ToolContext> = {}): ToolContext {
  return {
    workspace,
    agentType: "edit",
    mayWrite: true,
    timeoutMs: 10_000,
    outputLimitBytes: 64 * 1024,
    sandbox,
    signal: new AbortController().signal,
    ...overrides,
  };
}

describe("run_command", () => {
  const tool = createRunCommandTool({ memoryLimitMb: 256, outputKillBytes });

  it("runs in the workspace and succeeds with exit code 0 and the output", async () => {
    await writeFile(join(workspace.rootPath, "hello.txt"), "hello from the workspace\n");
    const outcome = await tool.execute({ command: "cat hello.txt && echo to-stderr >&2" }, context());
    expect(outcome).toMatchObject({ success: true, exitCode: 0, truncated: false, result: { exit_code: 0 } });
    expect(outcome.output).toContain("hello from the workspace\n");
    expect(outcome.output).toContain("to-stderr\n");
  });

  it("fails with the exit code and keeps the output of a failing command", async () => {
    const outcome = await tool.execute({ command: "echo broken; exit 3" }, context());
    expect(outcome).toMatchObject({ success: false, exitCode: 3, error: "exited with code 3", output: "broken\n" });
  });

  it("kills a command that passes its timeout_ms and says so", async () => {
    const started = Date.now();
    const outcome = await tool.execute({ command: "sleep 20", timeout_ms: 300 }, context());
    expect(outcome).toMatchObject({ success: false, error: "killed: timed out after 300 ms", result: { exit_code: null, killed_because: "timeout" } });
    expect(outcome.exitCode).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("caps a command's timeout_ms at the call's timeout", async () => {
    const outcome = await tool.execute({ command: "sleep 20", timeout_ms: 60_000 }, context({ timeoutMs: 300 }));
    expect(outcome.error).toBe("killed: timed out after 300 ms");
  });

  it("kills a command whose output passes the kill limit and says so", async () => {
    const outcome = await tool.execute({ command: "yes" }, context());
    expect(outcome).toMatchObject({ success: false, error: `killed: output passed ${outputKillBytes} bytes`, truncated: true });
  });

  it("keeps the head and the tail of long output within the output limit", async () => {
    const outcome = await tool.execute({ command: "echo first; seq 1 20000; echo last" }, context({ outputLimitBytes: 2000 }));
    expect(outcome.success).toBe(true);
    expect(outcome.truncated).toBe(true);
    // The limit counts the output kept; the sandbox's marker of the cut comes on top.
    expect(Buffer.byteLength(outcome.output)).toBeLessThanOrEqual(2000 + 64);
    expect(outcome.output).toMatch(/\n… \[\d+ bytes cut\] …\n/);
    expect(outcome.output.startsWith("first\n")).toBe(true);
    expect(outcome.output.endsWith("last\n")).toBe(true);
  });

  it("reports a command cancelled by the caller as cancelled", async () => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Error("client cancelled")), 300);
    try {
      const outcome = await tool.execute({ command: "sleep 20" }, context({ signal: controller.signal }));
      expect(outcome).toMatchObject({ success: false, error: "cancelled" });
    } finally {
      clearTimeout(timer);
    }
  });

  it("gives an agent that may not write a read-only workspace", async () => {
    const outcome = await tool.execute({ command: "echo x > created.txt" }, context({ mayWrite: false, agentType: "explore" }));
    expect(outcome.success).toBe(false);
    expect(outcome.output).toMatch(/Read-only file system/);
    expect(await readdir(workspace.rootPath)).toEqual([]);
  });

  it("fails with the sandbox's message when commands cannot run here", async () => {
    const none = createNoneSandbox("commands cannot run: SANDBOX_BACKEND=none");
    expect(await tool.execute({ command: "true" }, context({ sandbox: none }))).toEqual({
      success: false,
      output: "",
      error: "commands cannot run: SANDBOX_BACKEND=none",
      truncated: false,
    });
  });
});

describe("run_test", () => {
  it("runs the configured RUN_TEST_COMMAND and reports it in result", async () => {
    const tool = createRunTestTool({ command: "echo 2 passed, 1 failed; exit 1" });
    const outcome = await tool.execute({}, context());
    expect(outcome).toMatchObject({
      success: false,
      exitCode: 1,
      output: "2 passed, 1 failed\n",
      result: { command: "echo 2 passed, 1 failed; exit 1", detected_from: "RUN_TEST_COMMAND", exit_code: 1 },
    });
  });

  it("runs the command detected from the workspace", async () => {
    await writeFile(join(workspace.rootPath, "Makefile"), "test:\n\t@echo all tests passed\n");
    const outcome = await createRunTestTool().execute({}, context());
    expect(outcome).toMatchObject({ success: true, exitCode: 0, output: "all tests passed\n", result: { command: "make test", detected_from: "Makefile" } });
  });

  it("fails saying what it looked for and how to configure a command when nothing is found", async () => {
    const outcome = await createRunTestTool().execute({}, context());
    expect(outcome.success).toBe(false);
    expect(outcome.error).toMatch(/^no test command found: looked for package\.json with a test script, pyproject\.toml, .*Cargo\.toml, go\.mod, a Makefile with a test target at the workspace root; set RUN_TEST_COMMAND to configure one$/);
  });
});

describe("detectTestCommand", () => {
  const detect = () => detectTestCommand(workspace.rootPath, new AbortController().signal);

  it.each<[string, Record<string, string>, string | undefined, string | undefined]>([
    ["a package.json with a test script", { "package.json": '{"scripts":{"test":"jest"}}' }, "npm test --silent", "package.json"],
    ["npm's placeholder test script", { "package.json": '{"scripts":{"test":"echo \\"Error: no test specified\\" && exit 1"}}' }, undefined, undefined],
    ["a package.json without scripts", { "package.json": '{"name":"x"}' }, undefined, undefined],
    ["pyproject.toml", { "pyproject.toml": "[project]\n" }, "python3 -m pytest -q", "pyproject.toml"],
    ["pytest.ini", { "pytest.ini": "" }, "python3 -m pytest -q", "pytest.ini"],
    ["setup.py", { "setup.py": "" }, "python3 -m pytest -q", "setup.py"],
    ["a tests/ directory with Python", { "tests/test_app.py": "" }, "python3 -m pytest -q", "tests/"],
    ["a tests/ directory without Python", { "tests/README": "" }, undefined, undefined],
    ["Cargo.toml", { "Cargo.toml": "" }, "cargo test", "Cargo.toml"],
    ["go.mod", { "go.mod": "module x\n" }, "go test ./...", "go.mod"],
    ["a Makefile with a test target", { Makefile: "build:\n\ttrue\ntest: build\n\ttrue\n" }, "make test", "Makefile"],
    ["a Makefile without one", { Makefile: "build:\n\ttrue\n" }, undefined, undefined],
    ["package.json before the others", { "package.json": '{"scripts":{"test":"vitest"}}', "go.mod": "" }, "npm test --silent", "package.json"],
  ])("%s", async (_, tree, command, detectedFrom) => {
    for (const [path, content] of Object.entries(tree)) {
      await rm(join(workspace.rootPath, path), { force: true });
      if (path.includes("/")) await mkdir(join(workspace.rootPath, path, ".."), { recursive: true });
      await writeFile(join(workspace.rootPath, path), content);
    }
    expect(await detect()).toEqual(command === undefined ? undefined : { command, detectedFrom });
  });
});
