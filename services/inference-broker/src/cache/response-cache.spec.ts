import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { FinishReason, type ChatEvent } from "@vlinders/proto";
import { createLogger, type Logger } from "@vlinders/service-runtime";
import { isAbortError } from "abort-controller-x";
import { createRedisConnection, type RedisConnection } from "@vlinders/redis";
import { encodeChatEvents } from "./chat-event-codec";
import {
  createInProcessResponseCache,
  createRedisResponseCache,
  isCacheableResponse,
  type ResponseCache,
} from "./response-cache";

const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
/** Every key this file writes starts with this, so that runs never meet and cleanup finds them all. */
const prefix = `test:response-cache:${process.pid}:${Date.now()}:`;
const model = "qwen-coder";

const content = (value: string): ChatEvent => ({ event: { $case: "contentDelta", value }, model });
const finish = (value: FinishReason): ChatEvent => ({ event: { $case: "finishReason", value }, model });
const usage = (completionTokens = 3): ChatEvent => ({
  event: { $case: "usage", value: { promptTokens: 9, completionTokens, totalTokens: 9 + completionTokens, cachedPromptTokens: 0 } },
  model,
});

/** A finished answer, as the broker streams it. */
function answer(text = "Hello from the cache"): ChatEvent[] {
  return [...text.split(/(?= )/).map(content), finish(FinishReason.FINISH_REASON_STOP), usage()];
}

function capturingLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({
    service: "test",
    level: "debug",
    destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  });
  return { logger, lines };
}

const live = (): AbortSignal => new AbortController().signal;

async function closedPort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

afterAll(async () => {
  const connection = createRedisConnection(redisUrl, { logger: capturingLogger().logger, name: "test-cache-cleanup" });
  await connection.ready(5000);
  const keys = await connection.redis.keys(`${prefix}*`);
  if (keys.length > 0) await connection.redis.del(...keys);
  await connection.close();
});

describe("isCacheableResponse", () => {
  it.each<[string, ChatEvent[], boolean]>([
    ["a finished answer with usage", answer(), true],
    ["a finished answer without usage", [content("hi"), finish(FinishReason.FINISH_REASON_STOP)], true],
    ["an answer cut at max_tokens", [content("hi"), finish(FinishReason.FINISH_REASON_LENGTH), usage()], true],
    ["tool calls", [{ event: { $case: "toolCallDelta", value: { index: 0, id: "c", name: "f", argumentsJsonDelta: "{}" } }, model }, finish(FinishReason.FINISH_REASON_TOOL_CALLS)], true],
    ["a stream cut short (error or cancel: no finish)", [content("hel"), content("lo")], false],
    ["nothing", [], false],
    ["an answer the worker aborted", [content("hi"), finish(FinishReason.FINISH_REASON_ABORT), usage()], false],
    ["an unspecified finish reason", [content("hi"), finish(FinishReason.FINISH_REASON_UNSPECIFIED)], false],
    ["an unknown finish reason", [content("hi"), finish(FinishReason.UNRECOGNIZED)], false],
    ["two finish events", [finish(FinishReason.FINISH_REASON_STOP), finish(FinishReason.FINISH_REASON_STOP)], false],
    ["content after the finish", [finish(FinishReason.FINISH_REASON_STOP), content("more")], false],
    ["usage before the finish", [usage(), finish(FinishReason.FINISH_REASON_STOP)], false],
    ["two usage events", [finish(FinishReason.FINISH_REASON_STOP), usage(), usage()], false],
    ["an empty event", [{ event: undefined, model }, finish(FinishReason.FINISH_REASON_STOP)], false],
  ])("%s -> %p", (_, events, cacheable) => {
    expect(isCacheableResponse(events)).toBe(cacheable);
  });
});

/** Rules both implementations follow, checked on each. */
describe.each<[string, () => Promise<{ cache: ResponseCache; done(): Promise<void> }>]>([
  [
    "Redis",
    async () => {
      const connection = createRedisConnection(redisUrl, { logger: capturingLogger().logger, name: "test-cache" });
      await connection.ready(5000);
      const cache = createRedisResponseCache({ redis: connection.redis, logger: capturingLogger().logger, keyPrefix: prefix });
      return { cache, done: async () => { await cache.close(); await connection.close(); } };
    },
  ],
  [
    "in process",
    async () => {
      const cache = createInProcessResponseCache();
      return { cache, done: () => cache.close() };
    },
  ],
])("response cache (%s)", (_, make) => {
  let cache: ResponseCache;
  let done: () => Promise<void>;
  beforeEach(async () => ({ cache, done } = await make()));
  afterEach(() => done());

  it("gives back a stored answer event for event, and a miss for an unknown key", async () => {
    const events = answer();
    await cache.set("inference:roundtrip", events);
    expect(await cache.get("inference:roundtrip", live())).toEqual(events);
    expect(await cache.get("inference:never-stored", live())).toBeUndefined();
  });

  it("replaces an entry stored again under the same key", async () => {
    await cache.set("inference:replaced", answer("first"));
    await cache.set("inference:replaced", answer("second"));
    expect(await cache.get("inference:replaced", live())).toEqual(answer("second"));
  });

  it.each<[string, ChatEvent[]]>([
    ["a stream cut short by an error or a cancel", [content("Hello"), content(" fro")]],
    ["an answer the worker aborted", [content("Hello"), finish(FinishReason.FINISH_REASON_ABORT), usage()]],
    ["an answer without a finish reason", [content("Hello"), finish(FinishReason.FINISH_REASON_UNSPECIFIED), usage()]],
  ])("never stores %s", async (name, events) => {
    const key = `inference:incomplete:${name}`;
    await cache.set(key, events);
    expect(await cache.get(key, live())).toBeUndefined();
  });

  it("does not store the answer of a call that was cancelled", async () => {
    const controller = new AbortController();
    controller.abort();
    await cache.set("inference:cancelled", answer(), controller.signal);
    expect(await cache.get("inference:cancelled", live())).toBeUndefined();
  });

  it("rejects a read with an AbortError once the call is cancelled", async () => {
    await cache.set("inference:abort-read", answer());
    const controller = new AbortController();
    controller.abort();
    const error: unknown = await cache.get("inference:abort-read", controller.signal).catch((e: unknown) => e);
    expect(isAbortError(error)).toBe(true);
  });

  it("hands every reader its own events", async () => {
    await cache.set("inference:isolated", answer());
    const first = await cache.get("inference:isolated", live());
    first?.splice(0, first.length);
    expect(await cache.get("inference:isolated", live())).toEqual(answer());
  });
});

describe("createRedisResponseCache", () => {
  let connection: RedisConnection;
  beforeAll(async () => {
    connection = createRedisConnection(redisUrl, { logger: capturingLogger().logger, name: "test-cache-inspect" });
    expect(await connection.ready(5000)).toBe(true);
  });
  afterAll(() => connection.close());

  it("stores each answer as one compact value that expires after the TTL (3600 s by default)", async () => {
    const cache = createRedisResponseCache({ redis: connection.redis, logger: capturingLogger().logger, keyPrefix: prefix });
    const events = answer();
    await cache.set("inference:ttl-default", events);
    const ttl = await connection.redis.pttl(`${prefix}inference:ttl-default`);
    expect(ttl).toBeGreaterThan(3_590_000);
    expect(ttl).toBeLessThanOrEqual(3_600_000);
    const stored = await connection.redis.getBuffer(`${prefix}inference:ttl-default`);
    expect(stored?.equals(Buffer.from(encodeChatEvents(events)))).toBe(true);
  });

  it("takes another TTL from its options", async () => {
    const cache = createRedisResponseCache({ redis: connection.redis, logger: capturingLogger().logger, keyPrefix: prefix, ttlSeconds: 120 });
    await cache.set("inference:ttl-120", answer());
    const ttl = await connection.redis.pttl(`${prefix}inference:ttl-120`);
    expect(ttl).toBeGreaterThan(110_000);
    expect(ttl).toBeLessThanOrEqual(120_000);
  });

  it("does not store an answer larger than maxValueBytes, and stores one that fits", async () => {
    const { logger, lines } = capturingLogger();
    const small = answer("short");
    const cache = createRedisResponseCache({ redis: connection.redis, logger, keyPrefix: prefix, maxValueBytes: encodeChatEvents(small).length });
    await cache.set("inference:oversized", answer("a long answer ".repeat(20)));
    await cache.set("inference:fits", small);
    expect(await connection.redis.exists(`${prefix}inference:oversized`)).toBe(0);
    expect(await cache.get("inference:oversized", live())).toBeUndefined();
    expect(await cache.get("inference:fits", live())).toEqual(small);
    expect(lines).toContainEqual(expect.objectContaining({ level: "debug", msg: "response cache: response too large to cache" }));
  });

  it("treats an entry it cannot read as a miss and says so", async () => {
    const { logger, lines } = capturingLogger();
    const cache = createRedisResponseCache({ redis: connection.redis, logger, keyPrefix: prefix });
    await connection.redis.set(`${prefix}inference:garbage`, "not protobuf", "EX", 60);
    expect(await cache.get("inference:garbage", live())).toBeUndefined();
    expect(lines).toContainEqual(expect.objectContaining({ level: "warn", msg: "response cache: unreadable entry ignored" }));
  });

  it("answers a miss at once and drops writes while Redis is unreachable, logging one warning", async () => {
    const { logger, lines } = capturingLogger();
    const down = createRedisConnection(`redis://127.0.0.1:${await closedPort()}`, { logger: capturingLogger().logger, name: "test-cache-down" });
    try {
      const cache = createRedisResponseCache({ redis: down.redis, logger, keyPrefix: prefix });
      const started = Date.now();
      for (let i = 0; i < 5; i += 1) {
        expect(await cache.get(`inference:down-${i}`, live())).toBeUndefined();
        await expect(cache.set(`inference:down-${i}`, answer())).resolves.toBeUndefined();
      }
      expect(Date.now() - started).toBeLessThan(1000);
      await cache.close();
      const warnings = lines.filter((line) => line.level === "warn");
      expect(warnings).toEqual([expect.objectContaining({ msg: "response cache: Redis failed; going on without the cache", operation: "get", suppressed: 0 })]);
    } finally {
      await down.close();
    }
  });

  it("close() waits for the writes in progress", async () => {
    const cache = createRedisResponseCache({ redis: connection.redis, logger: capturingLogger().logger, keyPrefix: prefix });
    void cache.set("inference:left-running", answer());
    await cache.close();
    expect(await connection.redis.exists(`${prefix}inference:left-running`)).toBe(1);
  });
});

describe("createInProcessResponseCache", () => {
  it("evicts the least recently used entry beyond maxEntries", async () => {
    const cache = createInProcessResponseCache({ maxEntries: 2 });
    await cache.set("a", answer("a"));
    await cache.set("b", answer("b"));
    expect(await cache.get("a", live())).toEqual(answer("a")); // a is now more recent than b
    await cache.set("c", answer("c"));
    expect(await cache.get("b", live())).toBeUndefined();
    expect(await cache.get("a", live())).toEqual(answer("a"));
    expect(await cache.get("c", live())).toEqual(answer("c"));
  });

  it("evicts least recently used entries beyond maxBytes, counting a replaced entry once", async () => {
    const size = encodeChatEvents(answer("x")).length; // every one-letter answer has this size
    const cache = createInProcessResponseCache({ maxBytes: size * 2 + size / 2 });
    await cache.set("a", answer("a"));
    await cache.set("a", answer("b")); // replaced, not added
    await cache.set("b", answer("b"));
    expect(await cache.get("a", live())).toEqual(answer("b"));
    await cache.set("c", answer("c"));
    expect(await cache.get("b", live())).toBeUndefined();
    expect(await cache.get("a", live())).toEqual(answer("b"));
    expect(await cache.get("c", live())).toEqual(answer("c"));
  });

  it("does not store an answer larger than maxValueBytes, and evicts nothing for it", async () => {
    const size = encodeChatEvents(answer("x")).length;
    const cache = createInProcessResponseCache({ maxEntries: 1, maxValueBytes: size });
    await cache.set("small", answer("x"));
    await cache.set("large", answer("a much longer answer"));
    expect(await cache.get("large", live())).toBeUndefined();
    expect(await cache.get("small", live())).toEqual(answer("x"));
  });

  it("forgets an entry once its TTL has passed", async () => {
    let now = 1_000_000;
    const cache = createInProcessResponseCache({ ttlSeconds: 10, now: () => now });
    await cache.set("k", answer());
    now += 9_999;
    expect(await cache.get("k", live())).toEqual(answer());
    now += 1;
    expect(await cache.get("k", live())).toBeUndefined();
  });

  it("refuses options that would disable it by accident", () => {
    expect(() => createInProcessResponseCache({ maxEntries: 0 })).toThrow("response cache: maxEntries must be a positive integer (got 0)");
    expect(() => createInProcessResponseCache({ ttlSeconds: 1.5 })).toThrow(RangeError);
  });
});
