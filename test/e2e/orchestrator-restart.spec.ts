import { existsSync } from "node:fs";
import { chown, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnService, type MeshProcess } from "@vlinders/mesh-launcher";
import { AgentServiceDefinition, AgentStatus, type AgentEvent } from "@vlinders/proto";
import { createChannel, createClient, Metadata, Status } from "nice-grpc";

const rootDir = join(__dirname, "../..");
const secret = "orchestrator-restart-secret-0123456789";
/** An AgentService client of one orchestrator process. */
function connectTo(orchestrator: MeshProcess) {
  const channel = createChannel(`127.0.0.1:${String(orchestrator.listening.grpc_port)}`);
  return { channel, agents: createClient(AgentServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } }) };
}

/** A run that is still in its sandboxed command a minute later. */
const longRun = {
  agentType: "explore",
  instruction: 'call run_command {"command":"sleep 60"} then answer',
  workspaceId: "project",
  model: "",
  history: [],
  tools: [],
  sampling: undefined,
  userId: "e2e",
  sessionId: "",
  overrides: undefined,
};

/**
 * The orchestrator killed with SIGKILL in the middle of a run: the caller's stream ends with
 * UNAVAILABLE, and once the orchestrator is back (same replica id) the run reads `interrupted`.
 */
describe("the orchestrator killed mid-run", () => {
  const replicaId = `restart-e2e-${process.pid}`;
  let workspaceRoot: string;
  let stateDir: string;
  const started: MeshProcess[] = [];
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    INTERNAL_SECRET: secret,
    VLINDERS_ENV: "test",
    LOG_LEVEL: "info",
    GRPC_HOST: "127.0.0.1",
    GRPC_PORT: "0",
    METRICS_PORT: "0",
    // Both lives of the orchestrator must see the same records: the machine's PostgreSQL.
    DATABASE_URL: process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test",
  };
  const start = async (name: string, script: string, extra: NodeJS.ProcessEnv) => {
    const process_ = await spawnService({ name, script: join(rootDir, script), cwd: rootDir, env: { ...env, ...extra }, readyTimeoutMs: 120_000 });
    started.push(process_);
    return process_;
  };
  let orchestratorEnv: NodeJS.ProcessEnv;

  beforeAll(async () => {
    if (!existsSync(join(rootDir, "services/orchestrator/dist/main.js"))) {
      throw new Error("the services are not built: run `npm test` (it builds first) or `pnpm exec tsc -b`");
    }
    workspaceRoot = await mkdtemp(join(tmpdir(), "orchestrator-restart-workspaces-"));
    stateDir = await mkdtemp(join(tmpdir(), "orchestrator-restart-sandbox-"));
    await mkdir(join(workspaceRoot, "project"));
    await chown(join(workspaceRoot, "project"), 1000, 1000);
    const simulator = await start("vllm-simulator", "libs/vllm-simulator/dist/main.js", { SIM_PORT: "0", SIM_TTFT_MS: "5", SIM_ITL_MS: "2" });
    const broker = await start("inference-broker", "services/inference-broker/dist/main.js", { VLLM_URLS: String(simulator.listening.url) });
    const toolRunner = await start("tool-runner", "services/tool-runner/dist/main.js", {
      WORKSPACE_ROOT: workspaceRoot,
      SANDBOX_BACKEND: "docker",
      SANDBOX_POOL_SIZE: "1",
      SANDBOX_STATE_DIR: stateDir,
      SANDBOX_RUNNER_ID: `orchestrator-restart-${process.pid}`,
    });
    orchestratorEnv = {
      INFERENCE_BROKER_ADDRESS: `127.0.0.1:${String(broker.listening.grpc_port)}`,
      TOOL_RUNNER_ADDRESS: `127.0.0.1:${String(toolRunner.listening.grpc_port)}`,
      ORCHESTRATOR_REPLICA_ID: replicaId,
    };
  }, 180_000);

  afterAll(async () => {
    for (const process_ of started.reverse()) await process_.stop();
    await rm(workspaceRoot, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  }, 60_000);

  it("ends the caller's stream with UNAVAILABLE and records the run as interrupted once it is back", async () => {
    const first = await start("orchestrator", "services/orchestrator/dist/main.js", orchestratorEnv);
    const { channel: channel, agents: agents } = connectTo(first);
    const events: AgentEvent[] = [];
    let streamError: { code: Status } | undefined;
    let killed = false;
    try {
      for await (const event of agents.streamAgent(longRun)) {
        events.push(event);
        // The run is recorded and its command is running in the sandbox: now the orchestrator dies.
        if (event.event?.$case === "toolCallRequested" && !killed) {
          killed = true;
          first.child.kill("SIGKILL");
        }
      }
    } catch (error: unknown) {
      streamError = error as { code: Status };
    }
    channel.close();
    expect(killed).toBe(true);
    expect(streamError?.code).toBe(Status.UNAVAILABLE);
    const runId = events[0]?.runId ?? "";
    expect(runId).not.toBe("");

    const second = await start("orchestrator", "services/orchestrator/dist/main.js", orchestratorEnv);
    const { channel: secondChannel, agents: secondAgents } = connectTo(second);
    const run = await secondAgents.getAgent({ runId });
    expect(run).toMatchObject({ runId, agentType: "explore", status: AgentStatus.AGENT_STATUS_INTERRUPTED });
    expect(run.stopReason).toMatch(/^interrupted/);
    secondChannel.close();
    await second.stop();
  }, 180_000);

  it("records a run cut off by a graceful stop (SIGTERM past the grace period) as interrupted, not cancelled", async () => {
    const first = await start("orchestrator", "services/orchestrator/dist/main.js", { ...orchestratorEnv, SHUTDOWN_GRACE_MS: "300" });
    const { channel: channel, agents: agents } = connectTo(first);
    const events: AgentEvent[] = [];
    let stopping: Promise<void> | undefined;
    try {
      for await (const event of agents.streamAgent(longRun)) {
        events.push(event);
        if (event.event?.$case === "toolCallRequested" && stopping === undefined) stopping = first.stop();
      }
    } catch {
      // The stream ends with UNAVAILABLE ("shutting down") once the grace period is over.
    }
    channel.close();
    expect(stopping).toBeDefined();
    await stopping;
    const runId = events[0]?.runId ?? "";
    expect(runId).not.toBe("");

    const second = await start("orchestrator", "services/orchestrator/dist/main.js", orchestratorEnv);
    const { channel: secondChannel, agents: secondAgents } = connectTo(second);
    const run = await secondAgents.getAgent({ runId });
    expect(run).toMatchObject({ runId, status: AgentStatus.AGENT_STATUS_INTERRUPTED });
    expect(run.stopReason).toMatch(/^interrupted/);
    secondChannel.close();
    await second.stop();
  }, 180_000);
});
