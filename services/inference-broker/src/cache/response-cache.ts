import { FinishReason, type ChatEvent } from "@vlinders/proto";
import type { Logger } from "@vlinders/service-runtime";
import { abortable, isAbortError, throwIfAborted } from "abort-controller-x";
import type { Redis } from "ioredis";
import { createLogThrottle } from "@vlinders/redis";
import { decodeChatEvents, encodeChatEvents } from "./chat-event-codec";

/**
 * Finished responses of deterministic requests, as the complete sequence of ChatEvents the worker
 * produced (content and tool-call deltas, finish reason, usage), so that a streamed request is
 * replayed with the chunking it had and a Complete can be assembled from the same entry.
 *
 * A cache is an optimisation: `get` answers a miss rather than fail, and `set` never rejects.
 */
export interface ResponseCache {
  /**
   * The events stored under `key`, or undefined on a miss, including when the store fails or is
   * slow. Rejects only with an AbortError, when `signal` aborts (the call is over; nobody waits).
   */
  get(key: string, signal: AbortSignal): Promise<ChatEvent[] | undefined>;
  /**
   * Stores the events of a finished, successful response under `key`. Does nothing for a response
   * that is not complete (see {@link isCacheableResponse}), too large, or whose call was cancelled
   * (`signal` aborted). Never rejects; callers may leave it running (`void cache.set(…)`).
   */
  set(key: string, events: readonly ChatEvent[], signal?: AbortSignal): Promise<void>;
  /** Waits for the writes still in progress. Does not close a Redis connection it was given. */
  close(): Promise<void>;
}

/** Finish reasons of an answer the worker completed; ABORT, UNSPECIFIED and unknown values are not. */
const completedFinishReasons: ReadonlySet<FinishReason> = new Set([
  FinishReason.FINISH_REASON_STOP,
  FinishReason.FINISH_REASON_LENGTH,
  FinishReason.FINISH_REASON_TOOL_CALLS,
  FinishReason.FINISH_REASON_CONTENT_FILTER,
]);

/**
 * Whether the events are a whole, successful response: deltas, then exactly one finish event with
 * a reason of a completed answer, then at most one usage event. A stream cut short by an error or
 * a cancel has no finish event, and a worker abort has FINISH_REASON_ABORT: neither is cached.
 */
export function isCacheableResponse(events: readonly ChatEvent[]): boolean {
  let finished = false;
  let usageSeen = false;
  for (const { event } of events) {
    switch (event?.$case) {
      case "contentDelta":
      case "toolCallDelta":
        if (finished) return false;
        break;
      case "finishReason":
        if (finished || !completedFinishReasons.has(event.value)) return false;
        finished = true;
        break;
      case "usage":
        if (!finished || usageSeen) return false;
        usageSeen = true;
        break;
      default:
        return false;
    }
  }
  return finished;
}

const defaultTtlSeconds = 3600;
const defaultMaxValueBytes = 1024 * 1024;

/** Options of {@link createRedisResponseCache}. */
export interface RedisResponseCacheOptions {
  /** A client made by createRedisConnection (fails fast, times commands out); not closed by the cache. */
  redis: Redis;
  logger: Logger;
  /** Lifetime of an entry (3600). */
  ttlSeconds?: number;
  /** Encoded responses larger than this are not stored (1 MiB). */
  maxValueBytes?: number;
  /** Put before every key, e.g. to separate environments sharing one Redis (none). */
  keyPrefix?: string;
}

/**
 * The response cache in Redis, shared by every broker replica. Each entry is one string value
 * written with SET … EX, so Redis expires it; values are the compact binary form of
 * chat-event-codec. Redis failures and timeouts are misses on read and dropped writes, logged at
 * most once per 30 s (with the count of those held back), never errors of the request.
 */
export function createRedisResponseCache(options: RedisResponseCacheOptions): ResponseCache {
  const { redis, logger } = options;
  const ttlSeconds = positiveInteger(options.ttlSeconds ?? defaultTtlSeconds, "ttlSeconds");
  const maxValueBytes = positiveInteger(options.maxValueBytes ?? defaultMaxValueBytes, "maxValueBytes");
  const keyPrefix = options.keyPrefix ?? "";
  const throttle = createLogThrottle();
  const writes = new Set<Promise<void>>();

  const warn = (error: unknown, operation: "get" | "set", key: string): void => {
    const suppressed = throttle();
    if (suppressed !== undefined) logger.warn({ err: error, operation, key, suppressed }, "response cache: Redis failed; going on without the cache");
  };

  const write = async (key: string, events: readonly ChatEvent[]): Promise<void> => {
    const bytes = encodeChatEvents(events);
    if (bytes.length > maxValueBytes) {
      logger.debug({ key, bytes: bytes.length, max_bytes: maxValueBytes }, "response cache: response too large to cache");
      return;
    }
    try {
      await redis.set(keyPrefix + key, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length), "EX", ttlSeconds);
    } catch (error) {
      warn(error, "set", key);
    }
  };

  return {
    async get(key, signal) {
      throwIfAborted(signal);
      let bytes: Buffer | null;
      try {
        bytes = await abortable(signal, redis.getBuffer(keyPrefix + key));
      } catch (error) {
        if (isAbortError(error)) throw error;
        warn(error, "get", key);
        return undefined;
      }
      if (bytes === null) return undefined;
      try {
        return decodeChatEvents(bytes);
      } catch (error) {
        // Written by another version of the broker, or damaged: a miss, and the next set replaces it.
        logger.warn({ err: error, key }, "response cache: unreadable entry ignored");
        return undefined;
      }
    },

    async set(key, events, signal) {
      if (signal?.aborted || !isCacheableResponse(events)) return;
      const pending = write(key, events);
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

/** Options of {@link createInProcessResponseCache}. */
export interface InProcessResponseCacheOptions {
  /** Entries kept at most; the least recently used go first (1000). */
  maxEntries?: number;
  /** Encoded bytes kept at most (64 MiB). */
  maxBytes?: number;
  /** Lifetime of an entry (3600). */
  ttlSeconds?: number;
  /** Encoded responses larger than this are not stored (1 MiB, and never more than maxBytes). */
  maxValueBytes?: number;
  /** The clock, for tests. */
  now?: () => number;
}

interface LruEntry {
  bytes: Uint8Array;
  expiresAt: number;
}

/**
 * The response cache in this process: the embedded default when REDIS_URL is unset. Each broker
 * replica has its own. A least-recently-used map bounded by entries and by bytes, with a TTL.
 * Entries are kept encoded, which measures their size and hands every reader its own copy.
 */
export function createInProcessResponseCache(options: InProcessResponseCacheOptions = {}): ResponseCache {
  const maxEntries = positiveInteger(options.maxEntries ?? 1000, "maxEntries");
  const maxBytes = positiveInteger(options.maxBytes ?? 64 * 1024 * 1024, "maxBytes");
  const ttlMs = positiveInteger(options.ttlSeconds ?? defaultTtlSeconds, "ttlSeconds") * 1000;
  const maxValueBytes = Math.min(positiveInteger(options.maxValueBytes ?? defaultMaxValueBytes, "maxValueBytes"), maxBytes);
  const now = options.now ?? Date.now;
  // A Map iterates in insertion order: re-inserting on every read keeps the least recently used first.
  const entries = new Map<string, LruEntry>();
  let totalBytes = 0;

  const remove = (key: string, entry: LruEntry): void => {
    entries.delete(key);
    totalBytes -= entry.bytes.length;
  };

  return {
    async get(key, signal) {
      throwIfAborted(signal);
      const entry = entries.get(key);
      if (!entry) return undefined;
      if (entry.expiresAt <= now()) {
        remove(key, entry);
        return undefined;
      }
      entries.delete(key);
      entries.set(key, entry);
      return decodeChatEvents(entry.bytes);
    },

    async set(key, events, signal) {
      if (signal?.aborted || !isCacheableResponse(events)) return;
      const bytes = encodeChatEvents(events);
      if (bytes.length > maxValueBytes) return;
      const previous = entries.get(key);
      if (previous) remove(key, previous);
      entries.set(key, { bytes, expiresAt: now() + ttlMs });
      totalBytes += bytes.length;
      for (const [oldestKey, oldest] of entries) {
        if (entries.size <= maxEntries && totalBytes <= maxBytes) break;
        remove(oldestKey, oldest);
      }
    },

    async close() {
      entries.clear();
      totalBytes = 0;
    },
  };
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`response cache: ${name} must be a positive integer (got ${value})`);
  return value;
}
