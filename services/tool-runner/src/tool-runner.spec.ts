import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { ToolServiceDefinition, type ExecuteToolRequest, type ToolResult } from "@vlinders/proto";
import { createInProcessRuntime, loadConfig, type ServiceHost } from "@vlinders/service-runtime";
import { createChannel, createClient, Metadata, Status, type Channel, type Client } from "nice-grpc";
import { toolRunnerConfigSchema } from "./config";
import { createToolRunner } from "./tool-runner";

const execFileAsync = promisify(execFile);
const internalSecret = "tool-runner-spec-secret-0123456789";
const rootDir = join(__dirname, "../../..");

/**
 * The ToolService as a caller sees it: a real tool-runner on port 0 with a real Docker sandbox,
 * real ripgrep and the in-process cache, driven by a real gRPC client.
 */
describe("tool-runner", () => {
  let workspaceRoot: string;
  let stateDir: string;
  let host: ServiceHost;
  let channel: Channel;
  let tools: Client<typeof ToolServiceDefinition>;

  const call = (toolName: string, args: Record<string, unknown>, extra: Partial<ExecuteToolRequest> = {}): ExecuteToolRequest => ({
    toolName,
    argumentsJson: JSON.stringify(args),
    workspaceId: "project",
    agentType: "edit",
    timeoutMs: 0,
    callId: `call-${toolName}`,
    ...extra,
  });
  const execute = (toolName: string, args: Record<string, unknown>, extra: Partial<ExecuteToolRequest> = {}) =>
    tools.executeTool(call(toolName, args, extra));
  const rejection = async (promise: Promise<unknown>) => {
    const error = await promise.then(
      () => undefined,
      (caught: unknown) => caught as { code: Status; details: string },
    );
    if (!error) throw new Error("expected the call to fail");
    return { code: error.code, details: error.details };
  };

  beforeAll(async () => {
    workspaceRoot = await mkdtemp(join(tmpdir(), "tool-runner-workspaces-"));
    stateDir = await mkdtemp(join(tmpdir(), "tool-runner-state-"));
    await mkdir(join(workspaceRoot, "project/src"), { recursive: true });
    await writeFile(join(workspaceRoot, "project/src/greeting.ts"), 'export const greeting = "hello";\nexport const farewell = "bye";\n');
    await writeFile(join(workspaceRoot, "project/.gitignore"), "build/\n");
    await mkdir(join(workspaceRoot, "project/build"));
    await writeFile(join(workspaceRoot, "project/build/out.js"), 'const greeting = "hello";\n');
    await symlink("/etc", join(workspaceRoot, "project/etc-link"));
    // As a provisioned workspace would be: owned by the unprivileged user that runs commands (this suite runs as root).
    await execFileAsync("chown", ["-R", "-h", "1000:1000", join(workspaceRoot, "project")]);
    const config = loadConfig(toolRunnerConfigSchema, {
      GRPC_PORT: "0",
      WORKSPACE_ROOT: workspaceRoot,
      TOOLS_CONFIG: join(rootDir, "configs/tools.yaml"),
      AGENTS_CONFIG: join(rootDir, "configs/agents.yaml"),
      SANDBOX_BACKEND: "docker",
      SANDBOX_POOL_SIZE: "2",
      SANDBOX_STATE_DIR: stateDir,
      SANDBOX_RUNNER_ID: `tool-runner-spec-${process.pid}`,
      SANDBOX_MEMORY_MB: "256",
      SANDBOX_PIDS_LIMIT: "64",
      COMMAND_OUTPUT_KILL_BYTES: String(4 * 1024 * 1024),
      TOOL_OUTPUT_LIMIT_BYTES: "4096",
    });
    host = await createToolRunner(config, createInProcessRuntime("tool-runner", { internalSecret }));
    const { grpcPort } = await host.listen({ host: "127.0.0.1", grpcPort: 0 });
    channel = createChannel(`127.0.0.1:${grpcPort}`);
    tools = createClient(ToolServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": internalSecret }) } });
  }, 120_000);

  afterAll(async () => {
    channel?.close();
    await host?.shutdown();
    await rm(workspaceRoot, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  }, 60_000);

  describe("listing tools", () => {
    it("lists the built-in tools with their JSON schemas", async () => {
      const { tools: listed } = await tools.listTools({ agentType: "" });
      expect(listed.map((tool) => tool.name).sort()).toEqual(
        ["edit_file", "list_files", "read_file", "run_command", "run_test", "search_code", "web_search", "write_file"].sort(),
      );
      const readFileSpec = listed.find((tool) => tool.name === "read_file");
      expect(readFileSpec?.readOnly).toBe(true);
      expect(JSON.parse(readFileSpec?.parametersJsonSchema ?? "{}")).toMatchObject({ type: "object", required: ["path"] });
    });

    it("lists only what an agent type may use", async () => {
      const { tools: listed } = await tools.listTools({ agentType: "plan" });
      const names = listed.map((tool) => tool.name);
      expect(names).toContain("read_file");
      expect(names).not.toContain("write_file");
      expect(names).not.toContain("edit_file");
    });
  });

  describe("reading, searching and editing a workspace", () => {
    it("reads a file with line numbers", async () => {
      const result = await execute("read_file", { path: "src/greeting.ts" });
      expect(result).toMatchObject({ success: true, callId: "call-read_file", toolName: "read_file" });
      expect(result.output).toContain('1\texport const greeting = "hello";');
    });

    it("searches code and leaves out what .gitignore ignores", async () => {
      const result = await execute("search_code", { query: "greeting" });
      expect(result.success).toBe(true);
      expect(result.output).toContain("src/greeting.ts");
      expect(result.output).not.toContain("build/out.js");
    });

    it("edits a file exactly once, and a later read sees the edit (the cache is invalidated)", async () => {
      const before = await execute("read_file", { path: "src/greeting.ts" });
      expect(before.output).toContain('"hello"');
      const edit = await execute("edit_file", { path: "src/greeting.ts", old_string: '"hello"', new_string: '"hello, mesh"' });
      expect(edit.success).toBe(true);
      expect(await readFile(join(workspaceRoot, "project/src/greeting.ts"), "utf8")).toContain('"hello, mesh"');
      const after = await execute("read_file", { path: "src/greeting.ts" });
      expect(after.output).toContain('"hello, mesh"');
    });

    it("reports an ambiguous edit as a failed result that says how to fix it", async () => {
      const result = await execute("edit_file", { path: "src/greeting.ts", old_string: "export const", new_string: "const" });
      expect(result.success).toBe(false);
      expect(result.error).toMatch(/2/);
      expect(result.error).toMatch(/replace_all/);
    });
  });

  describe("bad input", () => {
    it("answers NOT_FOUND for an unknown tool, naming the known ones", async () => {
      const error = await rejection(execute("rm_rf", {}));
      expect(error.code).toBe(Status.NOT_FOUND);
      expect(error.details).toMatch(/^tool_name: unknown tool "rm_rf" \(known: .*read_file/);
    });

    it("answers INVALID_ARGUMENT for malformed JSON and for arguments that break the schema", async () => {
      const malformed = await rejection(tools.executeTool({ ...call("read_file", {}), argumentsJson: "{path:" }));
      expect(malformed.code).toBe(Status.INVALID_ARGUMENT);
      expect(malformed.details).toMatch(/^arguments_json: /);
      const wrongType = await rejection(execute("read_file", { path: 42 }));
      expect(wrongType.code).toBe(Status.INVALID_ARGUMENT);
      expect(wrongType.details).toMatch(/path/);
      const missing = await rejection(execute("edit_file", { path: "src/greeting.ts", new_string: "x" }));
      expect(missing.details).toMatch(/old_string/);
    });

    it("refuses paths that lead out of the workspace", async () => {
      for (const path of ["../../etc/passwd", "/etc/passwd", "src/../../outside.txt", "etc-link/passwd"]) {
        const error = await rejection(execute("read_file", { path }));
        expect(error.code).toBe(Status.INVALID_ARGUMENT);
        expect(error.details).toMatch(/^path: /);
      }
      const write = await rejection(execute("write_file", { path: "etc-link/evil", content: "x" }));
      expect(write.code).toBe(Status.INVALID_ARGUMENT);
    });

    it("refuses a tool the agent type may not use, and an unknown agent type", async () => {
      const denied = await rejection(execute("write_file", { path: "notes.txt", content: "x" }, { agentType: "plan" }));
      expect(denied.code).toBe(Status.PERMISSION_DENIED);
      expect(denied.details).toMatch(/write_file/);
      const unknown = await rejection(execute("read_file", { path: "src/greeting.ts" }, { agentType: "wizard" }));
      expect(unknown.code).toBe(Status.INVALID_ARGUMENT);
      expect(unknown.details).toMatch(/^agent_type: /);
    });

    it("answers NOT_FOUND for a workspace that does not exist, and INVALID_ARGUMENT for an unsafe workspace id", async () => {
      expect((await rejection(execute("read_file", { path: "a" }, { workspaceId: "nowhere" }))).code).toBe(Status.NOT_FOUND);
      const unsafe = await rejection(execute("read_file", { path: "a" }, { workspaceId: "../project" }));
      expect(unsafe.code).toBe(Status.INVALID_ARGUMENT);
      expect(unsafe.details).toMatch(/^workspace_id: /);
    });
  });

  describe("tools that need no workspace", () => {
    it("runs web_search without a workspace_id and for one that does not exist, and still refuses an unsafe one", async () => {
      for (const workspaceId of ["", "nowhere"]) {
        const result = await execute("web_search", { query: "x" }, { workspaceId, agentType: "plan" });
        // Not configured in this suite: the tool ran and said so, where it used to be refused for the workspace.
        expect(result).toMatchObject({ success: false, error: "web_search is not configured: set WEB_SEARCH_URL" });
      }
      await expect(stat(join(workspaceRoot, "nowhere"))).rejects.toThrow("ENOENT");
      expect((await rejection(execute("web_search", { query: "x" }, { workspaceId: "../project", agentType: "plan" }))).code).toBe(Status.INVALID_ARGUMENT);
    });
  });

  describe("commands in the sandbox", () => {
    it("runs a command in the workspace and reports its output and exit code", async () => {
      const result = await execute("run_command", { command: "cat src/greeting.ts; echo oops >&2; exit 3" });
      expect(result.exitCode).toBe(3);
      expect(result.success).toBe(false);
      expect(result.output).toContain("export const greeting");
      expect(result.output).toContain("oops");
    });

    it("has no network and a read-only root filesystem, but a writable workspace", async () => {
      const network = await execute("run_command", {
        command: "python3 -c \"import socket; socket.create_connection(('10.0.0.1', 80), timeout=2)\"",
      });
      expect(network.success).toBe(false);
      expect(network.output).toMatch(/Network is unreachable|unreachable|timed out/i);
      const interfaces = await execute("run_command", { command: "ls /sys/class/net" });
      expect(interfaces.output.trim()).toBe("lo");
      const rootWrite = await execute("run_command", { command: "touch /usr/evil" });
      expect(rootWrite.success).toBe(false);
      expect(rootWrite.output).toMatch(/Read-only file system/);
      const workspaceWrite = await execute("run_command", { command: "echo made-in-sandbox > made.txt && cat made.txt" });
      expect(workspaceWrite).toMatchObject({ success: true, exitCode: 0 });
      expect(await readFile(join(workspaceRoot, "project/made.txt"), "utf8")).toBe("made-in-sandbox\n");
    });

    it("stops a command that never ends at its timeout", async () => {
      const result = await execute("run_command", { command: "sleep 600" }, { timeoutMs: 500 });
      expect(result.success).toBe(false);
      expect(result.error).toMatch(/timed out after 500 ms/);
      expect(result.exitCode).toBeUndefined();
    });

    it("survives a fork bomb and runs the next command", async () => {
      // The shell forks once, before the bomb exists, then `exec` needs no new process: the shell waits out its
      // timeout even when the bomb has taken every pid (forking the bomb's pipeline itself could fail with "Cannot fork").
      const bomb = await execute(
        "run_command",
        { command: "( bomb() { bomb | bomb & }; bomb ) & exec sleep 600" },
        { timeoutMs: 3000 },
      );
      expect(bomb.success).toBe(false);
      expect(bomb.error).toMatch(/timed out after 3000 ms/);
      const next = await execute("run_command", { command: "echo still-here" });
      expect(next).toMatchObject({ success: true, output: "still-here\n" });
    });

    it("cuts gigabytes of output to its head and tail and stops the command", async () => {
      const result = await execute("run_command", { command: "yes 'all work and no play'" }, { timeoutMs: 20_000 });
      expect(result.truncated).toBe(true);
      expect(result.success).toBe(false);
      expect(Buffer.byteLength(result.output)).toBeLessThan(8 * 1024);
      expect(result.output).toMatch(/^all work and no play\n/);
      expect(result.output).toMatch(/cut/);
    });

    it("mounts the workspace read-only for an agent type that may not write", async () => {
      const result = await execute("run_command", { command: "touch by-explorer.txt" }, { agentType: "explore" });
      expect(result.success).toBe(false);
      expect(result.output).toMatch(/Read-only file system/);
    });
  });

  describe("batches", () => {
    it("runs calls in parallel and answers in request order; one failure does not fail the others", async () => {
      const { results } = await tools.executeBatch({
        calls: [
          call("run_command", { command: "sleep 0.3; echo first" }, { callId: "a" }),
          call("read_file", { path: "no/such/file.txt" }, { callId: "b" }),
          call("unknown_tool", {}, { callId: "c" }),
          call("read_file", { path: "src/greeting.ts" }, { callId: "d" }),
        ],
      });
      expect(results.map((result: ToolResult) => [result.callId, result.success])).toEqual([
        ["a", true],
        ["b", false],
        ["c", false],
        ["d", true],
      ]);
      expect(results[0]?.output).toBe("first\n");
      expect(results[2]?.error).toMatch(/^NOT_FOUND: calls\[2\]\.tool_name: unknown tool/);
    });
  });
});
