import { execFile } from "node:child_process";
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { brokerConfigSchema, createInferenceBroker } from "@vlinders/inference-broker";
import { AgentEvent, AgentStatus, ChatEvent, ToolServiceDefinition, type RunAgentRequest, type ToolResult, type Usage } from "@vlinders/proto";
import { bindDeadline, CallDeadlineError, createInProcessRuntime, createInternalChannel, createInternalClient, createLogger, loadConfig, ServiceShutdownError, type InternalChannel, type ServiceHost } from "@vlinders/service-runtime";
import { createToolRunner, toolRunnerConfigSchema } from "@vlinders/tool-runner";
import { countTokens, VllmSimulator } from "@vlinders/vllm-simulator";
import { Status } from "nice-grpc-common";
import { createHookRegistry, createHookRunner } from "../hooks/hook-runner";
import { createPluginToolRegistry } from "../plugins/plugin-tools";
import { interruptedStopReason, type RunRecorder } from "../runs/run-records";
import { createAgentRunner, type AgentRunner, type AgentRunnerDependencies, type RunOutcome } from "./agent-loop";
import { loadAgentTypeCatalog } from "./agent-types";
import { RelayInferenceServiceDefinition } from "./chat-agent";
import { streamRun } from "./event-stream";
import { createActiveRuns } from "../runs/active-runs";
import { createInMemoryRunRecorder, type InMemoryRunRecorder } from "./in-memory-run-recorder";

const execFileAsync = promisify(execFile);
const internalSecret = "agent-loop-spec-secret-0123456789";
const rootDir = join(__dirname, "../../../..");
const noteText = "The launch code is 4711.";

/** Agent types only this spec uses, appended under `agents:` of the real configs/agents.yaml. */
const testAgentTypes = (hookBase: string) => `
  guarded:
    description: Reads files, but every call must pass a (slow) policy webhook first.
    max_iterations: 2
    tools: [read_file]
    workspace_access: read-only
    budgets: { max_tokens: 100000, timeout_ms: 60000, max_tool_calls: 10 }
    hooks:
      pre_tool_use:
        - url: ${hookBase}/slow
          timeout_ms: 300
  broken:
    description: Asks a model no worker serves, so every run of it fails.
    model: no-such-model
    max_iterations: 2
    tools: [read_file]
    workspace_access: read-only
    budgets: { max_tokens: 100000, timeout_ms: 60000, max_tool_calls: 10 }
  brief:
    description: Reads files, two iterations at most.
    max_iterations: 2
    tools: [read_file, list_files]
    workspace_access: read-only
    budgets: { max_tokens: 100000, timeout_ms: 60000, max_tool_calls: 10 }
  pricey:
    description: Reads files on a cost budget that one model call uses up.
    max_iterations: 5
    tools: [read_file]
    workspace_access: read-only
    budgets: { max_tokens: 100000, timeout_ms: 60000, max_tool_calls: 10, max_cost_usd: 0.000001 }
  redirected:
    description: Reads files through in-process hooks that redirect every read and redact digits.
    max_iterations: 2
    tools: [read_file]
    workspace_access: read-only
    budgets: { max_tokens: 100000, timeout_ms: 60000, max_tool_calls: 10 }
    hooks:
      pre_tool_use:
        - plugin: read-notes-instead
      post_tool_use:
        - plugin: redact-digits
  withheld:
    description: Reads files through a redacting post_tool_use hook that always fails.
    max_iterations: 2
    tools: [read_file]
    workspace_access: read-only
    budgets: { max_tokens: 100000, timeout_ms: 60000, max_tool_calls: 10 }
    hooks:
      post_tool_use:
        - plugin: broken-redactor
        - plugin: redact-digits
  delegator:
    description: Delegates to explore and broken sub-agents.
    max_iterations: 3
    tools: [read_file]
    workspace_access: read-only
    subagents: [explore, broken]
    budgets: { max_tokens: 100000, timeout_ms: 60000, max_tool_calls: 10 }
`;

interface Collected {
  outcome: RunOutcome;
  events: AgentEvent[];
  /** The usage event of each model call, in order. */
  modelUsage: Usage[];
}

/**
 * The agent loop as a user of the orchestrator sees it: a real vLLM simulator behind a real
 * inference-broker, a real tool-runner with Docker sandboxes, the agent types of configs/agents.yaml.
 */
describe("agent loop", () => {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 2, interTokenLatencyMs: 1 });
  const hosts: ServiceHost[] = [];
  const channels: InternalChannel[] = [];
  let workspaceRoot: string;
  let stateDir: string;
  let configDir: string;
  let hookServer: Server;
  let recorder: InMemoryRunRecorder;
  let runner: AgentRunner;
  /** The dependencies of `runner`: a test that needs a runner of its own (a cold cache, another recorder) starts one from them. */
  let runnerDeps: AgentRunnerDependencies;
  let runCount = 0;

  const request = (agentType: string, instruction: string, extra: Partial<RunAgentRequest> = {}): RunAgentRequest => ({
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
    ...extra,
  });

  async function run(agentRequest: RunAgentRequest, options: { signal?: AbortSignal; depth?: number; onEvent?: (event: AgentEvent) => void } = {}): Promise<Collected> {
    const events: AgentEvent[] = [];
    const modelUsage: Usage[] = [];
    runCount += 1;
    const outcome = await runner.run(agentRequest, {
      runId: `run-${runCount}`,
      parentRunId: "",
      depth: options.depth ?? 0,
      signal: options.signal ?? AbortSignal.timeout(60_000),
      emit(encoded) {
        const event = AgentEvent.decode(encoded);
        events.push(event);
        if (event.event?.$case === "modelEvent" && event.event.value.event?.$case === "usage") modelUsage.push(event.event.value.event.value);
        options.onEvent?.(event);
      },
    });
    return { outcome, events, modelUsage };
  }

  const toolResults = (events: AgentEvent[]): ToolResult[] =>
    events.flatMap((event) => (event.event?.$case === "toolResult" && event.runId === events[0]?.runId ? [event.event.value] : []));

  beforeAll(async () => {
    workspaceRoot = await mkdtemp(join(tmpdir(), "agent-loop-workspaces-"));
    stateDir = await mkdtemp(join(tmpdir(), "agent-loop-sandbox-"));
    configDir = await mkdtemp(join(tmpdir(), "agent-loop-config-"));
    await mkdir(join(workspaceRoot, "project"), { recursive: true });
    await writeFile(join(workspaceRoot, "project/notes.txt"), `${noteText}\n`);
    // As a provisioned workspace is: owned by the unprivileged user that runs commands (this suite runs as root).
    await execFileAsync("chown", ["-R", "1000:1000", join(workspaceRoot, "project")]);

    // A policy webhook that answers too late (after the hook's 300 ms timeout).
    hookServer = createServer((req, res) => {
      req.resume();
      const timer = setTimeout(() => res.end(JSON.stringify({ decision: "allow" })), 3_000);
      res.on("close", () => clearTimeout(timer));
    });
    await new Promise<void>((resolve) => hookServer.listen(0, "127.0.0.1", resolve));
    const hookBase = `http://127.0.0.1:${(hookServer.address() as { port: number }).port}`;
    const agentsConfig = join(configDir, "agents.yaml");
    // A dollar per million tokens of any model: what the pricey type's cost budget is counted in.
    const prices = "model_prices:\n  default: { prompt_usd_per_million_tokens: 1, completion_usd_per_million_tokens: 1 }\n";
    await writeFile(agentsConfig, prices + (await readFile(join(rootDir, "configs/agents.yaml"), "utf8")) + testAgentTypes(hookBase));

    const { url } = await simulator.listen(0);
    const { host: broker } = await createInferenceBroker(
      loadConfig(brokerConfigSchema, {
        INTERNAL_SECRET: internalSecret,
        // The machine's PostgreSQL: the embedded PGlite would add seconds to every broker start.
        DATABASE_URL: process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test",
        VLLM_URLS: url,
      }),
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
        SANDBOX_BACKEND: "docker",
        SANDBOX_POOL_SIZE: "1",
        SANDBOX_STATE_DIR: stateDir,
        SANDBOX_RUNNER_ID: `agent-loop-spec-${process.pid}`,
        SANDBOX_MEMORY_MB: "256",
      }),
      createInProcessRuntime("tool-runner", { internalSecret }),
    );
    hosts.push(toolRunner);
    const toolPort = (await toolRunner.listen({ host: "127.0.0.1", grpcPort: 0 })).grpcPort;

    const brokerChannel = createInternalChannel(`127.0.0.1:${brokerPort}`);
    const toolChannel = createInternalChannel(`127.0.0.1:${toolPort}`);
    channels.push(brokerChannel, toolChannel);
    const logger = createLogger({ service: "orchestrator", level: process.env.LOG_LEVEL ?? "silent" });
    recorder = createInMemoryRunRecorder();
    const pluginTools = createPluginToolRegistry().registerTool(
      { name: "shout", description: "Upper-cases a text.", parametersJsonSchema: JSON.stringify({ type: "object", properties: { text: { type: "string" } } }) },
      async (args) => ({ success: true, output: String(args.text).toUpperCase() }),
      { agentTypes: ["explore"] },
    ).registerTool(
      { name: "stamp", description: "Writes a stamp (registered for every agent type).", parametersJsonSchema: "{}" },
      async () => ({ success: true, output: "stamped" }),
    );
    runnerDeps = {
      inference: createInternalClient(RelayInferenceServiceDefinition, brokerChannel, { internalSecret, defaultDeadlineMs: 30_000 }),
      tools: createInternalClient(ToolServiceDefinition, toolChannel, { internalSecret, defaultDeadlineMs: 60_000 }),
      catalog: await loadAgentTypeCatalog(agentsConfig, { logger }),
      hooks: createHookRunner({
        registry: createHookRegistry()
          .register("read-notes-instead", () => ({ decision: "rewrite", argumentsJson: '{"path":"notes.txt"}' }))
          .register("redact-digits", ({ toolResult }) => ({ decision: "rewrite", result: { output: (toolResult?.output ?? "").replace(/[0-9]/g, "#") } }))
          .register("broken-redactor", () => {
            throw new Error("redactor crashed");
          }),
        logger,
      }),
      pluginTools,
      recorder,
      logger,
    };
    runner = createAgentRunner(runnerDeps);
  }, 180_000);

  afterAll(async () => {
    for (const channel of channels) channel.close();
    for (const host of hosts.reverse()) await host.shutdown();
    await simulator.close();
    await new Promise<void>((resolve) => hookServer?.close(() => resolve()));
    for (const dir of [workspaceRoot, stateDir, configDir]) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it("runs explore's real read_file, and answers from the file's content", async () => {
    const { outcome, events, modelUsage } = await run(request("explore", 'call read_file {"path":"notes.txt"}'));

    const requested = events.filter((event) => event.event?.$case === "toolCallRequested");
    expect(requested.map((event) => event.event?.value)).toEqual([
      { iteration: 1, call: { id: expect.stringMatching(/^chatcmpl-tool-/), name: "read_file", argumentsJson: '{"path":"notes.txt"}' } },
    ]);
    const [first] = toolResults(events);
    expect(first).toMatchObject({ toolName: "read_file", success: true });
    expect(first?.output).toContain(noteText);
    // The second prompt is the first plus the assistant's call and the tool message with the file in it.
    expect(modelUsage[1]!.promptTokens).toBeGreaterThanOrEqual(modelUsage[0]!.promptTokens + countTokens(first!.output));

    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
    expect(outcome.response).toContain(noteText);
    expect(outcome.usage?.totalTokens).toBe(modelUsage.reduce((sum, usage) => sum + usage.totalTokens, 0));
    const recorded = recorder.runs.get(outcome.runId)!;
    expect(recorded.started).toMatchObject({ agentType: "explore", workspaceId: "project", userId: "user-1", parentRunId: "" });
    expect(recorded.toolCalls).toHaveLength(1);
    expect(recorded.toolCalls[0]).toMatchObject({ toolName: "read_file", iteration: 1, success: true });
    expect(recorded.toolCalls[0]!.resultJson).toContain("4711");
    expect(recorded.finished).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
    expect(events.at(-1)?.event).toMatchObject({ $case: "runFinished", value: { stopReason: "completed", response: outcome.response } });
  });

  it("tells a model that repeats the same call that it does, then stops it as stuck", async () => {
    const step = 'call read_file {"path":"notes.txt"}';
    const { outcome } = await run(request("explore", Array(6).fill(step).join(" then ")));
    // Three identical iterations: a note; the fourth: stopped.
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "stuck", iterations: 4 });
    expect(outcome.error).toContain("same tool call 3 times");
  });

  it("stops an A-B-A-B alternation as stuck", async () => {
    const a = 'call read_file {"path":"notes.txt"}';
    const b = 'call list_files {"path":"."}';
    const { outcome } = await run(request("explore", [a, b, a, b, a, b, a].join(" then ")));
    expect(outcome).toMatchObject({ stopReason: "stuck", iterations: 5 });
    expect(outcome.error).toContain("alternates");
  });

  it("answers an instruction without tool calls in one iteration, relaying the model's events", async () => {
    const { outcome, events } = await run(request("explore", "Nothing to look up here."));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 1, response: "Nothing to look up here." });
    const text = events
      .flatMap((event) => (event.event?.$case === "modelEvent" && event.event.value.event?.$case === "contentDelta" ? [event.event.value.event.value] : []))
      .join("");
    expect(text).toBe("Nothing to look up here.");
    expect(events[0]?.event).toMatchObject({ $case: "runStarted", value: { agentType: "explore" } });
  });

  it("keeps the chat agent to one model call over the history, with no workspace", async () => {
    const history = [{ role: "user", content: "Hello there", toolCalls: [], toolCallId: "", name: "" }];
    const { outcome, events } = await run(request("chat", "", { workspaceId: "", history }));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 1, response: "Hello there" });
    const modelEvents = events.filter((event) => event.event?.$case === "modelEvent");
    expect(modelEvents.length).toBeGreaterThan(1);
    expect(ChatEvent.toJSON(modelEvents.at(-1)!.event!.value as ChatEvent)).toHaveProperty("usage");
  });

  it("ends the run with stop reason tool_calls when the model calls a function of the caller", async () => {
    const tools = [{ name: "get_weather", description: "Weather of a city.", parametersJsonSchema: '{"type":"object"}' }];
    const { outcome } = await run(request("chat", 'call get_weather {"city":"Ghent"}', { workspaceId: "", tools }));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "tool_calls", iterations: 1 });
    expect(outcome.toolCalls).toEqual([expect.objectContaining({ name: "get_weather", argumentsJson: '{"city":"Ghent"}' })]);
  });

  it("refuses an unknown agent type with INVALID_ARGUMENT naming the field and the known types", async () => {
    await expect(run(request("wizard", "hello"))).rejects.toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: expect.stringContaining('agent_type: unknown agent type "wizard" (known: brief, broken, chat, delegator, edit, explore, guarded, plan, pricey, redirected, withheld)'),
    });
  });

  it("gives a call of a tool the type was not offered back to the model without running it, and goes on", async () => {
    const { outcome, events } = await run(request("explore", 'call write_file {"path":"x.txt","content":"hi"}', { overrides: { maxIterations: 2, systemPrompt: "" } }));
    const [first] = toolResults(events);
    expect(first).toMatchObject({ toolName: "write_file", success: false, error: "tool write_file is not available to agent type explore" });
    // The model read the refusal and answered from it.
    expect(outcome).toMatchObject({ stopReason: "completed", iterations: 2 });
    expect(outcome.response).toContain("not available to agent type explore");
    expect(recorder.runs.get(outcome.runId)?.toolCalls[0]).toMatchObject({ toolName: "write_file", success: false });
    await expect(access(join(workspaceRoot, "project/x.txt"))).rejects.toThrow();
  });

  it("caps an override of max_iterations at the agent type's", async () => {
    const steps = ['call read_file {"path":"notes.txt"}', 'call list_files {"path":"."}', 'call read_file {"path":"notes.txt"}'];
    const { outcome } = await run(request("brief", steps.join(" then "), { overrides: { maxIterations: 10, systemPrompt: "" } }));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "max_iterations", iterations: 2 });
  });

  it("lists tools once for concurrent runs, and one run's cancel does not fail the others", async () => {
    // A runner of its own: its tool cache is cold, so both runs wait on the same ListTools call.
    const coldRunner = createAgentRunner(runnerDeps);
    const controller = new AbortController();
    const start = (runId: string, signal: AbortSignal) =>
      coldRunner.run(request("explore", "Nothing to look up here."), { runId, parentRunId: "", depth: 0, signal, emit: () => undefined });
    const first = start("cold-cache-cancelled", controller.signal);
    const second = start("cold-cache-ok", AbortSignal.timeout(60_000));
    controller.abort();
    const [cancelled, succeeded] = await Promise.allSettled([first, second]);
    // The cancelled run stops wherever the cancel found it; it does not succeed.
    expect(cancelled.status === "rejected" || cancelled.value.status === AgentStatus.AGENT_STATUS_CANCELLED).toBe(true);
    expect(succeeded).toMatchObject({ status: "fulfilled", value: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed" } });
  });

  it("records a run whose finished record fails once as it ended, retrying the write only", async () => {
    const finishedWrites: AgentStatus[] = [];
    let failuresLeft = 1;
    const flakyRecorder: RunRecorder = {
      started: (record, signal) => recorder.started(record, signal),
      progressed: (runId, iterations, usage, signal) => recorder.progressed(runId, iterations, usage, signal),
      toolCalled: (call, signal) => recorder.toolCalled(call, signal),
      async finished(record, signal) {
        finishedWrites.push(record.status);
        if (failuresLeft > 0) {
          failuresLeft -= 1;
          throw new Error("the database is briefly unavailable");
        }
        await recorder.finished(record, signal);
      },
    };
    const flakyRunner = createAgentRunner({ ...runnerDeps, recorder: flakyRecorder });
    const outcome = await flakyRunner.run(request("explore", "Nothing to look up here."), {
      runId: "flaky-finished-record",
      parentRunId: "",
      depth: 0,
      signal: AbortSignal.timeout(60_000),
      emit: () => undefined,
    });
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed" });
    // Retried with the same outcome; never reclassified as failed.
    expect(finishedWrites).toEqual([AgentStatus.AGENT_STATUS_SUCCEEDED, AgentStatus.AGENT_STATUS_SUCCEEDED]);
    expect(recorder.runs.get("flaky-finished-record")?.finished).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed" });
  });

  it("gives up on a finished record that cannot be written, after a few attempts, without reclassifying the run", async () => {
    const finishedWrites: AgentStatus[] = [];
    const failingRecorder: RunRecorder = {
      started: (record, signal) => recorder.started(record, signal),
      progressed: (runId, iterations, usage, signal) => recorder.progressed(runId, iterations, usage, signal),
      toolCalled: (call, signal) => recorder.toolCalled(call, signal),
      async finished(record) {
        finishedWrites.push(record.status);
        throw new Error("the database is down");
      },
    };
    const failingRunner = createAgentRunner({ ...runnerDeps, recorder: failingRecorder });
    await expect(
      failingRunner.run(request("explore", "Nothing to look up here."), { runId: "failing-finished-record", parentRunId: "", depth: 0, signal: AbortSignal.timeout(60_000), emit: () => undefined }),
    ).rejects.toThrow("the database is down");
    expect(finishedWrites).toEqual([AgentStatus.AGENT_STATUS_SUCCEEDED, AgentStatus.AGENT_STATUS_SUCCEEDED, AgentStatus.AGENT_STATUS_SUCCEEDED]);
  });

  describe("a StreamAgent client that stays connected but stops reading", () => {
    // Far more model tokens than the stream buffers (64 events), so the run must wait for the client.
    const longInstruction = Array.from({ length: 400 }, (_, index) => `word${index}`).join(" ");

    async function runUnread(extra: Partial<RunAgentRequest>, signal: AbortSignal): Promise<RunOutcome> {
      let outcome: Promise<RunOutcome> | undefined;
      runCount += 1;
      const runId = `unread-${runCount}`;
      const stream = streamRun((emit) => (outcome = runner.run(request("explore", longInstruction, extra), { runId, parentRunId: "", depth: 0, signal, emit })));
      // The client reads the first event, then nothing more, and does not go away.
      await stream.next();
      const ended = await outcome!;
      // The client goes away: what was buffered is dropped, and the stream ends.
      await stream.return(ended);
      return ended;
    }

    it("does not keep the run past its timeout: it ends and is recorded as timed out", async () => {
      const outcome = await runUnread({ overrides: { timeoutMs: 1_000, systemPrompt: "" } }, AbortSignal.timeout(60_000));
      expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout" });
      expect(recorder.runs.get(outcome.runId)?.finished).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout" });
    }, 30_000);

    it("does not keep the run past its cancel: it ends and is recorded as cancelled", async () => {
      const controller = new AbortController();
      // Cancelled once the run is surely waiting for the client (it cannot pass 64 unread events).
      setTimeout(() => controller.abort(), 500);
      const outcome = await runUnread({}, controller.signal);
      expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled" });
      expect(recorder.runs.get(outcome.runId)?.finished).toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled" });
    }, 30_000);
  });

  it("gives malformed tool-call JSON back to the model as that call's error, and goes on", async () => {
    const { outcome, events } = await run(request("explore", 'call read_file {"path": }', { overrides: { maxIterations: 2, systemPrompt: "" } }));
    const [first] = toolResults(events);
    expect(first).toMatchObject({ toolName: "read_file", success: false });
    expect(first?.error).toMatch(/^arguments_json: not valid JSON/);
    expect(outcome).toMatchObject({ stopReason: "completed", iterations: 2 });
    expect(outcome.response).toContain("not valid JSON");
  });

  it("gives a failing tool's result back to the model, and goes on", async () => {
    const { outcome, events } = await run(request("explore", 'call read_file {"path":"missing.txt"}'));
    const [first] = toolResults(events);
    expect(first).toMatchObject({ toolName: "read_file", success: false });
    expect(first?.error).toMatch(/missing\.txt/);
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
    expect(outcome.response).toContain("missing.txt");
  });

  it("gives the calls of a tool-runner that is down its error, keeps the other tools' results, and goes on", async () => {
    // The tool list comes from the real tool-runner; ExecuteBatch goes to an address that drops
    // every connection (the runner went down in between) and fails with UNAVAILABLE. The plugin
    // tool beside it runs.
    const dropping = createNetServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => dropping.listen(0, "127.0.0.1", resolve));
    const deadChannel = createInternalChannel(`127.0.0.1:${(dropping.address() as { port: number }).port}`);
    channels.push(deadChannel);
    const ownRecorder = createInMemoryRunRecorder();
    const cutOff = createAgentRunner({
      ...runnerDeps,
      tools: { ...runnerDeps.tools, executeBatch: createInternalClient(ToolServiceDefinition, deadChannel, { internalSecret, defaultDeadlineMs: 5_000 }).executeBatch },
      recorder: ownRecorder,
    });
    const previous = runner;
    runner = cutOff;
    try {
      const { outcome, events } = await run(request("explore", 'call read_file {"path":"notes.txt"} and call shout {"text":"still here"} then answer'));
      const results = toolResults(events);
      expect(results.map((result) => [result.toolName, result.success])).toEqual([
        ["read_file", false],
        ["shout", true],
      ]);
      expect(results[0]?.error).toMatch(/tool-runner could not run this call \(UNAVAILABLE/);
      expect(results[1]?.output).toBe("STILL HERE");
      expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
      const recorded = ownRecorder.runs.get(outcome.runId);
      expect(recorded?.toolCalls.map((call) => [call.toolName, call.success])).toEqual([
        ["read_file", false],
        ["shout", true],
      ]);
    } finally {
      runner = previous;
      await new Promise<void>((resolve) => dropping.close(() => resolve()));
    }
  });

  it("stops a run whose every tool call fails three iterations in a row, after a note", async () => {
    const steps = ["a", "b", "c", "d", "e"].map((name) => `call read_file {"path":"${name}-missing.txt"}`);
    const { outcome } = await run(request("explore", steps.join(" then ")));
    expect(outcome).toMatchObject({ stopReason: "stuck", iterations: 4 });
    expect(outcome.error).toContain("every tool call failed");
  });

  it("offers a plugin tool registered for every type only to types that may use any tool or list it", async () => {
    expect(await runner.allowedToolNames("edit", AbortSignal.timeout(10_000))).toContain("stamp");
    // explore lists its tools: it gets the plugin registered for it by name, not the one for everybody.
    const explore = await runner.allowedToolNames("explore", AbortSignal.timeout(10_000));
    expect(explore).toContain("shout");
    expect(explore).not.toContain("stamp");
  });

  it("runs a plugin tool in process", async () => {
    const { events } = await run(request("explore", 'call shout {"text":"hi"}', { overrides: { maxIterations: 1, systemPrompt: "" } }));
    expect(toolResults(events)[0]).toMatchObject({ toolName: "shout", success: true, output: "HI" });
  });

  it("denies a call whose pre_tool_use webhook times out (fail closed)", async () => {
    const { outcome, events } = await run(request("guarded", 'call read_file {"path":"notes.txt"}'));
    const [first] = toolResults(events);
    expect(first).toMatchObject({ toolName: "read_file", success: false, output: "" });
    expect(first?.error).toContain("timed out");
    expect(first?.error).toContain("denies");
    expect(outcome).toMatchObject({ stopReason: "completed", iterations: 2 });
    expect(outcome.response).not.toContain("4711");
  });

  it("runs a call with the arguments a pre_tool_use hook rewrote, and records those, with the result post_tool_use rewrote", async () => {
    const { outcome, events } = await run(request("redirected", 'call read_file {"path":"missing.txt"}'));
    // The event says what the model asked for; the tool ran what the hook made of it.
    expect(events.find((event) => event.event?.$case === "toolCallRequested")?.event?.value).toMatchObject({ call: { argumentsJson: '{"path":"missing.txt"}' } });
    const [first] = toolResults(events);
    expect(first).toMatchObject({ toolName: "read_file", success: true });
    expect(first?.output).toContain("The launch code is ####.");
    expect(outcome.response).not.toContain("4711");
    const [recorded] = recorder.runs.get(outcome.runId)!.toolCalls;
    expect(recorded).toMatchObject({ toolName: "read_file", argumentsJson: '{"path":"notes.txt"}', success: true });
    expect(recorded!.resultJson).toContain("####");
    expect(recorded!.resultJson).not.toContain("4711");
  });

  it("withholds a tool's output from the model and the record when a post_tool_use hook fails (fail closed)", async () => {
    const { outcome, events } = await run(request("withheld", 'call read_file {"path":"notes.txt"}'));
    const [first] = toolResults(events);
    expect(first).toMatchObject({ toolName: "read_file", success: false, output: "" });
    expect(first?.error).toContain("redactor crashed");
    expect(first?.error).toContain("withheld");
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, iterations: 2 });
    expect(outcome.response).not.toContain("4711");
    expect(recorder.runs.get(outcome.runId)!.toolCalls[0]!.resultJson).not.toContain("4711");
  });

  it("stops a run that spends its cost budget, priced by model_prices", async () => {
    const { outcome, modelUsage } = await run(request("pricey", 'call read_file {"path":"notes.txt"} then answer'));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "budget", iterations: 1 });
    // At a dollar per million tokens, the first call's tokens cost more than the budget's $0.000001.
    const spent = (modelUsage[0]!.promptTokens + modelUsage[0]!.completionTokens) / 1_000_000;
    expect(outcome.error).toBe(`the run spent $${spent.toFixed(6)} of its $0.000001 cost budget`);
  });

  it("stops a run that uses up its token budget", async () => {
    const { outcome } = await run(request("explore", 'call read_file {"path":"notes.txt"}', { overrides: { maxTokens: 5, systemPrompt: "" } }));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "budget", iterations: 1 });
  });

  it("runs sub-agents in parallel; one failing does not fail its sibling, and results come back in order", async () => {
    const tasks = [
      { agent_type: "explore", instruction: "Say hello." },
      { agent_type: "broken", instruction: "Say hello." },
    ];
    const { outcome, events } = await run(request("delegator", `call spawn_subagents ${JSON.stringify({ tasks })}`));
    const [spawned] = toolResults(events);
    expect(spawned).toMatchObject({ toolName: "spawn_subagents", success: true });
    const entries = JSON.parse(spawned!.output) as Array<Record<string, string>>;
    expect(entries[0]).toEqual({ agent_type: "explore", status: "succeeded", response: "Say hello." });
    expect(entries[1]).toMatchObject({ agent_type: "broken", status: "failed" });
    expect(entries[1]!.error).toContain("no-such-model");

    const started = events.filter((event) => event.event?.$case === "subagentStarted" && event.runId === outcome.runId);
    const finished = events.filter((event) => event.event?.$case === "subagentFinished" && event.runId === outcome.runId);
    expect(started).toHaveLength(2);
    expect(finished).toHaveLength(2);
    const children = recorder.children(outcome.runId);
    expect(children.map((child) => [child.started.agentType, child.finished?.status]).sort()).toEqual([
      ["broken", AgentStatus.AGENT_STATUS_FAILED],
      ["explore", AgentStatus.AGENT_STATUS_SUCCEEDED],
    ]);
    expect(children.every((child) => child.started.workspaceId === "project")).toBe(true);
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
  });

  it("cancels one sub-agent by its own run id: it ends cancelled, its sibling and the parent go on", async () => {
    const activeRuns = createActiveRuns();
    const previous = runner;
    runner = createAgentRunner({ ...runnerDeps, activeRuns });
    const tasks = [
      { agent_type: "explore", instruction: 'call run_command {"command":"sleep 30"} then answer' },
      { agent_type: "explore", instruction: "Say hello." },
    ];
    let cancelled = false;
    try {
      const startedAt = Date.now();
      const { outcome, events } = await run(request("delegator", `call spawn_subagents ${JSON.stringify({ tasks })}`), {
        onEvent(event) {
          // The slow child's command is running in its sandbox: cancel that child alone.
          if (event.event?.$case !== "toolCallRequested" || event.event.value.call?.name !== "run_command" || cancelled) return;
          cancelled = activeRuns.cancel(event.runId, "not needed any more");
        },
      });
      expect(cancelled).toBe(true);
      expect(Date.now() - startedAt).toBeLessThan(20_000);
      const entries = JSON.parse(toolResults(events)[0]!.output) as Array<Record<string, string>>;
      expect(entries[0]).toMatchObject({ agent_type: "explore", status: "cancelled" });
      expect(entries[1]).toEqual({ agent_type: "explore", status: "succeeded", response: "Say hello." });
      expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed" });
      expect(recorder.children(outcome.runId).map((child) => child.finished?.status).sort()).toEqual([AgentStatus.AGENT_STATUS_SUCCEEDED, AgentStatus.AGENT_STATUS_CANCELLED]);
      // Every child gave its registration back.
      expect(activeRuns.size()).toBe(0);
    } finally {
      runner = previous;
    }
  }, 60_000);

  it("lets plan spawn two explore sub-agents in parallel that read a file, and answers from their results", async () => {
    const read = 'call read_file {"path":"notes.txt"}';
    const tasks = [
      { agent_type: "explore", instruction: read },
      { agent_type: "explore", instruction: read },
    ];
    const { events, outcome } = await run(request("plan", `call spawn_subagents ${JSON.stringify({ tasks })}`));
    const entries = JSON.parse(toolResults(events)[0]!.output) as Array<Record<string, string>>;
    expect(entries).toEqual([
      { agent_type: "explore", status: "succeeded", response: expect.stringContaining(noteText) },
      { agent_type: "explore", status: "succeeded", response: expect.stringContaining(noteText) },
    ]);
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", iterations: 2 });
    expect(outcome.response).toContain("4711");
    const children = recorder.children(outcome.runId);
    expect(children).toHaveLength(2);
    // In parallel: each started before either finished.
    const lastStart = Math.max(...children.map((child) => child.started.startedAt.getTime()));
    const firstFinish = Math.min(...children.map((child) => child.finished!.finishedAt.getTime()));
    expect(lastStart).toBeLessThanOrEqual(firstFinish);
    // Sub-agents' tool events reach the parent's stream under their own run ids.
    const childIds = new Set(children.map((child) => child.started.runId));
    expect(events.filter((event) => event.event?.$case === "toolResult" && childIds.has(event.runId))).toHaveLength(2);
  });

  it("refuses sub-agent types the parent may not start, as a tool error", async () => {
    const tasks = [{ agent_type: "edit", instruction: "Delete everything." }];
    const { events } = await run(request("plan", `call spawn_subagents ${JSON.stringify({ tasks })}`, { overrides: { maxIterations: 1, systemPrompt: "" } }));
    expect(toolResults(events)[0]?.error).toContain("spawn_subagents: tasks[0].agent_type: must be one of explore");
  });

  it("refuses to nest sub-agents deeper than the limit, as a tool error", async () => {
    const tasks = [{ agent_type: "explore", instruction: "Say hello." }];
    const { events } = await run(request("plan", `call spawn_subagents ${JSON.stringify({ tasks })}`), { depth: 2 });
    expect(toolResults(events)[0]?.error).toContain("spawn_subagents: sub-agents may be nested at most 2 deep");
  });

  it("ends a run at its timeout, stopping the running command", async () => {
    const command = "sleep 5";
    const startedAt = Date.now();
    const { outcome } = await run(request("edit", `call run_command ${JSON.stringify({ command })}`, { overrides: { timeoutMs: 1_500, systemPrompt: "" } }));
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout", iterations: 1 });
    expect(outcome.error).toContain("timeout of 1500 ms");
    expect(Date.now() - startedAt).toBeLessThan(4_000);
  }, 30_000);

  it("records a run whose caller's deadline passed as timed out, not cancelled", async () => {
    const controller = new AbortController();
    // What the transport does when a call's grpc-timeout passes.
    const deadline = setTimeout(() => controller.abort(new CallDeadlineError(800)), 800);
    const { outcome } = await run(request("edit", `call run_command ${JSON.stringify({ command: "sleep 5" })}`, { overrides: { systemPrompt: "" } }), { signal: controller.signal });
    clearTimeout(deadline);
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout", iterations: 1 });
    expect(outcome.error).toContain("the caller's deadline of 800 ms passed");
    expect(recorder.runs.get(outcome.runId)?.finished).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout" });
  }, 30_000);

  it("records a timeout, not an error, when a call of the run reaches the caller's deadline before the run's signal does", async () => {
    // Only the deadline, inherited by the run's calls: their own timers fire (DEADLINE_EXCEEDED)
    // while the run's signal has not aborted yet.
    const controller = new AbortController();
    bindDeadline(controller.signal, Date.now() + 800);
    const { outcome } = await run(request("edit", `call run_command ${JSON.stringify({ command: "sleep 5" })}`, { overrides: { systemPrompt: "" } }), { signal: controller.signal });
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout" });
    expect(outcome.error).toBe("the caller's deadline passed");
  }, 30_000);

  it("records a run its service's shutdown cut off as interrupted, and the tool call that did finish", async () => {
    const controller = new AbortController();
    const { outcome } = await run(request("explore", 'call run_command {"command":"sleep 30"} and call shout {"text":"done"} then answer'), {
      signal: controller.signal,
      onEvent(event) {
        // Once shout has answered and sleep runs: what the service host's grace period ending
        // does to every call still running.
        if (event.event?.$case === "toolCallRequested" && event.event.value.call?.name === "shout") setTimeout(() => controller.abort(new ServiceShutdownError()), 500);
      },
    });
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_INTERRUPTED, stopReason: interruptedStopReason });
    const recorded = recorder.runs.get(outcome.runId);
    expect(recorded?.finished).toMatchObject({ status: AgentStatus.AGENT_STATUS_INTERRUPTED });
    expect(recorded?.toolCalls.map((call) => [call.toolName, call.success])).toEqual([["shout", true]]);
  }, 60_000);

  it("cancels a run mid-tool: CANCELLED, and the sandboxed command stops", async () => {
    const controller = new AbortController();
    const command = "echo started > started.txt && sleep 4 && echo done > finished.txt";
    const running = run(request("edit", `call run_command ${JSON.stringify({ command })}`), { signal: controller.signal });
    // Cancelled once the command is really running in its sandbox.
    const startedAt = Date.now();
    for (;;) {
      if (await access(join(workspaceRoot, "project/started.txt")).then(() => true, () => false)) break;
      if (Date.now() - startedAt > 60_000) throw new Error("the command never started");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    controller.abort();
    const cancelledAt = Date.now();
    const { outcome, events } = await running;
    expect(Date.now() - cancelledAt).toBeLessThan(3_000);
    expect(outcome).toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled", iterations: 1 });
    expect(recorder.runs.get(outcome.runId)?.finished).toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled" });
    expect(events.at(-1)?.event).toMatchObject({ $case: "runFinished", value: { status: AgentStatus.AGENT_STATUS_CANCELLED } });
    // Had the command gone on, it would have written finished.txt by now.
    await new Promise((resolve) => setTimeout(resolve, 5_000));
    await expect(access(join(workspaceRoot, "project/finished.txt"))).rejects.toThrow();
  }, 90_000);
});
