import { existsSync } from "node:fs";
import { chown, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Docker from "dockerode";
import { spawnService, type MeshProcess } from "@vlinders/mesh-launcher";
import { ToolServiceDefinition } from "@vlinders/proto";
import { createChannel, createClient, Metadata, Status } from "nice-grpc";

const rootDir = join(__dirname, "../..");
const secret = "restart-e2e-secret-0123456789";

/**
 * The tool-runner killed with SIGKILL in the middle of a command leaves its containers behind;
 * started again with the same runner id, it removes them before it serves.
 */
describe("the tool-runner killed mid-command", () => {
  const docker = new Docker();
  const runnerId = `restart-e2e-${process.pid}`;
  let workspaceRoot: string;
  let stateDir: string;
  const started: MeshProcess[] = [];

  const ownContainers = async () =>
    (await docker.listContainers({ all: true, filters: { label: [`vlinders.runner=${runnerId}`] } })).map((container) => container.Id);

  const startToolRunner = async () => {
    const process_ = await spawnService({
      name: "tool-runner",
      script: join(rootDir, "services/tool-runner/dist/main.js"),
      cwd: rootDir,
      env: {
        ...process.env,
        INTERNAL_SECRET: secret,
        VLINDERS_ENV: "test",
        LOG_LEVEL: "info",
        GRPC_HOST: "127.0.0.1",
        GRPC_PORT: "0",
        WORKSPACE_ROOT: workspaceRoot,
        SANDBOX_BACKEND: "docker",
        SANDBOX_POOL_SIZE: "1",
        SANDBOX_STATE_DIR: stateDir,
        SANDBOX_RUNNER_ID: runnerId,
      },
      readyTimeoutMs: 90_000,
    });
    started.push(process_);
    return process_;
  };

  beforeAll(async () => {
    if (!existsSync(join(rootDir, "services/tool-runner/dist/main.js"))) {
      throw new Error("the services are not built: run `npm test` (it builds first) or `pnpm exec tsc -b`");
    }
    workspaceRoot = await mkdtemp(join(tmpdir(), "restart-e2e-workspaces-"));
    stateDir = await mkdtemp(join(tmpdir(), "restart-e2e-state-"));
    await mkdir(join(workspaceRoot, "project"));
    // As a provisioned workspace would be: owned by the unprivileged user that runs commands (this suite runs as root).
    await chown(join(workspaceRoot, "project"), 1000, 1000);
  });

  afterAll(async () => {
    for (const process_ of started) await process_.stop();
    for (const id of await ownContainers()) await docker.getContainer(id).remove({ force: true });
    await rm(workspaceRoot, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  }, 60_000);

  it("leaves no container of the killed process behind once it is back", async () => {
    const first = await startToolRunner();
    const channel = createChannel(`127.0.0.1:${String(first.listening.grpc_port)}`);
    const tools = createClient(ToolServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } });
    const command = tools
      .executeTool({
        toolName: "run_command",
        argumentsJson: JSON.stringify({ command: "echo started > started.txt; sleep 600" }),
        workspaceId: "project",
        agentType: "edit",
        timeoutMs: 120_000,
        callId: "long",
      })
      .then(
        () => undefined,
        (error: { code: Status }) => error.code,
      );
    // The command is running once it has written its mark in the workspace.
    const deadline = Date.now() + 30_000;
    while (!existsSync(join(workspaceRoot, "project/started.txt")) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(existsSync(join(workspaceRoot, "project/started.txt"))).toBe(true);

    first.child.kill("SIGKILL");
    expect(await command).toBe(Status.UNAVAILABLE);
    channel.close();
    const leftovers = await ownContainers();
    expect(leftovers.length).toBeGreaterThan(0);

    const second = await startToolRunner();
    const remaining = await ownContainers();
    expect(remaining.filter((id) => leftovers.includes(id))).toEqual([]);

    // And it serves commands again.
    const secondChannel = createChannel(`127.0.0.1:${String(second.listening.grpc_port)}`);
    const secondTools = createClient(ToolServiceDefinition, secondChannel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } });
    const result = await secondTools.executeTool({
      toolName: "run_command",
      argumentsJson: JSON.stringify({ command: "cat started.txt" }),
      workspaceId: "project",
      agentType: "edit",
      timeoutMs: 0,
      callId: "after",
    });
    expect(result).toMatchObject({ success: true, output: "started\n" });
    secondChannel.close();
  }, 180_000);
});
