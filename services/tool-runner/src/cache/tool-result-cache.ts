import { createHash, randomUUID } from "node:crypto";
import { createLogThrottle } from "@vlinders/redis";
import type { Logger } from "@vlinders/service-runtime";
import type { Redis } from "ioredis";
import type { ToolDefinition, ToolOutcome } from "../tools/tool";
import type { Workspace } from "../workspace/workspace";

/**
 * Results of read-only tools, so that an agent reading the same file or running the same search
 * twice is answered without touching the disk. Entries belong to a generation of their workspace,
 * which every write tool and every command moves on (invalidateWorkspace), so an entry written
 * before a change is never read after it. read_file also keys on the file's mtime and size, so
 * that edits made outside the tool-runner are seen; tools without such a fingerprint (list_files,
 * search_code) keep their entries for a shorter time (their cacheTtlSeconds) instead.
 *
 * A cache is an optimisation: `get` answers a miss rather than fail and `set` never rejects.
 */
export interface ToolResultCache {
  /**
   * The outcome cached for this call, or undefined on a miss (including when the store fails or
   * is slow). Remembers the call's key for `set` with the same `args` object. Rejects only when
   * `signal` aborts.
   */
  get(toolName: string, workspace: Workspace, args: object, signal: AbortSignal): Promise<ToolOutcome | undefined>;
  /**
   * Stores a successful outcome under the key `get` computed for the same `args` object, that is
   * with the workspace generation and file fingerprint as they were before the tool ran: a result
   * that raced a write is then stored where no later read looks. Without that `get`, nothing is
   * stored. Never rejects.
   */
  set(toolName: string, workspace: Workspace, args: object, outcome: ToolOutcome, signal?: AbortSignal): Promise<void>;
  /**
   * Moves the workspace to a new generation: every entry cached for it becomes unreachable. Call it
   * after every tool that is not read-only, whatever its outcome (a failed command may have written
   * half its files). Never rejects.
   */
  invalidateWorkspace(workspaceId: string, signal?: AbortSignal): Promise<void>;
  /** Waits for writes in progress. Does not close a Redis connection it was given. */
  close(): Promise<void>;
}

/** Looks up a tool by name, for its cacheFingerprint (a ToolRegistry will do). */
export interface ToolLookup {
  get(name: string): Pick<ToolDefinition<never>, "cacheFingerprint" | "cacheTtlSeconds"> | undefined;
}

interface CommonOptions {
  /**
   * Lifetime of an entry in seconds (TOOL_CACHE_TTL_S); a tool's own cacheTtlSeconds may only
   * shorten it.
   */
  ttlSeconds: number;
  /** For the tools' cacheFingerprint; without it, no tool's result depends on file metadata. */
  tools?: ToolLookup;
  /** Outcomes larger than this (as JSON) are not stored (1 MiB). */
  maxValueBytes?: number;
  logger: Logger;
}

export interface RedisToolResultCacheOptions extends CommonOptions {
  /** A client made by createRedisConnection (fails fast, times commands out); not closed by the cache. */
  redis: Redis;
  /** Put before every key (none), e.g. to separate test runs or environments sharing one Redis. */
  keyPrefix?: string;
}

export interface InProcessToolResultCacheOptions extends CommonOptions {
  /** Most entries kept (1000); the least recently used go first. */
  maxEntries?: number;
  /** Most bytes of outcomes kept (32 MiB). */
  maxBytes?: number;
  /** The clock, for tests (Date.now). */
  now?: () => number;
}

/** Where entries and generations live. Every method may reject; the cache turns that into a miss. */
interface CacheStore {
  generation(workspaceId: string, signal: AbortSignal | undefined): Promise<string>;
  bumpGeneration(workspaceId: string): Promise<void>;
  read(key: string, signal: AbortSignal | undefined): Promise<string | undefined>;
  write(key: string, value: string, ttlSeconds: number): Promise<void>;
}

/** Bumped when the key's canonical form changes, so that two forms never give one key two meanings. */
const keyFormVersion = 1;

/** The key of a call: `tool:{name}:{sha256 of the canonical workspace id, generation, arguments and fingerprint}`. */
export function toolResultCacheKey(toolName: string, workspaceId: string, generation: string, args: object, fingerprint: string | null): string {
  const canonical = canonicalJson({ v: keyFormVersion, workspace_id: workspaceId, generation, args, fingerprint });
  return `tool:${toolName}:${createHash("sha256").update(canonical).digest("hex")}`;
}

/** JSON with object keys sorted at every depth, so that `{a,b}` and `{b,a}` give one key. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, inner: unknown) =>
    inner !== null && typeof inner === "object" && !Array.isArray(inner)
      ? Object.fromEntries(Object.entries(inner as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : inner,
  );
}

/**
 * The cache in Redis, shared by every tool-runner replica. An entry is one string (the outcome
 * as JSON) written with SET … EX; a workspace's generation is a random token under
 * `tool-workspace-generation:{workspace_id}`, replaced on every change. A token rather than a
 * counter: if the generation key ever disappears (evicted, expired) a counter would start again
 * at a number old entries were written under. The generation key lives twice the entries'
 * lifetime and every read refreshes it (GETEX), so it cannot expire while entries of its
 * generation are alive. Redis failures are misses and dropped writes, logged at most once per
 * 30 s, never errors of the call.
 */
export function createRedisToolResultCache(options: RedisToolResultCacheOptions): ToolResultCache {
  const { redis } = options;
  const prefix = options.keyPrefix ?? "";
  const generationTtlSeconds = options.ttlSeconds * 2 + 60;
  const generationKey = (workspaceId: string): string => `${prefix}tool-workspace-generation:${workspaceId}`;
  return createToolResultCache(options, "redis", {
    async generation(workspaceId, signal) {
      const token = await abortable(redis.getex(generationKey(workspaceId), "EX", generationTtlSeconds), signal);
      return token ?? "initial";
    },
    async bumpGeneration(workspaceId) {
      await redis.set(generationKey(workspaceId), randomUUID(), "EX", generationTtlSeconds);
    },
    async read(key, signal) {
      return (await abortable(redis.get(prefix + key), signal)) ?? undefined;
    },
    async write(key, value, ttlSeconds) {
      await redis.set(prefix + key, value, "EX", ttlSeconds);
    },
  });
}

/**
 * The cache in this process, for a tool-runner without REDIS_URL: a least-recently-used map
 * bounded in entries and bytes, and a generation counter per workspace (a counter is safe here:
 * it never disappears while the process lives).
 */
export function createInProcessToolResultCache(options: InProcessToolResultCacheOptions): ToolResultCache {
  const maxEntries = options.maxEntries ?? 1000;
  const maxBytes = options.maxBytes ?? 32 * 1024 * 1024;
  const now = options.now ?? Date.now;
  const entries = new Map<string, { value: string; bytes: number; expiresAt: number }>();
  const generations = new Map<string, number>();
  let bytes = 0;
  const remove = (key: string): void => {
    const entry = entries.get(key);
    if (!entry) return;
    entries.delete(key);
    bytes -= entry.bytes;
  };
  return createToolResultCache(options, "in-process", {
    async generation(workspaceId) {
      return String(generations.get(workspaceId) ?? 0);
    },
    async bumpGeneration(workspaceId) {
      generations.set(workspaceId, (generations.get(workspaceId) ?? 0) + 1);
    },
    async read(key) {
      const entry = entries.get(key);
      if (!entry) return undefined;
      remove(key);
      if (entry.expiresAt <= now()) return undefined;
      // Back in at the end: the Map's order is the recency order.
      entries.set(key, entry);
      bytes += entry.bytes;
      return entry.value;
    },
    async write(key, value, ttlSeconds) {
      const size = Buffer.byteLength(value) + key.length;
      if (size > maxBytes) return;
      remove(key);
      entries.set(key, { value, bytes: size, expiresAt: now() + ttlSeconds * 1000 });
      bytes += size;
      for (const oldest of entries.keys()) {
        if (entries.size <= maxEntries && bytes <= maxBytes) break;
        remove(oldest);
      }
    },
  });
}

function createToolResultCache(options: CommonOptions, storeName: string, store: CacheStore): ToolResultCache {
  const { logger, tools } = options;
  const maxValueBytes = options.maxValueBytes ?? 1024 * 1024;
  const throttle = createLogThrottle();
  /** The key each `get` computed, for the `set` of the same call (its args object). */
  const pendingKeys = new WeakMap<object, string>();
  /** Workspaces whose last invalidation failed: they are not cached until one succeeds. */
  const unsure = new Set<string>();
  const writes = new Set<Promise<void>>();

  const warn = (error: unknown, operation: string): void => {
    const suppressed = throttle();
    if (suppressed !== undefined) logger.warn({ err: error, operation, store: storeName, suppressed }, "tool cache: store failed; going on without the cache");
  };

  const bump = async (workspaceId: string): Promise<boolean> => {
    try {
      await store.bumpGeneration(workspaceId);
      unsure.delete(workspaceId);
      return true;
    } catch (error) {
      // The old generation may still be readable; entries under it must not be served.
      unsure.add(workspaceId);
      warn(error, "invalidate");
      return false;
    }
  };

  return {
    async get(toolName, workspace, args, signal) {
      signal.throwIfAborted();
      try {
        if (unsure.has(workspace.id) && !(await bump(workspace.id))) return undefined;
        const fingerprint = tools?.get(toolName)?.cacheFingerprint;
        const [generation, print] = await Promise.all([
          store.generation(workspace.id, signal),
          fingerprint ? fingerprint.call(tools?.get(toolName), args as never, workspace, signal) : Promise.resolve(null),
        ]);
        if (print === undefined) return undefined;
        const key = toolResultCacheKey(toolName, workspace.id, generation, args, print);
        pendingKeys.set(args, key);
        const value = await store.read(key, signal);
        return value === undefined ? undefined : decodeOutcome(value);
      } catch (error) {
        if (signal.aborted) throw signal.reason;
        warn(error, "get");
        return undefined;
      }
    },

    async set(toolName, _workspace, args, outcome, signal) {
      const key = pendingKeys.get(args);
      pendingKeys.delete(args);
      if (key === undefined || !outcome.success || signal?.aborted) return;
      const value = JSON.stringify(outcome);
      if (Buffer.byteLength(value) > maxValueBytes) return;
      // A tool without a fingerprint (list_files, search_code) cannot see changes made outside the
      // tool-runner, e.g. by a command's background process; its own shorter lifetime bounds how
      // long such a change goes unseen. Never longer than the operator's TOOL_CACHE_TTL_S.
      const ttlSeconds = Math.min(tools?.get(toolName)?.cacheTtlSeconds ?? options.ttlSeconds, options.ttlSeconds);
      const pending = store.write(key, value, ttlSeconds).catch((error: unknown) => warn(error, "set"));
      writes.add(pending);
      try {
        await pending;
      } finally {
        writes.delete(pending);
      }
    },

    async invalidateWorkspace(workspaceId) {
      // Not cut short by the call's signal: a change that is not recorded would leave stale entries readable.
      const pending = bump(workspaceId).then(() => undefined);
      writes.add(pending);
      try {
        await pending;
      } finally {
        writes.delete(pending);
      }
    },

    async close() {
      await Promise.all(writes);
    },
  };
}

/** An outcome read back, or undefined when the entry is not one (written by another version, damaged). */
function decodeOutcome(value: string): ToolOutcome | undefined {
  try {
    const outcome = JSON.parse(value) as Partial<ToolOutcome> | null;
    if (typeof outcome?.success !== "boolean" || typeof outcome.output !== "string" || typeof outcome.truncated !== "boolean") return undefined;
    return outcome as ToolOutcome;
  } catch {
    return undefined;
  }
}

/** Settles with the promise, or rejects with the signal's reason as soon as it aborts. */
async function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  signal.throwIfAborted();
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort!);
    // The store's promise settles later (commands time out); nobody waits for it any more.
    void promise.catch(() => undefined);
  }
}
