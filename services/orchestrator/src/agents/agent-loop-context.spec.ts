import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { contextConfigSchema, createContextServer } from "@vlinders/context";
import { openTestDatabase, type Database } from "@vlinders/database";
import { brokerConfigSchema, createInferenceBroker } from "@vlinders/inference-broker";
import { AgentEvent, AgentStatus, ContextServiceDefinition, ToolServiceDefinition, type ContextCompacted, type RunAgentRequest, type Usage } from "@vlinders/proto";
import {
  createInProcessRuntime,
  createInternalChannel,
  type InternalChannel,
  createInternalClient,
  createLogger,
  initTracing,
  loadConfig,
  type ServiceHost,
} from "@vlinders/service-runtime";
import { createToolRunner, toolRunnerConfigSchema } from "@vlinders/tool-runner";
import { VllmSimulator } from "@vlinders/vllm-simulator";
import { createHookRegistry, createHookRunner } from "../hooks/hook-runner";
import { createAgentRunner, type AgentRunner, type AgentRunnerDependencies, type RunOutcome } from "./agent-loop";
import { loadAgentTypeCatalog, type AgentTypeCatalog } from "./agent-types";
import { RelayInferenceServiceDefinition } from "./chat-agent";
import { createInMemoryRunRecorder } from "./in-memory-run-recorder";

// Installed before any server or client exists, so that every hop of a run is traced.
const spans = new InMemorySpanExporter();
initTracing({ service: "agent-loop-context-spec", exporter: spans });

const execFileAsync = promisify(execFile);
const internalSecret = "agent-loop-context-spec-secret-0123";
const rootDir = join(__dirname, "../../../..");
const databaseUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** A reader with a small context window: a few big files overflow it. */
const testAgentTypes = `
  reader:
    description: Reads files into a small context window.
    max_iterations: 8
    tools: [read_file]
    workspace_access: read-only
    system_prompt: You read files and answer from them.
    context_budget_tokens: 4096
    budgets: { max_tokens: 1000000, timeout_ms: 60000, max_tool_calls: 20 }
`;

/** About 1000 tokens of code-like text (the context service counts 3.3 characters a token for it). */
const bigFile = (label: string) => `const ${label} = compute(${label});\n`.repeat(Math.ceil(3_300 / `const ${label} = compute(${label});\n`.length));
// SpanKind.SERVER and SpanKind.CLIENT of @opentelemetry/api (not a dependency of this package).
const serverKind = 1;
const clientKind = 2;
const readAll = (count: number) => [...Array(count).keys()].map((index) => `call read_file {"path":"big-${index + 1}.txt"}`).join(" then ");

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

interface Collected {
  outcome: RunOutcome;
  events: AgentEvent[];
  modelUsage: Usage[];
}

/**
 * The agent loop with the context service: a real vLLM simulator behind a real inference-broker,
 * a real tool-runner (no sandbox: only read_file is called), a real context service on the
 * machine's PostgreSQL (a schema of its own), and every span recorded in memory.
 */
describe("agent loop with the context service, traced", () => {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 2, interTokenLatencyMs: 1 });
  const hosts: ServiceHost[] = [];
  const channels: InternalChannel[] = [];
  let database: Database & { schema: string };
  let workspaceRoot: string;
  let configDir: string;
  let catalog: AgentTypeCatalog;
  let base: Omit<AgentRunnerDependencies, "logger" | "recorder">;
  let withContext: AgentRunner;
  let withContextFromStart: AgentRunner;
  let runCount = 0;

  const request = (agentType: string, instruction: string): RunAgentRequest => ({
    agentType,
    instruction,
    workspaceId: "project",
    model: "",
    history: [],
    tools: [],
    sampling: undefined,
    userId: "user-1",
    sessionId: "",
    overrides: undefined,
    bypassCache: false,
  });

  async function run(runner: AgentRunner, agentRequest: RunAgentRequest): Promise<Collected> {
    const events: AgentEvent[] = [];
    const modelUsage: Usage[] = [];
    runCount += 1;
    const outcome = await runner.run(agentRequest, {
      runId: `00000000-0000-4000-8000-${String(runCount).padStart(12, "0")}`,
      parentRunId: "",
      depth: 0,
      signal: AbortSignal.timeout(60_000),
      emit(encoded) {
        const event = AgentEvent.decode(encoded);
        events.push(event);
        if (event.event?.$case === "modelEvent" && event.event.value.event?.$case === "usage") modelUsage.push(event.event.value.event.value);
      },
    });
    return { outcome, events, modelUsage };
  }

  const compactions = (events: AgentEvent[]): ContextCompacted[] => events.flatMap((event) => (event.event?.$case === "contextCompacted" ? [event.event.value] : []));
  const runnerWith = (extra: Partial<AgentRunnerDependencies> = {}) =>
    createAgentRunner({ ...base, logger: createLogger({ service: "orchestrator", level: "silent" }), recorder: createInMemoryRunRecorder(), ...extra });

  beforeAll(async () => {
    workspaceRoot = await mkdtemp(join(tmpdir(), "agent-context-workspaces-"));
    configDir = await mkdtemp(join(tmpdir(), "agent-context-config-"));
    await mkdir(join(workspaceRoot, "project"), { recursive: true });
    for (let index = 1; index <= 4; index += 1) await writeFile(join(workspaceRoot, `project/big-${index}.txt`), bigFile(`value${index}`));
    await writeFile(join(workspaceRoot, "project/notes.txt"), "The launch code is 4711.\n");
    // As a provisioned workspace is: owned by the unprivileged user that runs commands (this suite runs as root).
    await execFileAsync("chown", ["-R", "1000:1000", join(workspaceRoot, "project")]);
    const agentsConfig = join(configDir, "agents.yaml");
    await writeFile(agentsConfig, (await readFile(join(rootDir, "configs/agents.yaml"), "utf8")) + testAgentTypes);

    const { url } = await simulator.listen(0);
    const { host: broker } = await createInferenceBroker(
      loadConfig(brokerConfigSchema, { INTERNAL_SECRET: internalSecret, DATABASE_URL: databaseUrl, VLLM_URLS: url }),
      createInProcessRuntime("inference-broker", { internalSecret }),
    );
    hosts.push(broker);
    const brokerPort = (await broker.listen({ host: "127.0.0.1", grpcPort: 0 })).grpcPort;

    const toolRunner = await createToolRunner(
      loadConfig(toolRunnerConfigSchema, {
        GRPC_PORT: "0",
        WORKSPACE_ROOT: workspaceRoot,
        TOOLS_CONFIG: join(rootDir, "configs/tools.yaml"),
        AGENTS_CONFIG: agentsConfig,
        SANDBOX_BACKEND: "none",
      }),
      createInProcessRuntime("tool-runner", { internalSecret }),
    );
    hosts.push(toolRunner);
    const toolPort = (await toolRunner.listen({ host: "127.0.0.1", grpcPort: 0 })).grpcPort;

    const contextRuntime = createInProcessRuntime("context", { internalSecret });
    database = await openTestDatabase({ logger: contextRuntime.logger, service: "agent-loop-context-spec" });
    const context = await createContextServer(
      loadConfig(contextConfigSchema, {
        GRPC_PORT: "0",
        DATABASE_URL: databaseUrl,
        DATABASE_SCHEMA: database.schema,
        INFERENCE_BROKER_ADDRESS: `127.0.0.1:${brokerPort}`,
      }),
      contextRuntime,
    );
    hosts.push(context);
    const contextPort = (await context.listen({ host: "127.0.0.1", grpcPort: 0 })).grpcPort;

    const brokerChannel = createInternalChannel(`127.0.0.1:${brokerPort}`);
    const toolChannel = createInternalChannel(`127.0.0.1:${toolPort}`);
    const contextChannel = createInternalChannel(`127.0.0.1:${contextPort}`);
    channels.push(brokerChannel, toolChannel, contextChannel);
    catalog = await loadAgentTypeCatalog(agentsConfig, { logger: createLogger({ service: "orchestrator", level: "silent" }) });
    base = {
      inference: createInternalClient(RelayInferenceServiceDefinition, brokerChannel, { internalSecret, defaultDeadlineMs: 30_000 }),
      tools: createInternalClient(ToolServiceDefinition, toolChannel, { internalSecret, defaultDeadlineMs: 30_000 }),
      catalog,
      hooks: createHookRunner({ registry: createHookRegistry(), logger: createLogger({ service: "orchestrator", level: "silent" }) }),
    };
    withContext = runnerWith({ context: createInternalClient(ContextServiceDefinition, contextChannel, { internalSecret, defaultDeadlineMs: 10_000 }) });
    // From the first message on, so that even a short run goes through the service (the trace test).
    withContextFromStart = runnerWith({
      context: createInternalClient(ContextServiceDefinition, contextChannel, { internalSecret, defaultDeadlineMs: 10_000 }),
      limits: { contextEngageAtShare: 0 },
    });
  }, 120_000);

  afterAll(async () => {
    for (const channel of channels) channel.close();
    for (const host of hosts.reverse()) await host.shutdown();
    await database?.close();
    await simulator.close();
    for (const dir of [workspaceRoot, configDir]) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it("masks old tool outputs when big reads overflow the window, tells the caller, and the run completes", async () => {
    const { outcome, events, modelUsage } = await run(withContext, request("reader", `${readAll(4)} then answer`));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 5 });

    const compacted = compactions(events);
    expect(compacted.length).toBeGreaterThan(0);
    expect(compacted[0]).toMatchObject({ stage: "mask_tool_output" });
    for (const each of compacted) expect(each.tokensAfter).toBeLessThan(each.tokensBefore);
    // The window stays near the budget; the model read masks instead of the first files.
    expect(Math.max(...compacted.map((each) => each.tokensAfter))).toBeLessThanOrEqual(4096);

    // The same run keeping its own messages sends the model every file, whole.
    const { outcome: uncompacted, modelUsage: uncompactedUsage } = await run(runnerWith(), request("reader", `${readAll(4)} then answer`));
    expect(uncompacted).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, iterations: 5 });
    expect(modelUsage.at(-1)!.promptTokens).toBeLessThan(uncompactedUsage.at(-1)!.promptTokens);
    if (process.env.REPORT_CONTEXT_EFFECT) {
      process.stdout.write(
        `${JSON.stringify({ compactions: compacted, lastPromptTokens: { withContext: modelUsage.at(-1)!.promptTokens, withoutContext: uncompactedUsage.at(-1)!.promptTokens } })}\n`,
      );
    }
  });

  it("goes on with its own messages, and warns once, when the context service cannot be reached", async () => {
    const lines: string[] = [];
    const channel = createInternalChannel(`127.0.0.1:${await closedPort()}`);
    channels.push(channel);
    const runner = createAgentRunner({
      ...base,
      logger: createLogger({ service: "orchestrator", level: "warn", destination: { write: (line: string) => void lines.push(line) } }),
      recorder: createInMemoryRunRecorder(),
      context: createInternalClient(ContextServiceDefinition, channel, { internalSecret, defaultDeadlineMs: 2_000 }),
      limits: { contextEngageAtShare: 0 },
    });
    for (let attempt = 0; attempt < 2; attempt += 1) {
      const { outcome, events } = await run(runner, request("reader", 'call read_file {"path":"notes.txt"} then answer'));
      expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
      expect(outcome.response).toContain("4711");
      expect(compactions(events)).toEqual([]);
    }
    const warnings = lines.map((line) => JSON.parse(line) as { msg: string }).filter((line) => line.msg.startsWith("the context service failed"));
    expect(warnings).toHaveLength(1);
  });

  it("leaves a short run's conversation out of the context service: nothing to compact", async () => {
    spans.reset();
    const { outcome } = await run(withContext, request("reader", 'call read_file {"path":"notes.txt"} then answer'));
    expect(outcome.status).toBe(AgentStatus.AGENT_STATUS_SUCCEEDED);
    expect(spans.getFinishedSpans().filter((span) => span.name.startsWith("vlinders.v1.ContextService/"))).toEqual([]);
  });

  it("traces a run as run_agent > tool_calling_loop > vllm_inference and execute_tool, in one trace with the broker, tool-runner and context", async () => {
    spans.reset();
    const { outcome } = await run(withContextFromStart, request("reader", 'call read_file {"path":"notes.txt"} then answer'));
    expect(outcome.status).toBe(AgentStatus.AGENT_STATUS_SUCCEEDED);
    const finished = spans.getFinishedSpans();
    const named = (name: string) => finished.filter((span) => span.name === name);
    const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId;
    const idOf = (span: ReadableSpan) => span.spanContext().spanId;

    const [runSpan] = named("run_agent");
    expect(named("run_agent")).toHaveLength(1);
    expect(runSpan!.attributes).toMatchObject({ agent_type: "reader", run_id: outcome.runId, parent_run_id: "", stop_reason: "completed" });
    const [loopSpan] = named("tool_calling_loop");
    expect(parentOf(loopSpan!)).toBe(idOf(runSpan!));
    const inference = named("vllm_inference");
    expect(inference.map((span) => span.attributes.iteration)).toEqual([1, 2]);
    for (const span of inference) expect(parentOf(span)).toBe(idOf(loopSpan!));
    expect(inference[0]!.attributes).toHaveProperty("model");
    const [toolSpan] = named("execute_tool read_file");
    expect(parentOf(toolSpan!)).toBe(idOf(loopSpan!));
    expect(toolSpan!.attributes).toMatchObject({ "gen_ai.tool.name": "read_file", success: true, iteration: 1 });

    // Downstream: the broker's server span of each model call sits under its client span, under vllm_inference.
    const brokerServer = named("vlinders.v1.InferenceService/Chat").filter((span) => span.kind === serverKind);
    expect(brokerServer).toHaveLength(2);
    const clientSpans = new Map(finished.filter((span) => span.kind === clientKind).map((span) => [idOf(span), span]));
    for (const server of brokerServer) expect(inference.map(idOf)).toContain(parentOf(clientSpans.get(parentOf(server)!)!));
    const toolServer = named("vlinders.v1.ToolService/ExecuteBatch").find((span) => span.kind === serverKind)!;
    expect(parentOf(clientSpans.get(parentOf(toolServer)!)!)).toBe(idOf(toolSpan!));
    expect(named("vlinders.v1.ContextService/AppendMessages").filter((span) => span.kind === serverKind).length).toBeGreaterThanOrEqual(2);

    const traceIds = new Set(finished.map((span) => span.spanContext().traceId));
    expect(traceIds).toEqual(new Set([runSpan!.spanContext().traceId]));
  });
});
