import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startMesh, type Mesh } from "@vlinders/mesh-launcher";
import { AgentServiceDefinition, AgentStatus, InferenceServiceDefinition, ToolServiceDefinition, type AgentEvent, type RunAgentRequest } from "@vlinders/proto";
import { createChannel, createClient, Metadata, Status, type Channel } from "nice-grpc";
import { HealthDefinition } from "nice-grpc-server-health";
import { readChat, userSays } from "../support/chat";
import { fileDescriptorsContaining, listServices } from "../support/reflection-client";

const rootDir = join(__dirname, "../..");
const secret = "e2e-secret-0123456789abcdef";

/**
 * The mesh as a user runs it: simulator, inference-broker, tool-runner, orchestrator and gateway as
 * separate processes from the build (npm test builds first), and clients that only know the gateway.
 */
describe("the mesh as separate processes", () => {
  let mesh: Mesh;
  let channel: Channel;
  let workspaceRoot: string;
  let sandboxStateDir: string;
  const output: string[] = [];

  beforeAll(async () => {
    if (!existsSync(join(rootDir, "services/gateway/dist/main.js"))) {
      throw new Error("the services are not built: run `npm test` (it builds first) or `pnpm exec tsc -b`");
    }
    workspaceRoot = await mkdtemp(join(tmpdir(), "mesh-e2e-workspaces-"));
    sandboxStateDir = await mkdtemp(join(tmpdir(), "mesh-e2e-sandbox-"));
    await mkdir(join(workspaceRoot, "butterfly/src"), { recursive: true });
    await writeFile(join(workspaceRoot, "butterfly/src/wings.py"), "def flap(times):\n    return 'flap' * times\n");
    await writeFile(join(workspaceRoot, "butterfly/NOTES.md"), "Monarchs migrate 4000 km every autumn.\n");
    await writeFile(join(workspaceRoot, "butterfly/HABITAT.md"), "Milkweed is where the caterpillars feed.\n");
    mesh = await startMesh({
      rootDir,
      grpcPorts: { gateway: 0, orchestrator: 0, inferenceBroker: 0, toolRunner: 0, context: 0 },
      metricsPorts: { gateway: 0, orchestrator: 0, inferenceBroker: 0, toolRunner: 0, context: 0 },
      workers: { kind: "simulator", port: 0, timeToFirstTokenMs: 20, interTokenLatencyMs: 5 },
      env: {
        ...process.env,
        INTERNAL_SECRET: secret,
        LOG_LEVEL: "info",
        VLINDERS_ENV: "test",
        WORKSPACE_ROOT: workspaceRoot,
        SANDBOX_BACKEND: "docker",
        SANDBOX_POOL_SIZE: "1",
        SANDBOX_STATE_DIR: sandboxStateDir,
        SANDBOX_RUNNER_ID: `mesh-e2e-${process.pid}`,
        // The machine's PostgreSQL: the embedded PGlite would add seconds to two services' start.
        DATABASE_URL: process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test",
      },
      onLine: (name, line) => output.push(`[${name}] ${line}`),
    });
    channel = createChannel(mesh.gatewayAddress);
  }, 60_000);

  afterAll(async () => {
    channel?.close();
    await mesh?.stop();
    await rm(workspaceRoot, { recursive: true, force: true });
    await rm(sandboxStateDir, { recursive: true, force: true });
  }, 30_000);

  it("streams a Chat back as an echo in several messages", async () => {
    const client = createClient(InferenceServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } });
    const outcome = await readChat(client.chat(userSays("butterflies carry tokens across the mesh")));
    expect(outcome.error).toBeUndefined();
    expect(outcome.text).toBe("butterflies carry tokens across the mesh");
    expect(outcome.contentMessages).toBe(6);
  });

  it("lets a generic client discover the services by reflection and see Chat as server-streaming", async () => {
    expect(await listServices(mesh.gatewayAddress, secret)).toEqual([
      "grpc.health.v1.Health",
      "vlinders.v1.AgentService",
      "vlinders.v1.InferenceService",
      "vlinders.v1.ToolService",
    ]);
    const files = await fileDescriptorsContaining(mesh.gatewayAddress, secret, "vlinders.v1.InferenceService");
    const service = files.flatMap((file) => file.service).find((candidate) => candidate.name === "InferenceService");
    const chat = service?.method.find((method) => method.name === "Chat");
    expect(chat).toMatchObject({ inputType: ".vlinders.v1.ChatRequest", outputType: ".vlinders.v1.ChatEvent", serverStreaming: true });
    expect(chat?.clientStreaming).toBeFalsy();
    // The request type is in the same answer (or its dependencies), so a client can build one.
    expect(files.flatMap((file) => file.messageType.map((message) => message.name))).toContain("ChatRequest");
  });

  it("describes the health service too, so a generic client can call it", async () => {
    const files = await fileDescriptorsContaining(mesh.gatewayAddress, secret, "grpc.health.v1.Health");
    const health = files.flatMap((file) => file.service).find((service) => service.name === "Health");
    expect(health?.method.map((method) => method.name)).toEqual(["Check", "Watch"]);
  });

  it("refuses reflection without the secret, but answers health checks", async () => {
    await expect(listServices(mesh.gatewayAddress, "wrong-secret-0123456789")).rejects.toMatchObject({ code: Status.UNAUTHENTICATED });
    await expect(createClient(HealthDefinition, channel).check({ service: "" })).resolves.toEqual({ status: 1 });
  });

  it("answers UNAUTHENTICATED, INVALID_ARGUMENT and NOT_FOUND to the three classic mistakes", async () => {
    const anonymous = createClient(InferenceServiceDefinition, channel);
    expect((await readChat(anonymous.chat(userSays("hi")))).error?.code).toBe(Status.UNAUTHENTICATED);
    const client = createClient(InferenceServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } });
    expect((await readChat(client.chat({ ...userSays("hi"), messages: [] }))).error).toEqual({
      code: Status.INVALID_ARGUMENT,
      details: "messages: must not be empty",
    });
    expect((await readChat(client.chat(userSays("hi", { model: "no-such-model" })))).error?.code).toBe(Status.NOT_FOUND);
  });

  it("reads, searches and edits a workspace, and runs its code in a sandbox, through the gateway", async () => {
    const tools = createClient(ToolServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } });
    const call = (toolName: string, args: Record<string, unknown>, timeoutMs = 0) =>
      tools.executeTool({ toolName, argumentsJson: JSON.stringify(args), workspaceId: "butterfly", agentType: "edit", timeoutMs, callId: toolName });
    expect((await call("read_file", { path: "src/wings.py" })).output).toContain("return 'flap' * times");
    expect((await call("search_code", { query: "def flap" })).output).toContain("src/wings.py");
    expect(await call("edit_file", { path: "src/wings.py", old_string: "'flap' * times", new_string: "'flap ' * times" })).toMatchObject({ success: true });
    const run = await call("run_command", { command: "cd src && python3 -c 'import wings; print(wings.flap(2))'" });
    expect(run).toMatchObject({ success: true, exitCode: 0, output: "flap flap \n" });
    const network = await call("run_command", { command: "cat /sys/class/net/*/operstate >/dev/null; ls /sys/class/net" });
    expect(network.output.trim()).toBe("lo");
    expect((await call("run_command", { command: "touch /etc/owned" })).output).toMatch(/Read-only file system/);
    expect((await call("run_command", { command: "sleep 600" }, 500)).error).toMatch(/timed out after 500 ms/);
    const bomb = await call("run_command", { command: "bomb() { bomb | bomb & }; bomb; exec sleep 600" }, 2000);
    expect(bomb.success).toBe(false);
    expect(await call("run_command", { command: "echo alive" })).toMatchObject({ success: true, output: "alive\n" });
  }, 60_000);

  describe("agent runs through the gateway", () => {
    const agentRequest = (agentType: string, instruction: string): RunAgentRequest => ({
      agentType,
      instruction,
      workspaceId: "butterfly",
      model: "",
      history: [],
      tools: [],
      sampling: undefined,
      userId: "e2e",
      sessionId: "",
      overrides: undefined,
      bypassCache: false,
    });
    const agents = () => createClient(AgentServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } });

    it("runs an explore agent that reads a workspace file with a real tool call and answers from it, and GetAgent reports it", async () => {
      const client = agents();
      const events: AgentEvent[] = [];
      for await (const event of client.streamAgent(agentRequest("explore", 'call read_file {"path":"NOTES.md"} then answer'))) events.push(event);
      const kinds = events.map((event) => event.event?.$case);
      expect(kinds[0]).toBe("runStarted");
      expect(kinds).toContain("toolCallRequested");
      const toolResult = events.find((event) => event.event?.$case === "toolResult");
      expect(toolResult?.event?.$case === "toolResult" && toolResult.event.value).toMatchObject({ toolName: "read_file", success: true });
      const finished = events.at(-1);
      expect(finished?.event?.$case).toBe("runFinished");
      if (finished?.event?.$case !== "runFinished") throw new Error("no run_finished event");
      expect(finished.event.value).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
      expect(finished.event.value.response).toContain("Monarchs migrate 4000 km");

      const run = await client.getAgent({ runId: finished.runId });
      expect(run).toMatchObject({ runId: finished.runId, agentType: "explore", status: AgentStatus.AGENT_STATUS_SUCCEEDED, iterations: 2 });
      expect(run.response).toContain("Monarchs migrate 4000 km");
    });

    it("runs a plan agent that sends two explore sub-agents in parallel and merges what they found", async () => {
      const tasks = [
        { agent_type: "explore", instruction: 'call read_file {"path":"NOTES.md"} then answer' },
        { agent_type: "explore", instruction: 'call read_file {"path":"HABITAT.md"} then answer' },
      ];
      const events: AgentEvent[] = [];
      for await (const event of agents().streamAgent(agentRequest("plan", `call spawn_subagents ${JSON.stringify({ tasks })} then answer`))) events.push(event);
      const started = events.flatMap((event) => (event.event?.$case === "subagentStarted" ? [event.event.value] : []));
      const finished = events.flatMap((event) => (event.event?.$case === "subagentFinished" ? [event.event.value] : []));
      expect(started.map((child) => child.agentType)).toEqual(["explore", "explore"]);
      expect(finished.every((child) => child.status === AgentStatus.AGENT_STATUS_SUCCEEDED)).toBe(true);
      // Both children ran before either finished: they ran side by side, not one after the other.
      const firstFinished = events.findIndex((event) => event.event?.$case === "subagentFinished");
      const lastStarted = events.map((event) => event.event?.$case).lastIndexOf("subagentStarted");
      expect(lastStarted).toBeLessThan(firstFinished);
      // The merged result goes back to the planner in task order, and its answer is built from it.
      const merged = events.flatMap((event) => (event.event?.$case === "toolResult" && event.event.value.toolName === "spawn_subagents" ? [event.event.value] : []));
      expect(merged).toHaveLength(1);
      const children = JSON.parse(merged[0]?.resultJson || merged[0]?.output || "[]") as Array<{ response: string }>;
      expect(children[0]?.response).toContain("Monarchs migrate");
      expect(children[1]?.response).toContain("Milkweed");
      const runFinished = events.at(-1)?.event;
      expect(runFinished).toMatchObject({ $case: "runFinished", value: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed" } });
      expect(runFinished?.$case === "runFinished" && runFinished.value.response).toMatch(/^Based on spawn_subagents: .*Monarchs migrate/);
    });

    it("refuses an unknown agent type, naming the field", async () => {
      await expect(agents().runAgent(agentRequest("wizard", "hi"))).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^agent_type: /) });
    });
  });

  it("serves Prometheus metrics from each service", async () => {
    const gateway = mesh.processes.find((process) => process.name === "gateway");
    const response = await fetch(`http://127.0.0.1:${String(gateway?.listening.metrics_port)}/metrics`, { signal: AbortSignal.timeout(5_000) });
    const body = await response.text();
    expect(response.status).toBe(200);
    expect(body).toMatch(/grpc_server_handled_total\{[^}]*grpc_method="Chat"[^}]*grpc_code="OK"[^}]*\} [1-9]/);
    const simulator = await fetch(`${mesh.simulatorUrl ?? ""}/metrics`, { signal: AbortSignal.timeout(5_000) });
    expect(await simulator.text()).toContain("vllm:num_requests_running");
  });

  it("logs structured JSON lines carrying one trace id across the services of a call", () => {
    const finished = output
      .map((line) => /^\[([\w-]+)\] (\{.*\})$/.exec(line))
      .flatMap((match) => (match?.[1] && match[2] ? [{ service: match[1], record: JSON.parse(match[2]) as Record<string, unknown> }] : []))
      .filter(({ record }) => record.msg === "rpc finished" && typeof record.method === "string" && record.method.endsWith("/Chat"));
    const traceOfFirstGatewayChat = finished.find(({ service }) => service === "gateway")?.record.trace_id;
    expect(typeof traceOfFirstGatewayChat).toBe("string");
    const services = new Set(finished.filter(({ record }) => record.trace_id === traceOfFirstGatewayChat).map(({ service }) => service));
    expect(services).toEqual(new Set(["gateway", "inference-broker"]));
  });

  it("stops every process cleanly on SIGTERM", async () => {
    const exits = mesh.processes.map(
      (process) => new Promise<number | null>((resolve) => process.child.once("exit", (code) => resolve(code))),
    );
    channel.close();
    await mesh.stop();
    expect(await Promise.all(exits)).toEqual([0, 0, 0, 0, 0, 0]);
  });
});
