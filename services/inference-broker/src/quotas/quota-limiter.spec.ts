import { randomUUID } from "node:crypto";
import { createLogger } from "@vlinders/service-runtime";
import { isAbortError } from "abort-controller-x";
import { createRedisConnection, type RedisConnection } from "@vlinders/redis";
import {
  createInProcessQuotaLimiter,
  createRedisQuotaLimiter,
  type QuotaDecision,
  type QuotaKey,
  type QuotaLimiter,
  type QuotaWindowOptions,
} from "./quota-limiter";

const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
/** Every key this file writes starts with this, so that runs never meet and cleanup finds them all. */
const prefix = `test:quota-limiter:${process.pid}:${Date.now()}:`;
const silent = createLogger({ service: "test", level: "silent" });
const live = (): AbortSignal => new AbortController().signal;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
/** A quota key no other test uses. */
const unique = (name: string): string => `${name}:${randomUUID()}`;

async function acquireTimes(limiter: QuotaLimiter, times: number, keys: QuotaKey[], tokens = 0): Promise<QuotaDecision[]> {
  const decisions: QuotaDecision[] = [];
  for (let i = 0; i < times; i += 1) decisions.push(await limiter.acquire(keys, tokens, live()));
  return decisions;
}

let connection: RedisConnection;
beforeAll(async () => {
  connection = createRedisConnection(redisUrl, { logger: silent, name: "test-quotas" });
  expect(await connection.ready(5000)).toBe(true);
});
afterAll(async () => {
  const keys = await connection.redis.keys(`${prefix}*`);
  if (keys.length > 0) await connection.redis.del(...keys);
  await connection.close();
});

/** The rules both limiters follow, checked on each against the real clock. */
describe.each<[string, (options?: QuotaWindowOptions) => QuotaLimiter]>([
  ["Redis", (options) => createRedisQuotaLimiter({ redis: connection.redis, logger: silent, keyPrefix: prefix, ...options })],
  ["in process", (options) => createInProcessQuotaLimiter(options)],
])("quota limiter (%s)", (_, make) => {
  const limiters: QuotaLimiter[] = [];
  const limiter = (options?: QuotaWindowOptions): QuotaLimiter => {
    const made = make(options);
    limiters.push(made);
    return made;
  };
  afterEach(async () => {
    await Promise.all(limiters.splice(0).map((made) => made.close()));
  });

  it("admits requests up to the rpm limit, then refuses with a retry hint within the minute", async () => {
    const quotas = limiter();
    const key = unique("provider:openai");
    const decisions = await acquireTimes(quotas, 4, [{ key, rpm: 3 }]);
    expect(decisions.slice(0, 3)).toEqual([{ allowed: true }, { allowed: true }, { allowed: true }]);
    expect(decisions[3]).toEqual({ allowed: false, key, limit: "rpm", retryAfterMs: expect.any(Number) });
    const retryAfterMs = decisions[3]?.allowed === false ? decisions[3].retryAfterMs : NaN;
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(60_000);
  });

  it("counts estimated tokens against tpm and corrects them by the difference on commit", async () => {
    const quotas = limiter();
    const keys = [{ key: unique("model:gpt"), tpm: 1000 }];
    const acquire = async (tokens: number): Promise<boolean> => (await quotas.acquire(keys, tokens, live())).allowed;

    expect([await acquire(400), await acquire(400), await acquire(400)]).toEqual([true, true, false]); // 800 used
    quotas.commit(keys, 100, 400); // the first answer took 100 tokens: 500 used
    await quotas.flush();
    expect([await acquire(400), await acquire(100), await acquire(1)]).toEqual([true, true, false]); // 1000 used
    quotas.commit(keys, 1000, 100); // the last one took 1000: 1900 used, over the limit
    await quotas.flush();
    const decision = await quotas.acquire(keys, 0, live());
    expect(decision).toMatchObject({ allowed: false, key: keys[0]?.key, limit: "tpm" });
  });

  it("admits a request under all its keys or counts it under none", async () => {
    const quotas = limiter();
    const provider = { key: unique("provider:p"), rpm: 10 };
    const model = { key: unique("model:m"), rpm: 1 };
    expect(await quotas.acquire([provider, model], 0, live())).toEqual({ allowed: true });
    expect(await quotas.acquire([provider, model], 0, live())).toMatchObject({ allowed: false, key: model.key, limit: "rpm" });
    // The refused request left nothing on the provider: 9 of its 10 remain.
    const decisions = await acquireTimes(quotas, 10, [provider]);
    expect(decisions.filter((decision) => decision.allowed)).toHaveLength(9);
    expect(decisions[9]).toMatchObject({ allowed: false, key: provider.key });
  });

  it("names, of several exhausted limits, the one that frees up last", async () => {
    const quotas = limiter({ windowMs: 6000, buckets: 60 }); // 100 ms buckets
    const older = { key: unique("provider:older"), rpm: 1 };
    const newer = { key: unique("model:newer"), tpm: 10 };
    expect(await quotas.acquire([older], 0, live())).toEqual({ allowed: true });
    await sleep(250);
    expect(await quotas.acquire([newer], 10, live())).toEqual({ allowed: true });
    for (const keys of [[older, newer], [newer, older]]) {
      expect(await quotas.acquire(keys, 5, live())).toMatchObject({ allowed: false, key: newer.key, limit: "tpm" });
    }
  });

  it("admits again once the counted requests have left the window", async () => {
    const quotas = limiter({ windowMs: 600, buckets: 6 });
    const keys = [{ key: unique("provider:short"), rpm: 2 }];
    const [first, second, third] = await acquireTimes(quotas, 3, keys);
    expect([first?.allowed, second?.allowed, third?.allowed]).toEqual([true, true, false]);
    const retryAfterMs = third?.allowed === false ? third.retryAfterMs : NaN;
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(600);
    await sleep(retryAfterMs + 50);
    expect(await quotas.acquire(keys, 0, live())).toEqual({ allowed: true });
  });

  it("admits a request estimated above the whole tpm limit into an empty window, and counts it in full", async () => {
    const quotas = limiter();
    const keys = [{ key: unique("model:small"), tpm: 100 }];
    expect(await quotas.acquire(keys, 500, live())).toEqual({ allowed: true });
    expect(await quotas.acquire(keys, 1, live())).toMatchObject({ allowed: false, limit: "tpm" });
  });

  it("admits without counting when no key has a limit", async () => {
    const quotas = limiter();
    const decisions = await acquireTimes(quotas, 50, [{ key: unique("provider:free") }], 1_000_000);
    expect(decisions.every((decision) => decision.allowed)).toBe(true);
  });

  it("rejects a cancelled call with an AbortError, without counting it", async () => {
    const quotas = limiter();
    const keys = [{ key: unique("provider:cancel"), rpm: 1 }];
    const controller = new AbortController();
    controller.abort();
    const error: unknown = await quotas.acquire(keys, 0, controller.signal).catch((e: unknown) => e);
    expect(isAbortError(error)).toBe(true);
    expect(await quotas.acquire(keys, 0, live())).toEqual({ allowed: true });
  });

  it("refuses a limit that is not a positive number", async () => {
    const quotas = limiter();
    await expect(quotas.acquire([{ key: "provider:broken", tpm: 0 }], 1, live())).rejects.toThrow("quotas: provider:broken: tpm must be a positive number (got 0)");
  });

  it("leaves rpm alone on commit, and tpm when the estimate was right", async () => {
    const quotas = limiter();
    const keys = [{ key: unique("provider:exact"), rpm: 2, tpm: 100 }];
    expect(await quotas.acquire(keys, 60, live())).toEqual({ allowed: true });
    quotas.commit(keys, 60, 60);
    quotas.commit([{ key: keys[0]?.key ?? "", rpm: 2 }], 0, 60); // no tpm given: nothing to correct
    await quotas.flush();
    expect(await quotas.acquire(keys, 41, live())).toMatchObject({ allowed: false, limit: "tpm" });
    expect(await quotas.acquire(keys, 40, live())).toEqual({ allowed: true });
    expect(await quotas.acquire(keys, 0, live())).toMatchObject({ allowed: false, limit: "rpm" });
  });
});
