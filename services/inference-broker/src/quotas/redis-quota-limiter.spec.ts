import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { createLogger, type Logger } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import { createRedisConnection, type RedisConnection } from "@vlinders/redis";
import { createRedisQuotaLimiter } from "./redis-quota-limiter";

const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
/** Every key this file writes starts with this, so that runs never meet and cleanup finds them all. */
const prefix = `test:redis-quota:${process.pid}:${Date.now()}:`;
const silent = createLogger({ service: "test", level: "silent" });
const live = (): AbortSignal => new AbortController().signal;
const unique = (name: string): string => `${name}:${randomUUID()}`;

function capturingLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({
    service: "test",
    level: "debug",
    destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  });
  return { logger, lines };
}

async function closedPort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const connections: RedisConnection[] = [];
async function connect(url = redisUrl): Promise<RedisConnection> {
  const connection = createRedisConnection(url, { logger: silent, name: "test-redis-quotas" });
  connections.push(connection);
  await connection.ready(url === redisUrl ? 5000 : 100);
  return connection;
}

afterAll(async () => {
  const cleanup = await connect();
  const keys = await cleanup.redis.keys(`${prefix}*`);
  if (keys.length > 0) await cleanup.redis.del(...keys);
  await Promise.all(connections.map((connection) => connection.close()));
});

describe("createRedisQuotaLimiter", () => {
  it("holds one budget across replicas: of 20 concurrent requests on two brokers, 5 of rpm 5 pass", async () => {
    // Two brokers: each its own connection and limiter, one Redis.
    const replicas = await Promise.all([connect(), connect()]);
    const [a, b] = replicas.map((replica) => createRedisQuotaLimiter({ redis: replica.redis, logger: silent, keyPrefix: prefix }));
    if (!a || !b) throw new Error("two replicas expected");
    const keys = [{ key: unique("provider:shared"), rpm: 5 }];
    const decisions = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).acquire(keys, 0, live())));
    expect(decisions.filter((decision) => decision.allowed)).toHaveLength(5);
    for (const decision of decisions.filter((d) => !d.allowed)) {
      expect(decision).toEqual({ allowed: false, key: keys[0]?.key, limit: "rpm", retryAfterMs: expect.any(Number) });
    }
  });

  it("shares token corrections across replicas", async () => {
    const [one, two] = await Promise.all([connect(), connect()]);
    if (!one || !two) throw new Error("two replicas expected");
    const a = createRedisQuotaLimiter({ redis: one.redis, logger: silent, keyPrefix: prefix });
    const b = createRedisQuotaLimiter({ redis: two.redis, logger: silent, keyPrefix: prefix });
    const keys = [{ key: unique("model:shared"), tpm: 1000 }];
    expect(await a.acquire(keys, 900, live())).toEqual({ allowed: true });
    expect(await b.acquire(keys, 200, live())).toMatchObject({ allowed: false, limit: "tpm" });
    a.commit(keys, 150, 900); // the answer on replica a was short
    await a.flush();
    expect(await b.acquire(keys, 200, live())).toEqual({ allowed: true });
  });

  it("keeps one hash per limit in Redis that expires with the window", async () => {
    const { redis } = await connect();
    const quotas = createRedisQuotaLimiter({ redis, logger: silent, keyPrefix: prefix });
    const key = unique("provider:layout");
    expect(await quotas.acquire([{ key, rpm: 10, tpm: 1000 }], 42, live())).toEqual({ allowed: true });
    expect(Object.values(await redis.hgetall(`${prefix}quota:${key}:rpm`))).toEqual(["1"]);
    expect(Object.values(await redis.hgetall(`${prefix}quota:${key}:tpm`))).toEqual(["42"]);
    const ttl = await redis.pttl(`${prefix}quota:${key}:rpm`);
    expect(ttl).toBeGreaterThan(59_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
  });

  it("works after Redis forgot its scripts (restart, failover), by sending the script again", async () => {
    const { redis } = await connect();
    const quotas = createRedisQuotaLimiter({ redis, logger: silent, keyPrefix: prefix });
    const keys = [{ key: unique("provider:flushed"), rpm: 1, tpm: 100 }];
    expect(await quotas.acquire(keys, 10, live())).toEqual({ allowed: true });
    await redis.script("FLUSH");
    quotas.commit(keys, 100, 10);
    await quotas.flush();
    expect(Object.values(await redis.hgetall(`${prefix}quota:${keys[0]?.key}:tpm`)).map(Number).reduce((x, y) => x + y, 0)).toBe(100);
    await redis.script("FLUSH");
    expect(await quotas.acquire(keys, 10, live())).toMatchObject({ allowed: false, limit: "rpm" });
  });

  it("admits at once while Redis is unreachable (fail open), counting each and logging one warning", async () => {
    const { logger, lines } = capturingLogger();
    const down = await connect(`redis://127.0.0.1:${await closedPort()}`);
    const failOpen = { inc: jest.fn() };
    const quotas = createRedisQuotaLimiter({ redis: down.redis, logger, keyPrefix: prefix, failOpenCounter: failOpen });
    const keys = [{ key: "provider:any", rpm: 1, tpm: 1 }];
    const started = Date.now();
    for (let i = 0; i < 5; i += 1) expect(await quotas.acquire(keys, 1000, live())).toEqual({ allowed: true });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(failOpen.inc).toHaveBeenCalledTimes(5);
    quotas.commit(keys, 10, 1000); // fails too, quietly
    await quotas.close();
    expect(lines.filter((line) => line.level === "warn")).toEqual([
      expect.objectContaining({ msg: "quotas: Redis failed; admitting requests without checking quotas", suppressed: 0 }),
    ]);
  });

  it("refuses with UNAVAILABLE while Redis is unreachable when set to fail closed", async () => {
    const down = await connect(`redis://127.0.0.1:${await closedPort()}`);
    const quotas = createRedisQuotaLimiter({ redis: down.redis, logger: silent, failMode: "closed" });
    const error: unknown = await quotas.acquire([{ key: "provider:any", rpm: 1 }], 0, live()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ServerError);
    expect(error).toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringMatching(/^quotas cannot be checked: Redis failed/) });
  });
});
