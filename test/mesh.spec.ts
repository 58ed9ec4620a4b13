import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import * as grpc from "@grpc/grpc-js";
import { AgentServiceDefinition, AgentStatus, ChatEvent, ChatRequest, FinishReason, InferenceServiceDefinition, type RunAgentRequest } from "@vlinders/proto";
import { initTracing } from "@vlinders/service-runtime";
import { createChannel, createClientFactory, Metadata, Status, type Channel } from "nice-grpc";
import { deadlineMiddleware } from "nice-grpc-client-middleware-deadline";
import { readChat, userSays } from "./support/chat";
import { meshSecret, startInProcessMesh, type InProcessMesh } from "./support/in-process-mesh";

// Installed before any server or client exists, so that every hop is traced.
const spans = new InMemorySpanExporter();
initTracing({ service: "mesh-test", exporter: spans });

const metadata = Metadata({ "x-internal-auth": meshSecret });

/** A RunAgentRequest with nothing but its type and instruction set (and what `extra` says). */
function agentRun(agentType: string, instruction: string, extra: Partial<RunAgentRequest> = {}): RunAgentRequest {
  return { agentType, instruction, workspaceId: "", model: "", history: [], tools: [], sampling: undefined, userId: "", sessionId: "", overrides: undefined, bypassCache: false, ...extra };
}
const clients = createClientFactory().use(deadlineMiddleware);

describe("a Chat through gateway, orchestrator and inference-broker to a vLLM worker", () => {
  let mesh: InProcessMesh;
  let channel: Channel;
  const gateway = () => clients.create(InferenceServiceDefinition, channel, { "*": { metadata } });

  beforeAll(async () => {
    mesh = await startInProcessMesh();
    channel = createChannel(mesh.gatewayAddress);
  });

  afterAll(async () => {
    channel.close();
    await mesh.stop();
  });

  afterEach(() => {
    mesh.simulator.configure({ timeToFirstTokenMs: 5, interTokenLatencyMs: 2 });
    mesh.simulator.injectFaults({});
  });

  it("relays the worker's tokens as they are generated, in several messages", async () => {
    mesh.simulator.configure({ interTokenLatencyMs: 30 });
    const arrivals: number[] = [];
    const events = [];
    for await (const event of gateway().chat(userSays("hello from the other side of the mesh"))) {
      arrivals.push(performance.now());
      events.push(event);
    }
    const text = events.map((event) => (event.event?.$case === "contentDelta" ? event.event.value : "")).join("");
    expect(text).toBe("hello from the other side of the mesh");
    expect(events.filter((event) => event.event?.$case === "contentDelta")).toHaveLength(8);
    expect(events.at(-2)?.event).toEqual({ $case: "finishReason", value: FinishReason.FINISH_REASON_STOP });
    expect(events.at(-1)?.event).toMatchObject({ $case: "usage", value: { completionTokens: 8 } });
    // Streamed, not buffered: the first token arrives well before the last (7 gaps of 30 ms).
    expect((arrivals.at(-1) ?? 0) - (arrivals[0] ?? 0)).toBeGreaterThan(150);
  });

  it("answers a repeated deterministic Chat from the broker's cache, unless the caller asks to bypass it", async () => {
    const request = userSays("the cache remembers butterflies", { sampling: { temperature: 0, stop: [] } });
    const first = await readChat(gateway().chat(request));
    expect(first.text).toBe("the cache remembers butterflies");
    const workerRequests = mesh.simulator.stats.requests;
    const cached = await readChat(gateway().chat(request));
    expect(cached.text).toBe(first.text);
    expect(mesh.simulator.stats.requests).toBe(workerRequests);
    const bypassed = await readChat(gateway().chat({ ...request, bypassCache: true }));
    expect(bypassed.text).toBe(first.text);
    expect(mesh.simulator.stats.requests).toBe(workerRequests + 1);
  });

  it("gives the caller the broker's NOT_FOUND for an unknown model, through two hops", async () => {
    const outcome = await readChat(gateway().chat(userSays("hi", { model: "no-such-model" })));
    expect(outcome.error).toEqual({ code: Status.NOT_FOUND, details: expect.stringContaining('model: "no-such-model" is not served here') });
  });

  it("refuses bad input at the door with INVALID_ARGUMENT naming the field", async () => {
    const badRole = await readChat(gateway().chat({ ...userSays("hi"), messages: [{ role: "wizard", content: "x", toolCalls: [], toolCallId: "", name: "" }] }));
    expect(badRole.error).toEqual({ code: Status.INVALID_ARGUMENT, details: expect.stringContaining("messages[0].role") });
    const noMessages = await readChat(gateway().chat({ ...userSays("hi"), messages: [] }));
    expect(noMessages.error).toEqual({ code: Status.INVALID_ARGUMENT, details: "messages: must not be empty" });
    const badSchema = await readChat(gateway().chat(userSays("hi", { tools: [{ name: "f", description: "", parametersJsonSchema: "{oops" }] })));
    expect(badSchema.error).toEqual({ code: Status.INVALID_ARGUMENT, details: "tools[0].parameters_json_schema: is not valid JSON" });
  });

  it("refuses a call without the shared secret", async () => {
    const anonymous = clients.create(InferenceServiceDefinition, channel);
    const outcome = await readChat(anonymous.chat(userSays("hi")));
    expect(outcome.error).toEqual({ code: Status.UNAUTHENTICATED, details: "missing x-internal-auth metadata" });
  });

  it("cancels the worker's generation when the caller cancels at the gateway", async () => {
    mesh.simulator.configure({ interTokenLatencyMs: 50 });
    const disconnected = mesh.simulator.nextDisconnect(5_000);
    const controller = new AbortController();
    let received = 0;
    const reading = (async () => {
      for await (const event of gateway().chat(userSays("a b c d e f g h i j k l m n o p"), { signal: controller.signal })) {
        if (event.event?.$case === "contentDelta" && ++received === 2) controller.abort();
      }
    })().catch((error: unknown) => error);
    expect(await disconnected).toBe("disconnected");
    expect(await reading).toMatchObject({ name: "AbortError" });
    expect(mesh.simulator.stats.activeStreams).toBe(0);
  });

  it("answers DEADLINE_EXCEEDED when the caller's deadline passes, and the worker is freed", async () => {
    mesh.simulator.configure({ timeToFirstTokenMs: 3_000 });
    const disconnected = mesh.simulator.nextDisconnect(5_000);
    const outcome = await readChat(gateway().chat(userSays("slow"), { deadline: new Date(Date.now() + 200) }));
    expect(outcome.error?.code).toBe(Status.DEADLINE_EXCEEDED);
    expect(await disconnected).toBe("disconnected");
  });

  it("honours a real gRPC deadline (grpc-timeout) sent by the caller: DEADLINE_EXCEEDED, and the worker is freed", async () => {
    mesh.simulator.configure({ timeToFirstTokenMs: 3_000 });
    const disconnected = mesh.simulator.nextDisconnect(5_000);
    // A plain grpc-js client, as Vlinders-API or grpcurl: the deadline travels as grpc-timeout.
    const raw = new grpc.Client(mesh.gatewayAddress, grpc.credentials.createInsecure());
    const rawMetadata = new grpc.Metadata();
    rawMetadata.set("x-internal-auth", meshSecret);
    try {
      const call = raw.makeServerStreamRequest(
        "/vlinders.v1.InferenceService/Chat",
        (request: ChatRequest) => Buffer.from(ChatRequest.encode(request).finish()),
        (bytes: Buffer) => ChatEvent.decode(bytes),
        userSays("slow to start"),
        rawMetadata,
        { deadline: Date.now() + 250 },
      );
      const status = await new Promise<grpc.StatusObject>((resolve) => {
        call.on("data", () => {});
        call.on("error", () => {});
        call.on("status", resolve);
      });
      expect(status.code).toBe(grpc.status.DEADLINE_EXCEEDED);
      expect(await disconnected).toBe("disconnected");
    } finally {
      raw.close();
    }
  });

  it("ends the caller's stream with the worker's mid-stream failure, keeping the text already sent", async () => {
    mesh.simulator.injectFaults({ midStreamErrorAfterTokens: 3 });
    const outcome = await readChat(gateway().chat(userSays("one two three four five")));
    expect(outcome.text).toBe("one two three");
    expect(outcome.error).toEqual({ code: Status.INTERNAL, details: expect.stringContaining("failed mid-stream") });
  });

  it("answers Complete, Embed and ListModels through the gateway", async () => {
    await expect(gateway().complete(userSays("whole answer"))).resolves.toMatchObject({ message: { content: "whole answer" } });
    const embedded = await gateway().embed({ model: "vlinders-sim-embed", inputs: ["x"], userId: "" });
    expect(embedded.embeddings[0]?.values).toHaveLength(64);
    const { models } = await gateway().listModels({});
    expect(models.map((model) => model.id)).toContain("vlinders-sim-chat");
  });

  it("carries one trace across the three services", async () => {
    spans.reset();
    await readChat(gateway().chat(userSays("traced")));
    const finished = spans.getFinishedSpans();
    const chatSpans = finished.filter((span) => span.name.endsWith("/Chat") || span.name.includes("StreamAgent"));
    const traceIds = new Set(chatSpans.map((span) => span.spanContext().traceId));
    // Server and client spans of gateway, orchestrator and broker: at least five, one trace.
    expect(chatSpans.length).toBeGreaterThanOrEqual(5);
    expect(traceIds.size).toBe(1);
  });
});

describe("the orchestrator's AgentService", () => {
  let mesh: InProcessMesh;
  let channel: Channel;

  beforeAll(async () => {
    mesh = await startInProcessMesh();
    channel = createChannel(mesh.orchestratorAddress);
  });

  afterAll(async () => {
    channel.close();
    await mesh.stop();
  });

  const request = (agentType: string, instruction: string) => agentRun(agentType, instruction);

  it("runs the chat agent: run started, the model's events, run finished with the answer", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    const events = [];
    for await (const event of agents.streamAgent(request("chat", "say this back"))) events.push(event);
    expect(events[0]?.event?.$case).toBe("runStarted");
    expect(events.at(-1)?.event).toMatchObject({ $case: "runFinished", value: { stopReason: "completed", response: "say this back", iterations: 1 } });
    expect(new Set(events.map((event) => event.runId)).size).toBe(1);
  });

  it("ends a streamed chat at the chat type's timeout (lowered by an override) with DEADLINE_EXCEEDED", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    mesh.simulator.configure({ interTokenLatencyMs: 100 });
    try {
      const events: unknown[] = [];
      const run = { ...request("chat", "one two three four five six seven eight nine ten"), overrides: { timeoutMs: 300, systemPrompt: "" } };
      const ended = (async () => {
        for await (const event of agents.streamAgent(run)) events.push(event);
      })().catch((error: unknown) => error);
      expect(await ended).toMatchObject({ code: Status.DEADLINE_EXCEEDED, details: "the chat reached its timeout of 300 ms (budgets.timeout_ms of agent type chat)" });
      expect(events.length).toBeGreaterThan(1);
      for (let waited = 0; mesh.simulator.stats.running > 0 && waited < 2_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(mesh.simulator.stats.running).toBe(0);
    } finally {
      mesh.simulator.configure({ interTokenLatencyMs: 2 });
    }
  });

  it("lists the agent types with the tools agents.yaml names while the tool-runner is down", async () => {
    // This mesh has no tool-runner at all.
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    const { agentTypes } = await agents.listAgentTypes({});
    expect(agentTypes.map((type) => type.name)).toEqual(["chat", "edit", "explore", "plan"]);
    expect(agentTypes.find((type) => type.name === "plan")?.tools).toEqual(["read_file", "list_files", "search_code", "web_search", "spawn_subagents"]);
    expect(agentTypes.find((type) => type.name === "edit")?.tools).toEqual(["*", "spawn_subagents"]);
  });

  it("answers INVALID_ARGUMENT for an unknown agent type or run id, and NOT_FOUND for a run it never had", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    const drain = async (agentType: string) => {
      for await (const _event of agents.streamAgent(request(agentType, "x"))) {
        // Reading to the end or to the error.
      }
    };
    await expect(drain("wizard")).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringContaining("agent_type") });
    await expect(agents.runAgent(request("wizard", "x"))).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT });
    await expect(agents.getAgent({ runId: "x" })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^run_id: /) });
    await expect(agents.getAgent({ runId: "00000000-0000-4000-8000-000000000000" })).rejects.toMatchObject({ code: Status.NOT_FOUND });
  });
});

describe("an agent run refused for lack of room", () => {
  let mesh: InProcessMesh;
  let channel: Channel;

  beforeAll(async () => {
    mesh = await startInProcessMesh({ orchestratorEnv: { MAX_CONCURRENT_RUNS: "1", MAX_QUEUED_RUNS: "0" }, simulator: { interTokenLatencyMs: 100 } });
    channel = createChannel(mesh.gatewayAddress);
  });

  afterAll(async () => {
    channel.close();
    await mesh.stop();
  });

  it("gives the caller RESOURCE_EXHAUSTED with a retry-after-ms trailer, through the gateway", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    const run = (instruction: string, onTrailer?: (trailer: Metadata) => void) =>
      agents.runAgent(agentRun("chat", instruction), onTrailer ? { onTrailer } : {});
    const first = run("one two three four five six seven eight");
    for (let waited = 0; mesh.simulator.stats.running === 0 && waited < 5_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
    let trailer: Metadata | undefined;
    await expect(run("no room for me", (received) => (trailer = received))).rejects.toMatchObject({ code: Status.RESOURCE_EXHAUSTED, details: expect.stringContaining("retry after") });
    expect(Number(trailer?.get("retry-after-ms"))).toBeGreaterThan(0);
    await expect(first).resolves.toMatchObject({ response: "one two three four five six seven eight" });
  });
});

describe("an orchestrator plugin module (ORCHESTRATOR_PLUGINS)", () => {
  let mesh: InProcessMesh;
  let channel: Channel;

  beforeAll(async () => {
    // One run at a time, so that a second one waits in the queue.
    mesh = await startInProcessMesh({
      orchestratorEnv: { ORCHESTRATOR_PLUGINS: join(__dirname, "../configs/plugins/example-plugin.cjs"), MAX_CONCURRENT_RUNS: "1", MAX_QUEUED_RUNS: "4" },
    });
    channel = createChannel(mesh.gatewayAddress);
  });

  afterAll(async () => {
    channel.close();
    await mesh.stop();
  });

  // Plugin tools get the run's workspace too (this one ignores it).
  const counterRun = (instruction: string) => agentRun("counter", instruction, { workspaceId: "notes" });

  it("runs the plugin's agent type with its in-process tool, through the gateway", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    const events = [];
    for await (const event of agents.streamAgent(counterRun('call word_count {"text":"one two three"}'))) events.push(event);
    const result = events.find((event) => event.event?.$case === "toolResult")?.event?.value;
    expect(result).toMatchObject({ toolName: "word_count", success: true, output: "3" });
    expect(events.at(-1)?.event).toMatchObject({ $case: "runFinished", value: { stopReason: "completed", iterations: 2 } });
  });

  it("stops a run by CancelAgent, and one whose caller hung up; GetAgent reports both cancelled", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    mesh.simulator.configure({ interTokenLatencyMs: 200 });
    try {
      const slow = "call word_count {\"text\":\"one two three\"} then answer at length";
      // CancelAgent by the id the run announced.
      let runId = "";
      const cancelled = (async () => {
        for await (const event of agents.streamAgent(counterRun(slow))) {
          if (event.event?.$case === "runStarted") {
            runId = event.runId;
            await agents.cancelAgent({ runId, reason: "" });
          }
          if (event.event?.$case === "runFinished") return event.event.value;
        }
        return undefined;
      })();
      await expect(cancelled).resolves.toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled" });
      await expect(agents.getAgent({ runId })).resolves.toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled" });

      // The caller hangs up mid-run: the run is cancelled as well, and the worker stops.
      const controller = new AbortController();
      let hungUpRunId = "";
      const hungUp = (async () => {
        for await (const event of agents.streamAgent(counterRun(slow), { signal: controller.signal })) {
          if (event.event?.$case === "runStarted") hungUpRunId = event.runId;
          if (event.event?.$case === "modelEvent") controller.abort();
        }
      })().catch((error: unknown) => error);
      expect(await hungUp).toMatchObject({ name: "AbortError" });
      let record = await agents.getAgent({ runId: hungUpRunId });
      for (let waited = 0; record.status === AgentStatus.AGENT_STATUS_RUNNING && waited < 5_000; waited += 50) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        record = await agents.getAgent({ runId: hungUpRunId });
      }
      expect(record).toMatchObject({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled" });
      for (let waited = 0; mesh.simulator.stats.running > 0 && waited < 2_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(mesh.simulator.stats.running).toBe(0);
    } finally {
      mesh.simulator.configure({ interTokenLatencyMs: 2 });
    }
  });

  it("tells a run that waits for a slot its id, reports it queued, and lets CancelAgent take it out of the queue", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    mesh.simulator.configure({ interTokenLatencyMs: 200 });
    const holder = new AbortController();
    try {
      // The one slot: a run that takes a while.
      const first = agents.streamAgent(counterRun("call word_count {\"text\":\"a b\"} then answer at length"), { signal: holder.signal })[Symbol.asyncIterator]();
      expect((await first.next()).value?.event?.$case).toBe("runStarted");
      const second = agents.streamAgent(counterRun("call word_count {\"text\":\"c d\"}"))[Symbol.asyncIterator]();
      const queued = (await second.next()).value;
      expect(queued?.event).toEqual({ $case: "runQueued", value: { agentType: "counter", queuedRuns: 1 } });
      await expect(agents.getAgent({ runId: queued!.runId })).resolves.toMatchObject({ status: AgentStatus.AGENT_STATUS_QUEUED, agentType: "counter" });
      await expect(agents.cancelAgent({ runId: queued!.runId, reason: "" })).resolves.toEqual({ status: AgentStatus.AGENT_STATUS_CANCELLED });
      await expect(second.next()).rejects.toMatchObject({ code: Status.CANCELLED });
    } finally {
      holder.abort();
      mesh.simulator.configure({ interTokenLatencyMs: 2 });
    }
  });

  it("traces an agent run as one trace: run, loop, each model call and tool call, and the broker's calls", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    spans.reset();
    let runId = "";
    for await (const event of agents.streamAgent(counterRun('call word_count {"text":"trace me"}'))) runId = event.runId;
    // Spans end as their calls do; some may end a moment after the run's last event.
    const runEnded = () => spans.getFinishedSpans().some((span) => span.name === "run_agent" && span.attributes.run_id === runId);
    for (let waited = 0; !runEnded() && waited < 2_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
    // Other tests' runs may end while this one runs: this run's spans are told apart by its run id.
    const finished = spans.getFinishedSpans();
    const ofRun = (name: string) => finished.filter((span) => span.name === name && span.attributes.run_id === runId);
    const [run] = ofRun("run_agent");
    expect(run?.attributes).toMatchObject({ agent_type: "counter" });
    const traceId = run!.spanContext().traceId;
    expect(ofRun("tool_calling_loop").map((span) => span.spanContext().traceId)).toEqual([traceId]);
    expect(ofRun("vllm_inference").map((span) => span.spanContext().traceId)).toEqual([traceId, traceId]);
    expect(ofRun("execute_tool word_count").map((span) => span.spanContext().traceId)).toEqual([traceId]);
    // The same trace holds the gateway's and the orchestrator's StreamAgent (server and client
    // sides) and the broker's two Chat calls.
    const inTrace = finished.filter((span) => span.spanContext().traceId === traceId);
    expect(inTrace.filter((span) => span.name.endsWith("AgentService/StreamAgent")).length).toBeGreaterThanOrEqual(3);
    expect(inTrace.filter((span) => span.name.endsWith("InferenceService/Chat")).length).toBeGreaterThanOrEqual(2);
  });

  it("lets the plugin's pre_tool_use hook deny a call", async () => {
    const agents = clients.create(AgentServiceDefinition, channel, { "*": { metadata } });
    const events = [];
    for await (const event of agents.streamAgent(counterRun('call word_count {"text":"cat .env"}'))) events.push(event);
    const result = events.find((event) => event.event?.$case === "toolResult")?.event?.value;
    expect(result).toMatchObject({ toolName: "word_count", success: false, error: expect.stringContaining(".env files hold secrets") });
  });
});

describe("a worker that cannot be reached", () => {
  let directory: string;
  let mesh: InProcessMesh;
  let channel: Channel;

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "vlinders-mesh-"));
    const modelsPath = join(directory, "models.yaml");
    // Port 9 (discard) on loopback: nothing listens there.
    await writeFile(modelsPath, "workers:\n  - id: gpu-gone\n    url: http://127.0.0.1:9\nmodels:\n  - id: coder\n    workers: [gpu-gone]\n");
    mesh = await startInProcessMesh({ brokerEnv: { VLLM_URLS: "", MODELS_CONFIG: modelsPath } });
    channel = createChannel(mesh.gatewayAddress);
  });

  afterAll(async () => {
    channel.close();
    await mesh.stop();
    await rm(directory, { recursive: true, force: true });
  });

  it("gives the caller UNAVAILABLE naming the worker", async () => {
    const gateway = clients.create(InferenceServiceDefinition, channel, { "*": { metadata } });
    const outcome = await readChat(gateway.chat(userSays("hello?", { model: "coder" })));
    expect(outcome.error).toEqual({ code: Status.UNAVAILABLE, details: expect.stringContaining("worker gpu-gone") });
  });
});
