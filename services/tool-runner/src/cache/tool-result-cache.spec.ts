import { once } from "node:events";
import { mkdtemp, realpath, rm, utimes, writeFile } from "node:fs/promises";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRedisConnection, type RedisConnection } from "@vlinders/redis";
import { createLogger, type Logger } from "@vlinders/service-runtime";
import { createBuiltinTools } from "../tools/builtin-tools";
import type { ToolOutcome } from "../tools/tool";
import { createToolRegistry } from "../tools/tool-registry";
import type { Workspace } from "../workspace/workspace";
import { createWorkspaces } from "../workspace/workspaces";
import {
  canonicalJson,
  createInProcessToolResultCache,
  createRedisToolResultCache,
  toolResultCacheKey,
  type ToolResultCache,
} from "./tool-result-cache";

const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
/** Every key this file writes starts with this, so that runs never meet and cleanup finds them all. */
const prefix = `test:tool-cache:${process.pid}:${Date.now()}:`;
const silent = createLogger({ service: "test", level: "silent" });
const live = (): AbortSignal => new AbortController().signal;
const registry = createToolRegistry(createBuiltinTools());

function capturingLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({ service: "test", level: "debug", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
  return { logger, lines };
}

const connections: RedisConnection[] = [];
async function connect(url = redisUrl): Promise<RedisConnection> {
  const connection = createRedisConnection(url, { logger: silent, name: "test-tool-cache" });
  connections.push(connection);
  await connection.ready(url === redisUrl ? 5000 : 100);
  return connection;
}

let base: string;
let workspace: Workspace;
let other: Workspace;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "tool-cache-")));
  const workspaces = createWorkspaces({ rootPath: base });
  // Unique ids per test: the Redis generation keys outlive a test.
  const id = `ws-${Math.random().toString(36).slice(2)}`;
  workspace = await workspaces.open(id, { create: true });
  other = await workspaces.open(`${id}-other`, { create: true });
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

afterAll(async () => {
  const cleanup = await connect();
  const keys = await cleanup.redis.keys(`${prefix}*`);
  if (keys.length > 0) await cleanup.redis.del(...keys);
  await Promise.all(connections.map((connection) => connection.close()));
});

const found = (output: string): ToolOutcome => ({ success: true, output, result: { n: 1 }, truncated: false });

/** One call as the service makes it: get, and on a miss set with the same args object. */
async function call(cache: ToolResultCache, args: object, output: string, toolName = "search_code", on = workspace): Promise<ToolOutcome> {
  const hit = await cache.get(toolName, on, args, live());
  if (hit) return hit;
  const outcome = found(output);
  await cache.set(toolName, on, args, outcome, live());
  return outcome;
}

const stores: Array<[string, () => Promise<ToolResultCache>]> = [
  ["in Redis", async () => createRedisToolResultCache({ redis: (await connect()).redis, logger: silent, ttlSeconds: 60, keyPrefix: prefix, tools: registry })],
  ["in process", async () => createInProcessToolResultCache({ logger: silent, ttlSeconds: 60, tools: registry })],
];

describe.each(stores)("the tool result cache %s", (_, create) => {
  let cache: ToolResultCache;
  beforeEach(async () => {
    cache = await create();
  });
  afterEach(async () => {
    await cache.close();
  });

  it("misses, then answers what was stored for the same call, whatever the arguments' key order", async () => {
    expect(await cache.get("search_code", workspace, { query: "a", path: "src" }, live())).toBeUndefined();
    expect(await call(cache, { query: "a", path: "src" }, "first")).toEqual(found("first"));
    expect(await call(cache, { path: "src", query: "a" }, "second")).toEqual(found("first"));
  });

  it("keeps tools, arguments and workspaces apart", async () => {
    await call(cache, { query: "a" }, "first");
    expect(await call(cache, { query: "b" }, "other query")).toEqual(found("other query"));
    expect(await call(cache, { query: "a" }, "other tool", "list_files")).toEqual(found("other tool"));
    expect(await call(cache, { query: "a" }, "other workspace", "search_code", other)).toEqual(found("other workspace"));
  });

  it("never answers from before the workspace changed, and leaves other workspaces' entries alone", async () => {
    await call(cache, { query: "a" }, "before");
    await call(cache, { query: "a" }, "other before", "search_code", other);
    await cache.invalidateWorkspace(workspace.id);
    expect(await call(cache, { query: "a" }, "after")).toEqual(found("after"));
    expect(await call(cache, { query: "a" }, "again")).toEqual(found("after"));
    expect(await call(cache, { query: "a" }, "x", "search_code", other)).toEqual(found("other before"));
  });

  it("does not keep a result that raced a change: it is stored under the generation its read began in", async () => {
    const args = { query: "race" };
    expect(await cache.get("search_code", workspace, args, live())).toBeUndefined();
    // A write lands while the search runs; the search may have seen the files before it.
    await cache.invalidateWorkspace(workspace.id);
    await cache.set("search_code", workspace, args, found("maybe stale"), live());
    expect(await cache.get("search_code", workspace, { query: "race" }, live())).toBeUndefined();
  });

  it("stores nothing for a failed outcome, nor without a get for the same args object", async () => {
    const args = { query: "a" };
    await cache.get("search_code", workspace, args, live());
    await cache.set("search_code", workspace, args, { success: false, output: "", error: "no", truncated: false }, live());
    await cache.set("search_code", workspace, { query: "b" }, found("never looked up"), live());
    expect(await cache.get("search_code", workspace, { query: "a" }, live())).toBeUndefined();
    expect(await cache.get("search_code", workspace, { query: "b" }, live())).toBeUndefined();
  });

  it("sees a file read by read_file changed outside the tool-runner", async () => {
    const file = join(workspace.rootPath, "a.txt");
    await writeFile(file, "one\n");
    await utimes(file, 1_000_000, 1_000_000);
    await call(cache, { path: "a.txt" }, "one", "read_file");
    expect(await call(cache, { path: "a.txt" }, "again", "read_file")).toEqual(found("one"));
    await writeFile(file, "two, longer\n");
    expect(await call(cache, { path: "a.txt" }, "two", "read_file")).toEqual(found("two"));
  });

  it("rejects a get with the call's reason once the call is cancelled", async () => {
    const controller = new AbortController();
    controller.abort(new Error("client cancelled"));
    await expect(cache.get("search_code", workspace, { query: "a" }, controller.signal)).rejects.toThrow("client cancelled");
  });
});

describe("createRedisToolResultCache", () => {
  it("writes tool:{name}:{sha256} keys that expire, and a generation that outlives them", async () => {
    const { redis } = await connect();
    const cache = createRedisToolResultCache({ redis, logger: silent, ttlSeconds: 60, keyPrefix: prefix, tools: registry });
    const args = { query: "ttl" };
    await cache.get("search_code", workspace, args, live());
    await cache.set("search_code", workspace, args, found("x"), live());
    await cache.invalidateWorkspace(workspace.id);
    const keys = await redis.keys(`${prefix}*${workspace.id}*`);
    expect(keys).toEqual([`${prefix}tool-workspace-generation:${workspace.id}`]);
    expect(await redis.ttl(keys[0]!)).toBeGreaterThan(60);
    const entries = (await redis.keys(`${prefix}tool:search_code:*`)).filter((key) => key === prefix + toolResultCacheKey("search_code", workspace.id, "initial", args, null));
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatch(/tool:search_code:[0-9a-f]{64}$/);
    const ttl = await redis.ttl(entries[0]!);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(60);
    await cache.close();
  });

  it("goes on without the cache when Redis is unreachable, logging once for many failures", async () => {
    const server = createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const { logger, lines } = capturingLogger();
    const cache = createRedisToolResultCache({ redis: (await connect(`redis://127.0.0.1:${port}`)).redis, logger, ttlSeconds: 60, tools: registry });
    const args = { query: "a" };
    expect(await cache.get("search_code", workspace, args, live())).toBeUndefined();
    await expect(cache.set("search_code", workspace, args, found("x"), live())).resolves.toBeUndefined();
    await expect(cache.invalidateWorkspace(workspace.id)).resolves.toBeUndefined();
    expect(await cache.get("search_code", workspace, { query: "b" }, live())).toBeUndefined();
    expect(lines.filter((line) => line.msg === "tool cache: store failed; going on without the cache")).toHaveLength(1);
    await cache.close();
  });
});

describe("createInProcessToolResultCache", () => {
  it("drops the least recently used entry beyond maxEntries, and expired ones", async () => {
    let time = 0;
    const cache = createInProcessToolResultCache({ logger: silent, ttlSeconds: 10, maxEntries: 2, now: () => time });
    await call(cache, { query: "a" }, "a");
    await call(cache, { query: "b" }, "b");
    await call(cache, { query: "a" }, "a again"); // a is now the most recently used
    await call(cache, { query: "c" }, "c");
    expect(await call(cache, { query: "a" }, "a miss")).toEqual(found("a"));
    expect(await call(cache, { query: "b" }, "b miss")).toEqual(found("b miss"));
    time = 10_001;
    expect(await call(cache, { query: "b" }, "b expired")).toEqual(found("b expired"));
  });

  it("keeps list_files and search_code results (which have no fingerprint) only for their own shorter lifetime", async () => {
    let time = 0;
    const cache = createInProcessToolResultCache({ logger: silent, ttlSeconds: 300, tools: registry, now: () => time });
    await call(cache, { query: "a" }, "search");
    await call(cache, { query: "a" }, "web", "web_search");
    time = 29_000;
    expect(await call(cache, { query: "a" }, "search again")).toEqual(found("search"));
    time = 30_001;
    expect(await call(cache, { query: "a" }, "search after 30 s")).toEqual(found("search after 30 s"));
    // A tool without cacheTtlSeconds keeps TOOL_CACHE_TTL_S.
    expect(await call(cache, { query: "a" }, "web again", "web_search")).toEqual(found("web"));
  });

  it("keeps no more bytes than maxBytes", async () => {
    const cache = createInProcessToolResultCache({ logger: silent, ttlSeconds: 10, maxBytes: 600 });
    await call(cache, { query: "a" }, "a".repeat(200));
    await call(cache, { query: "b" }, "b".repeat(200));
    await call(cache, { query: "c" }, "c".repeat(200));
    expect(await call(cache, { query: "a" }, "evicted")).toEqual(found("evicted"));
    expect(await call(cache, { query: "c" }, "kept?")).toEqual(found("c".repeat(200)));
  });
});

describe("canonicalJson", () => {
  it("sorts keys at every depth and keeps array order", () => {
    expect(canonicalJson({ b: 1, a: { d: [2, 1], c: null } })).toBe('{"a":{"c":null,"d":[2,1]},"b":1}');
  });
});
