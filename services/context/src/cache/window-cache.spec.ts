import { randomBytes } from "node:crypto";
import { createInProcessRuntime } from "@vlinders/service-runtime";
import { Redis } from "ioredis";
import { createInProcessWindowCache, createRedisWindowCache, windowCacheKey, type CachedWindow, type WindowCache } from "./window-cache";

const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const signal = new AbortController().signal;

const windowAt = (revision: number, content: string): CachedWindow => ({
  revision,
  model: "vlinders-sim-chat",
  budgetTokens: 1_000,
  messages: [{ role: "user", content, toolCalls: [], toolCallId: "", name: "" }],
  tokens: 12,
});

/** The same behaviour from both stores: entries ordered by revision, invalidations that stale writes cannot undo. */
function behavesAsAWindowCache(make: () => WindowCache): void {
  it("returns what was put, and a miss for an unknown conversation", async () => {
    const cache = make();
    await cache.put("a", windowAt(5, "hello"));
    expect(await cache.get("a", signal)).toEqual(windowAt(5, "hello"));
    expect(await cache.get("b", signal)).toBeUndefined();
  });

  it("refuses a window older than an invalidation or a newer entry, and accepts a newer one", async () => {
    const cache = make();
    await cache.put("c", windowAt(5, "old"));
    await cache.invalidate("c", 7);
    expect(await cache.get("c", signal)).toBeUndefined();
    // A reader that loaded revision 5 before the append finishes late: refused.
    await cache.put("c", windowAt(5, "stale"));
    expect(await cache.get("c", signal)).toBeUndefined();
    await cache.put("c", windowAt(7, "fresh"));
    expect(await cache.get("c", signal)).toEqual(windowAt(7, "fresh"));
    await cache.put("c", windowAt(6, "stale again"));
    expect(await cache.get("c", signal)).toEqual(windowAt(7, "fresh"));
  });
}

describe("window cache in Redis", () => {
  const redis = new Redis(redisUrl, { lazyConnect: true });
  const keyPrefix = `window-cache-spec:${process.pid}:${randomBytes(4).toString("hex")}:`;
  const logger = createInProcessRuntime("context").logger;

  beforeAll(async () => {
    await redis.connect();
  });

  afterAll(async () => {
    const keys = await redis.keys(`${keyPrefix}*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  });

  behavesAsAWindowCache(() => createRedisWindowCache({ redis, keyPrefix, ttlSeconds: 30, logger }));

  it("keeps entries under context:window:{conversation_id} with the TTL", async () => {
    const cache = createRedisWindowCache({ redis, keyPrefix, ttlSeconds: 30, logger });
    await cache.put("ttl", windowAt(3, "x"));
    const key = windowCacheKey(keyPrefix, "ttl");
    expect(key).toBe(`${keyPrefix}context:window:ttl`);
    expect(await redis.ttl(key)).toBeGreaterThan(25);
  });

  it("answers a miss instead of failing when Redis is gone", async () => {
    const broken = new Redis("redis://127.0.0.1:1", { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 });
    const cache = createRedisWindowCache({ redis: broken, keyPrefix, ttlSeconds: 30, logger });
    await cache.put("gone", windowAt(1, "x"));
    await cache.invalidate("gone", 2);
    expect(await cache.get("gone", signal)).toBeUndefined();
    broken.disconnect();
  });
});

describe("window cache in process", () => {
  behavesAsAWindowCache(() => createInProcessWindowCache({ maxEntries: 10, ttlSeconds: 30 }));

  it("forgets the least recently used beyond its size, and expired entries", async () => {
    let now = 0;
    const cache = createInProcessWindowCache({ maxEntries: 2, ttlSeconds: 1, now: () => now });
    await cache.put("a", windowAt(1, "a"));
    await cache.put("b", windowAt(1, "b"));
    await cache.get("a", signal);
    await cache.put("c", windowAt(1, "c"));
    expect(await cache.get("b", signal)).toBeUndefined();
    expect(await cache.get("a", signal)).toBeDefined();
    now = 1_001;
    expect(await cache.get("a", signal)).toBeUndefined();
  });
});
