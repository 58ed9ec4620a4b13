import { ChatMessage } from "@vlinders/proto";
import { createLogThrottle } from "@vlinders/redis";
import type { Logger } from "@vlinders/service-runtime";
import type { Redis } from "ioredis";
import { untilAborted } from "../abort";

/** A window as served, for the revision of the conversation it was computed from. */
export interface CachedWindow {
  revision: number;
  /** The model and effective budget it was computed for: a request naming others is a miss. */
  model: string;
  budgetTokens: number;
  messages: ChatMessage[];
  tokens: number;
}

/**
 * Hot windows, keyed `context:window:{conversation_id}`. Entries are ordered by the conversation's
 * revision, which only grows: `invalidate` leaves a marker of the new revision, and `put` is
 * refused when the key holds a newer revision (entry or marker). So a slow reader that loaded the
 * conversation before an append can never store its stale window after the append's invalidation.
 *
 * A cache is an optimisation: `get` answers a miss and `put` / `invalidate` give up quietly when the
 * store fails (logged at most once per 30 s). A failed invalidation can leave an older window
 * readable until its TTL, which is why the TTL is short.
 */
export interface WindowCache {
  /** The window cached for the conversation, undefined on a miss or a failure. Rejects only when `signal` aborts. */
  get(conversationId: string, signal: AbortSignal): Promise<CachedWindow | undefined>;
  /** Stores the window unless a newer revision is recorded. Never rejects. */
  put(conversationId: string, window: CachedWindow): Promise<void>;
  /** Marks every window older than `revision` as stale. Never rejects. */
  invalidate(conversationId: string, revision: number): Promise<void>;
}

export const windowCacheKey = (prefix: string, conversationId: string): string => `${prefix}context:window:${conversationId}`;

/**
 * Stores ARGV[2] under KEYS[1] for ARGV[3] seconds unless the key holds a revision newer than
 * ARGV[1]. Values are "<revision>|<window JSON>", or "<revision>|" for an invalidation marker.
 */
const putIfNotOlder = `
local current = redis.call('GET', KEYS[1])
if current then
  local revision = tonumber(string.match(current, '^(%d+)|'))
  if revision and revision > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
`;

function encode(window: CachedWindow): string {
  return JSON.stringify({ ...window, messages: window.messages.map((message) => ChatMessage.toJSON(message)) });
}

function decode(value: string): CachedWindow | undefined {
  const separator = value.indexOf("|");
  const body = value.slice(separator + 1);
  if (separator < 0 || body === "") return undefined;
  const parsed = JSON.parse(body) as Omit<CachedWindow, "messages"> & { messages: unknown[] };
  return { ...parsed, messages: parsed.messages.map((message) => ChatMessage.fromJSON(message)) };
}

/** Windows in Redis, shared by every replica. */
export function createRedisWindowCache(options: { redis: Redis; keyPrefix: string; ttlSeconds: number; logger: Logger }): WindowCache {
  const { redis, keyPrefix, ttlSeconds } = options;
  const warn = createWarning(options.logger, "redis");
  const write = async (conversationId: string, revision: number, body: string): Promise<void> => {
    try {
      await redis.eval(putIfNotOlder, 1, windowCacheKey(keyPrefix, conversationId), revision, body, ttlSeconds);
    } catch (error: unknown) {
      warn(error, "write");
    }
  };
  return {
    async get(conversationId, signal) {
      let value: string | null;
      try {
        value = await untilAborted(redis.get(windowCacheKey(keyPrefix, conversationId)), signal, "the window cache read");
      } catch (error: unknown) {
        if (signal.aborted) throw error;
        warn(error, "read");
        return undefined;
      }
      try {
        return value === null ? undefined : decode(value);
      } catch (error: unknown) {
        warn(error, "decode");
        return undefined;
      }
    },
    put: (conversationId, window) => write(conversationId, window.revision, encode(window)),
    invalidate: (conversationId, revision) => write(conversationId, revision, ""),
  };
}

/** Windows in this process, for a service without REDIS_URL: a least-recently-used map bounded in entries. */
export function createInProcessWindowCache(options: { maxEntries: number; ttlSeconds: number; now?: () => number }): WindowCache {
  const now = options.now ?? Date.now;
  const entries = new Map<string, { revision: number; window: CachedWindow | undefined; expiresAt: number }>();
  const write = (conversationId: string, revision: number, window: CachedWindow | undefined): void => {
    const current = entries.get(conversationId);
    if (current && current.expiresAt > now() && current.revision > revision) return;
    entries.delete(conversationId);
    entries.set(conversationId, { revision, window, expiresAt: now() + options.ttlSeconds * 1000 });
    for (const oldest of entries.keys()) {
      if (entries.size <= options.maxEntries) break;
      entries.delete(oldest);
    }
  };
  return {
    async get(conversationId) {
      const entry = entries.get(conversationId);
      if (!entry || entry.expiresAt <= now()) return undefined;
      // Back in at the end: the Map's order is the recency order.
      entries.delete(conversationId);
      entries.set(conversationId, entry);
      return entry.window;
    },
    async put(conversationId, window) {
      write(conversationId, window.revision, window);
    },
    async invalidate(conversationId, revision) {
      write(conversationId, revision, undefined);
    },
  };
}

function createWarning(logger: Logger, store: string): (error: unknown, operation: string) => void {
  const throttle = createLogThrottle();
  return (error, operation) => {
    const suppressed = throttle();
    if (suppressed !== undefined) logger.warn({ err: error, operation, store, suppressed }, "window cache failed; serving from PostgreSQL");
  };
}
