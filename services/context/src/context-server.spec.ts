import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { defaultTestDatabaseUrl, openTestDatabase, type Database } from "@vlinders/database";
import { brokerConfigSchema, createInferenceBroker } from "@vlinders/inference-broker";
import { ContextServiceDefinition, type ChatMessage, type ToolCall } from "@vlinders/proto";
import { createInProcessRuntime, loadConfig, type ServiceHost, type ServiceRuntime } from "@vlinders/service-runtime";
import { VllmSimulator } from "@vlinders/vllm-simulator";
import { Redis } from "ioredis";
import { createChannel, createClient, Metadata, Status, type Channel, type Client } from "nice-grpc";
import { contextConfigSchema } from "./config";
import { createContextServer } from "./context-server";
import { maskText } from "./compaction/window-view";
import { estimateMessageTokens, modelFamilyOf } from "./tokens/token-estimator";

const internalSecret = "context-spec-secret-0123456789";
const databaseUrl = process.env.TEST_DATABASE_URL ?? defaultTestDatabaseUrl;
const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const model = "vlinders-sim-chat";
const family = modelFamilyOf(model);

const message = (role: string, content: string, extra: Partial<ChatMessage> = {}): ChatMessage => ({
  role,
  content,
  toolCalls: [],
  toolCallId: "",
  name: "",
  ...extra,
});
const toolCall = (id: string, name: string, args: object): ToolCall => ({ id, name, argumentsJson: JSON.stringify(args) });
const tokensOf = (messages: readonly ChatMessage[]) => messages.reduce((sum, each) => sum + estimateMessageTokens(family, each), 0);
const uniqueId = (label: string) => `${label}-${randomBytes(4).toString("hex")}`;

/** About `tokens` tokens of code-like text for the default family (3.3 characters per token). */
const codeText = (label: string, tokens: number) => {
  const line = `const ${label} = compute(${label});\n`;
  return line.repeat(Math.ceil((tokens * 3.3) / line.length));
};

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function rejection(promise: Promise<unknown>): Promise<{ code: Status; details: string }> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught as { code: Status; details: string },
  );
  if (!error) throw new Error("expected the call to fail");
  return { code: error.code, details: error.details };
}

interface Started {
  host: ServiceHost;
  runtime: ServiceRuntime;
  channel: Channel;
  client: Client<typeof ContextServiceDefinition>;
}

async function startContext(env: Record<string, string>): Promise<Started> {
  const runtime = createInProcessRuntime("context", { internalSecret });
  const host = await createContextServer(loadConfig(contextConfigSchema, { GRPC_PORT: "0", ...env }), runtime);
  const { grpcPort } = await host.listen({ host: "127.0.0.1", grpcPort: 0 });
  const channel = createChannel(`127.0.0.1:${grpcPort}`);
  const client = createClient(ContextServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": internalSecret }) } });
  return { host, runtime, channel, client };
}

async function stop(started: Started | undefined): Promise<void> {
  started?.channel.close();
  await started?.host.shutdown();
}

async function counterValue(runtime: ServiceRuntime, name: string, labels: Record<string, string>): Promise<number> {
  const metric = runtime.metricsRegistry.getSingleMetric(name);
  if (!metric) return 0;
  const { values } = await metric.get();
  return values.filter((value) => Object.entries(labels).every(([key, expected]) => value.labels[key] === expected)).reduce((sum, value) => sum + value.value, 0);
}

/**
 * The ContextService as a caller sees it: real servers on port 0 against the machine's PostgreSQL
 * (a schema of their own) and Redis (a key prefix of their own), summarizing through a real
 * inference-broker in front of the vLLM simulator. The simulator does not summarize: it echoes the
 * last user message, which here is the transcript to summarize, cut at max_tokens. That proves the
 * flow (prompt, call, cap, storage, window), not the quality of a summary.
 */
describe("context service", () => {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1 });
  const keyPrefix = `context-spec:${process.pid}:${randomBytes(4).toString("hex")}:`;
  let database: Database & { schema: string };
  let broker: ServiceHost;
  let primary: Started;
  let replica: Started;
  let redis: Redis;
  let contextEnv: Record<string, string>;

  beforeAll(async () => {
    const { url } = await simulator.listen(0);
    const brokerRuntime = createInProcessRuntime("inference-broker", { internalSecret });
    ({ host: broker } = await createInferenceBroker(loadConfig(brokerConfigSchema, { DATABASE_URL: databaseUrl, VLLM_URLS: url }), brokerRuntime));
    const { grpcPort: brokerPort } = await broker.listen({ host: "127.0.0.1", grpcPort: 0 });
    database = await openTestDatabase({ logger: brokerRuntime.logger, service: "context-spec" });
    contextEnv = {
      DATABASE_URL: databaseUrl,
      DATABASE_SCHEMA: database.schema,
      REDIS_URL: redisUrl,
      REDIS_KEY_PREFIX: keyPrefix,
      INFERENCE_BROKER_ADDRESS: `127.0.0.1:${brokerPort}`,
      SUMMARY_MAX_TOKENS: "60",
      CONTEXT_KEEP_LAST_MESSAGES: "4",
    };
    primary = await startContext(contextEnv);
    // A second replica on the same database and Redis, as in a deployment.
    replica = await startContext(contextEnv);
    redis = new Redis(redisUrl);
  }, 60_000);

  afterAll(async () => {
    await stop(primary);
    await stop(replica);
    await broker?.shutdown();
    await simulator.close();
    if (redis) {
      const keys = await redis.keys(`${keyPrefix}*`);
      if (keys.length > 0) await redis.del(...keys);
      redis.disconnect();
    }
    await database?.close();
  }, 60_000);

  it("appends and reads back a conversation, counting tokens per model family", async () => {
    const conversationId = uniqueId("round-trip");
    const first = [message("system", "You are a careful coding agent."), message("user", "Read src/index.ts and tell me what it exports.")];
    const appended = await primary.client.appendMessages({ conversationId, messages: first, model, budgetTokens: 0 });
    expect(appended).toEqual({ conversationId, messages: first, tokens: tokensOf(first), budgetTokens: 8_192, compactions: [] });

    const call = toolCall("call-1", "read_file", { path: "src/index.ts" });
    const second = [
      message("assistant", "", { toolCalls: [call] }),
      message("tool", "1\texport const answer = 42;", { toolCallId: "call-1", name: "read_file" }),
    ];
    await primary.client.appendMessages({ conversationId, messages: second, model: "", budgetTokens: 0 });
    const window = await primary.client.getContext({ conversationId, model: "", budgetTokens: 0 });
    expect(window.messages).toEqual([...first, ...second]);
    expect(window.tokens).toBe(tokensOf([...first, ...second]));
    expect(window.tokens).toBeGreaterThan(20);

    // A known family counts with its own figures and takes its context size as the budget.
    const qwen = await primary.client.appendMessages({ conversationId: uniqueId("qwen"), messages: first, model: "Qwen/Qwen2.5-Coder-7B-Instruct", budgetTokens: 0 });
    expect(qwen.budgetTokens).toBe(32_768);
    expect(qwen.tokens).toBe(first.reduce((sum, each) => sum + estimateMessageTokens(modelFamilyOf("qwen2.5"), each), 0));
    expect(qwen.tokens).not.toBe(appended.tokens);
  });

  describe("compaction", () => {
    const toolRound = (index: number, tokens: number): ChatMessage[] => [
      message("assistant", "", { toolCalls: [toolCall(`call-${index}`, "read_file", { path: `src/file-${index}.ts` })] }),
      message("tool", codeText(`value${index}`, tokens), { toolCallId: `call-${index}` }),
    ];
    const turns = (count: number, from = 0): ChatMessage[] =>
      Array.from({ length: count }, (_, offset) => {
        const index = from + offset;
        return message(index % 2 === 0 ? "user" : "assistant", `turn ${index}: the parser module drops the error position for case ${index}, fix it`);
      });
    let maskedConversation: string;
    let droppedConversation: string;
    let maskedOriginals: ChatMessage[];
    let droppedOriginals: ChatMessage[];

    it("masks old tool outputs first once a window passes 75 % of its budget", async () => {
      maskedConversation = uniqueId("mask");
      const start = [message("system", "You are a careful coding agent."), message("user", "Look at the three files."), ...toolRound(1, 240), ...toolRound(2, 240)];
      const below = await primary.client.appendMessages({ conversationId: maskedConversation, messages: start, model, budgetTokens: 1_000 });
      expect(below.compactions).toEqual([]);
      expect(below.tokens).toBeLessThanOrEqual(750);

      const third = toolRound(3, 240);
      maskedOriginals = [...start, ...third];
      const window = await primary.client.appendMessages({ conversationId: maskedConversation, messages: third, model: "", budgetTokens: 0 });
      expect(tokensOf(maskedOriginals)).toBeGreaterThan(750);
      expect(window.compactions).toEqual([{ stage: "mask_tool_output", tokensBefore: tokensOf(maskedOriginals), tokensAfter: window.tokens }]);
      expect(window.tokens).toBeLessThanOrEqual(750);
      // The oldest output is masked; the two most recent stay whole.
      const toolMessages = window.messages.filter((each) => each.role === "tool");
      const firstOutput = maskedOriginals[3];
      expect(toolMessages[0]).toEqual({ ...firstOutput, content: maskText("read_file", estimateMessageTokens(family, firstOutput as ChatMessage)) });
      expect(toolMessages.slice(1)).toEqual([maskedOriginals[5], maskedOriginals[7]]);

      // The compaction is state: the next read shows the same window without compacting again.
      const again = await replica.client.getContext({ conversationId: maskedConversation, model: "", budgetTokens: 0 });
      expect(again).toEqual({ ...window, compactions: [] });
    });

    it("summarizes the oldest turns through the broker when masking is not enough", async () => {
      const conversationId = uniqueId("summary");
      const requestsBefore = simulator.stats.requests;
      const messages = [message("system", "You are a careful coding agent."), ...turns(30)];
      expect(tokensOf(messages)).toBeGreaterThan(750);
      const window = await primary.client.appendMessages({ conversationId, messages, model, budgetTokens: 1_000 });

      expect(simulator.stats.requests).toBe(requestsBefore + 1);
      expect(window.compactions).toEqual([{ stage: "summarize", tokensBefore: tokensOf(messages), tokensAfter: window.tokens }]);
      expect(window.tokens).toBeLessThan(750);
      expect(window.messages[0]).toEqual(messages[0]);
      const summary = window.messages[1] as ChatMessage;
      expect(summary.role).toBe("system");
      // The simulator echoes the transcript it was given: the oldest turn comes first.
      expect(summary.content).toMatch(/^Summary of the 26 earlier messages of this conversation:\nuser: turn 0: the parser module/);
      expect(window.messages.slice(2)).toEqual(messages.slice(-4));
    });

    it("drops the oldest turns when even the summary leaves the window over, keeping the summary", async () => {
      droppedConversation = uniqueId("drop");
      const big = (index: number) => message(index % 2 === 0 ? "user" : "assistant", codeText(`big${index}`, 190));
      droppedOriginals = [message("system", "You are a careful coding agent."), ...turns(8), big(0), big(1), big(2), big(3)];
      const window = await primary.client.appendMessages({ conversationId: droppedConversation, messages: droppedOriginals, model, budgetTokens: 1_000 });

      expect(window.compactions.map((compaction) => compaction.stage)).toEqual(["summarize", "drop_oldest"]);
      const [summarized, dropped] = window.compactions;
      expect(summarized?.tokensBefore).toBe(tokensOf(droppedOriginals));
      expect(dropped?.tokensBefore).toBe(summarized?.tokensAfter);
      expect(dropped?.tokensAfter).toBe(window.tokens);
      expect(summarized?.tokensAfter).toBeGreaterThan(750);
      expect(window.tokens).toBeLessThanOrEqual(750);
      expect(window.messages[0]).toEqual(droppedOriginals[0]);
      expect(window.messages[1]?.content).toMatch(/^Summary of the 8 earlier messages/);
      expect(window.messages.slice(2)).toEqual(droppedOriginals.slice(-3));
    });

    it("keeps every original: a bigger budget shows them again", async () => {
      const unmasked = await primary.client.getContext({ conversationId: maskedConversation, model: "", budgetTokens: 100_000 });
      expect(unmasked).toEqual({ conversationId: maskedConversation, messages: maskedOriginals, tokens: tokensOf(maskedOriginals), budgetTokens: 100_000, compactions: [] });
      const whole = await replica.client.getContext({ conversationId: droppedConversation, model: "", budgetTokens: 100_000 });
      expect(whole.messages).toEqual(droppedOriginals);
      expect(whole.compactions).toEqual([]);
    });

    it("falls back to dropping old turns when the broker is unreachable, without failing the append (PGlite, Redis down)", async () => {
      // No DATABASE_URL: the embedded PGlite. Redis and the broker at ports nobody listens on.
      const isolated = await startContext({
        REDIS_URL: `redis://127.0.0.1:${await closedPort()}`,
        INFERENCE_BROKER_ADDRESS: `127.0.0.1:${await closedPort()}`,
        SUMMARY_DEADLINE_MS: "3000",
        CONTEXT_KEEP_LAST_MESSAGES: "4",
      });
      try {
        const conversationId = uniqueId("no-broker");
        const messages = [message("system", "You are a careful coding agent."), ...turns(30)];
        const window = await isolated.client.appendMessages({ conversationId, messages, model, budgetTokens: 1_000 });
        expect(window.compactions.map((compaction) => compaction.stage)).toEqual(["drop_oldest"]);
        expect(window.tokens).toBeLessThanOrEqual(750);
        expect(window.messages[0]).toEqual(messages[0]);
        expect(window.messages.at(-1)).toEqual(messages.at(-1));
        expect(await counterValue(isolated.runtime, "context_summarizations_total", { outcome: "failed" })).toBe(1);
        // Redis being down only costs the cache.
        const again = await isolated.client.getContext({ conversationId, model: "", budgetTokens: 0 });
        expect(again).toEqual({ ...window, compactions: [] });
      } finally {
        await stop(isolated);
      }
    }, 60_000);
  });

  it("keeps appends to one conversation in order under concurrency, across replicas", async () => {
    const conversationId = uniqueId("concurrent");
    await primary.client.appendMessages({ conversationId, messages: [message("system", "Count.")], model, budgetTokens: 100_000 });
    const count = 24;
    const windows = await Promise.all(
      Array.from({ length: count }, (_, index) =>
        (index % 2 === 0 ? primary : replica).client.appendMessages({
          conversationId,
          messages: [message("user", `question ${index}`), message("assistant", `answer ${index}`)],
          model: "",
          budgetTokens: 0,
        }),
      ),
    );
    for (const window of windows) {
      const [question, answer] = window.messages.slice(-2);
      expect(answer?.content).toBe(question?.content.replace("question", "answer"));
    }
    const final = await primary.client.getContext({ conversationId, model: "", budgetTokens: 0 });
    expect(final.messages).toHaveLength(1 + 2 * count);
    const rest = final.messages.slice(1);
    for (let index = 0; index < rest.length; index += 2) {
      expect(rest[index]?.role).toBe("user");
      expect(rest[index + 1]?.content).toBe(rest[index]?.content.replace("question", "answer"));
    }
    expect(new Set(rest.map((each) => each.content)).size).toBe(2 * count);
  });

  it("serves hot windows from Redis and never a stale one after an append", async () => {
    const conversationId = uniqueId("cache");
    const lookups = (result: string) => counterValue(primary.runtime, "context_window_cache_lookups_total", { result });
    await primary.client.appendMessages({ conversationId, messages: [message("system", "Be brief."), message("user", "one")], model, budgetTokens: 0 });
    const key = `${keyPrefix}context:window:${conversationId}`;
    expect(await redis.get(key)).toMatch(/^\d+\|\{/);

    const hitsBefore = await lookups("hit");
    const cached = await primary.client.getContext({ conversationId, model: "", budgetTokens: 0 });
    expect(await lookups("hit")).toBe(hitsBefore + 1);
    expect(cached.messages.map((each) => each.content)).toEqual(["Be brief.", "one"]);

    // An append through the other replica invalidates the entry both share.
    await replica.client.appendMessages({ conversationId, messages: [message("assistant", "two")], model: "", budgetTokens: 0 });
    const fresh = await primary.client.getContext({ conversationId, model: "", budgetTokens: 0 });
    expect(fresh.messages.map((each) => each.content)).toEqual(["Be brief.", "one", "two"]);
    expect(fresh.tokens).toBe(cached.tokens + estimateMessageTokens(family, message("assistant", "two")));
  });

  it("forgets a deleted conversation, in the cache too", async () => {
    const conversationId = uniqueId("delete");
    await primary.client.appendMessages({ conversationId, messages: [message("user", "hello")], model, budgetTokens: 0 });
    await primary.client.getContext({ conversationId, model: "", budgetTokens: 0 });
    expect(await replica.client.deleteConversation({ conversationId })).toEqual({ deleted: true });
    const gone = await rejection(primary.client.getContext({ conversationId, model: "", budgetTokens: 0 }));
    expect(gone).toEqual({ code: Status.NOT_FOUND, details: `conversation_id: no conversation "${conversationId}"` });
    expect(await primary.client.deleteConversation({ conversationId })).toEqual({ deleted: false });
  });

  it("remembers facts per scope and recalls them by keyword overlap", async () => {
    const user = `user:${uniqueId("alice")}`;
    const workspace = `workspace:${uniqueId("repo")}`;
    const tabs = await primary.client.remember({ scope: user, text: "Prefers tabs over spaces in TypeScript files." });
    expect(tabs).toEqual({ id: expect.any(String), scope: user, text: "Prefers tabs over spaces in TypeScript files." });
    const tests = await primary.client.remember({ scope: user, text: "Runs the tests with jest before every commit." });
    await primary.client.remember({ scope: user, text: "Lives in Amsterdam." });
    await primary.client.remember({ scope: workspace, text: "TypeScript strict mode is on; tabs are forbidden by the linter." });

    const recalled = await replica.client.recall({ scope: user, query: "which indentation in TypeScript: tabs or spaces?", limit: 0 });
    expect(recalled.memories.map((memory) => memory.id)).toEqual([tabs.id]);
    const prefix = await primary.client.recall({ scope: user, query: "test commit typescript", limit: 1 });
    expect(prefix.memories.map((memory) => memory.id)).toEqual([tests.id]);
    const recent = await primary.client.recall({ scope: user, query: "", limit: 2 });
    expect(recent.memories.map((memory) => memory.text)).toEqual(["Lives in Amsterdam.", "Runs the tests with jest before every commit."]);
    expect((await primary.client.recall({ scope: workspace, query: "spaces", limit: 5 })).memories).toEqual([]);
  });

  it("refuses bad input with INVALID_ARGUMENT naming the field", async () => {
    const append = (request: Partial<Parameters<typeof primary.client.appendMessages>[0]>) =>
      rejection(primary.client.appendMessages({ conversationId: uniqueId("bad"), messages: [message("user", "hi")], model, budgetTokens: 0, ...request }));
    expect(await append({ conversationId: "" })).toEqual({ code: Status.INVALID_ARGUMENT, details: "conversation_id: is required" });
    expect(await rejection(primary.client.getContext({ conversationId: "", model: "", budgetTokens: 0 }))).toEqual({
      code: Status.INVALID_ARGUMENT,
      details: "conversation_id: is required",
    });
    expect(await rejection(primary.client.deleteConversation({ conversationId: "" }))).toMatchObject({ code: Status.INVALID_ARGUMENT });
    expect(await append({ messages: [] })).toEqual({ code: Status.INVALID_ARGUMENT, details: "messages: must not be empty" });
    expect(await append({ messages: [message("robot", "beep")] })).toEqual({
      code: Status.INVALID_ARGUMENT,
      details: 'messages[0].role: must be one of system, user, assistant, tool (got "robot")',
    });
    const tooSmall = await append({ messages: [message("system", "You are a careful coding agent."), message("user", codeText("x", 100))], budgetTokens: 50 });
    expect(tooSmall.code).toBe(Status.INVALID_ARGUMENT);
    expect(tooSmall.details).toMatch(/^budget_tokens: 50 tokens cannot hold the system messages and the last message, which take \d+ tokens$/);

    // A refused append stores nothing; a too small budget at GetContext changes nothing either.
    const conversationId = uniqueId("kept");
    await primary.client.appendMessages({ conversationId, messages: [message("system", "Be brief."), message("user", codeText("y", 100))], model, budgetTokens: 0 });
    expect(await rejection(primary.client.getContext({ conversationId, model: "", budgetTokens: 10 }))).toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: expect.stringMatching(/^budget_tokens: /),
    });
    expect((await primary.client.getContext({ conversationId, model: "", budgetTokens: 0 })).budgetTokens).toBe(8_192);

    expect(await rejection(primary.client.remember({ scope: "team:x", text: "fact" }))).toEqual({
      code: Status.INVALID_ARGUMENT,
      details: expect.stringMatching(/^scope: must be "user:<id>" or "workspace:<id>"/),
    });
    expect(await rejection(primary.client.remember({ scope: "user:alice", text: "  " }))).toEqual({ code: Status.INVALID_ARGUMENT, details: "text: is required" });
    expect(await rejection(primary.client.recall({ scope: "", query: "x", limit: 1 }))).toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^scope: /) });
    expect(await rejection(primary.client.recall({ scope: "user:alice", query: "x", limit: 1_000 }))).toEqual({
      code: Status.INVALID_ARGUMENT,
      details: "limit: must be at most 100 (got 1000)",
    });
  });
});

