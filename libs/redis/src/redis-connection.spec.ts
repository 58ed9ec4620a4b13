import { once } from "node:events";
import { createServer, Socket, type AddressInfo, type Server } from "node:net";
import { createLogger } from "@vlinders/service-runtime";
import { createLogThrottle, createRedisConnection, describeRedisUrl, type RedisConnection } from "./redis-connection";

const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const prefix = `test:redis-connection:${process.pid}:${Date.now()}:`;

function capturingLogger(): { logger: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({
    service: "test",
    level: "debug",
    destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  });
  return { logger, lines };
}

/** A port nothing listens on: taken from the OS, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A TCP proxy to the real Redis whose replies can be held back, to play a Redis that stopped answering. */
async function stallableProxy(): Promise<{ url: string; stall(): void; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const upstreams: Socket[] = [];
  const server: Server = createServer((client) => {
    const upstream = new Socket();
    upstream.connect(6379, "127.0.0.1");
    upstreams.push(upstream);
    sockets.add(client).add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    url: `redis://127.0.0.1:${port}`,
    stall: () => upstreams.forEach((upstream) => upstream.unpipe()),
    close: async () => {
      sockets.forEach((socket) => socket.destroy());
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("createRedisConnection", () => {
  const connections: RedisConnection[] = [];
  afterEach(async () => {
    await Promise.all(connections.splice(0).map((connection) => connection.close()));
  });

  it("connects to Redis, runs commands, and after close() refuses them without reconnecting", async () => {
    const { logger, lines } = capturingLogger();
    const connection = createRedisConnection(redisUrl, { logger, name: "test-connection" });
    connections.push(connection);
    expect(await connection.ready(5000)).toBe(true);

    const key = `${prefix}roundtrip`;
    await connection.redis.set(key, "value", "EX", 60);
    expect(await connection.redis.get(key)).toBe("value");
    expect(await connection.redis.client("GETNAME")).toBe("test-connection");
    await connection.redis.del(key);

    await connection.close();
    expect(connection.redis.status).toBe("end");
    await expect(connection.redis.get(key)).rejects.toThrow(/closed/i);
    expect(lines.map((line) => line.msg)).toEqual(["redis connected", "redis connection closed"]);
    expect(lines[0]).toMatchObject({ redis: "test-connection", url: "redis://127.0.0.1:6379" });
  });

  it("fails commands at once while Redis is unreachable and logs the error instead of throwing it", async () => {
    const { logger, lines } = capturingLogger();
    const connection = createRedisConnection(`redis://127.0.0.1:${await closedPort()}`, { logger, name: "unreachable", maxReconnectDelayMs: 20 });
    connections.push(connection);

    expect(await connection.ready(300)).toBe(false);
    const started = Date.now();
    await expect(connection.redis.get(`${prefix}nothing`)).rejects.toThrow(/enableOfflineQueue/);
    expect(Date.now() - started).toBeLessThan(1000);

    // Several reconnection attempts failed within the 300 ms above; the throttle lets one line through.
    const warnings = lines.filter((line) => line.msg === "redis connection error; requests go on without it");
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ level: "warn", suppressed: 0, err: { message: expect.stringContaining("ECONNREFUSED") } });

    const closeStarted = Date.now();
    await connection.close();
    expect(Date.now() - closeStarted).toBeLessThan(1000);
    // With a 20 ms backoff, a client still trying would connect again several times in 200 ms.
    let attempts = 0;
    connection.redis.on("connecting", () => (attempts += 1));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(attempts).toBe(0);
  });

  it("times a command out after commandTimeoutMs when Redis stops answering", async () => {
    const proxy = await stallableProxy();
    try {
      const { logger } = capturingLogger();
      const connection = createRedisConnection(proxy.url, { logger, name: "stalled", commandTimeoutMs: 100 });
      connections.push(connection);
      expect(await connection.ready(5000)).toBe(true);
      expect(await connection.redis.ping()).toBe("PONG");

      proxy.stall();
      const started = Date.now();
      await expect(connection.redis.ping()).rejects.toThrow(/timed out/i);
      expect(Date.now() - started).toBeLessThan(1000);
      // close() must not hang on a QUIT nobody answers.
      await connection.close();
      expect(connection.redis.status).toBe("end");
    } finally {
      await proxy.close();
    }
  });

  it("never logs the password of the URL", async () => {
    const { logger, lines } = capturingLogger();
    const connection = createRedisConnection(`redis://user:s3cret-pw@127.0.0.1:${await closedPort()}/2`, { logger, name: "secret" });
    connections.push(connection);
    await connection.ready(200);
    await connection.close();
    expect(lines.length).toBeGreaterThan(0);
    expect(JSON.stringify(lines)).not.toContain("s3cret-pw");
  });
});

describe("describeRedisUrl", () => {
  it.each([
    ["redis://127.0.0.1:6379", "redis://127.0.0.1:6379"],
    ["redis://:pw@cache:6380/3", "redis://cache:6380/3"],
    ["rediss://user:pw@cache.example", "rediss://cache.example"],
    ["not a url", "(unparsable REDIS_URL)"],
  ])("%s -> %s", (url, shown) => {
    expect(describeRedisUrl(url)).toBe(shown);
  });
});

describe("createLogThrottle", () => {
  it("lets one call per interval through and reports how many it held back", () => {
    let time = 1000;
    const throttle = createLogThrottle(100, () => time);
    expect(throttle()).toBe(0);
    expect(throttle()).toBeUndefined();
    time += 99;
    expect(throttle()).toBeUndefined();
    time += 1;
    expect(throttle()).toBe(2);
    expect(throttle()).toBeUndefined();
  });
});
