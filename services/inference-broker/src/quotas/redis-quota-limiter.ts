import { createHash } from "node:crypto";
import type { Logger } from "@vlinders/service-runtime";
import { abortable, isAbortError, throwIfAborted } from "abort-controller-x";
import type { Redis } from "ioredis";
import { ServerError, Status } from "nice-grpc-common";
import { createLogThrottle } from "@vlinders/redis";
import type { QuotaDecision, QuotaLimiter, QuotaWindowOptions } from "./quota-types";
import { quotaChecks, quotaWindow, tokenCount, type QuotaCheck } from "./sliding-window";

/**
 * Checks every limit of a request and counts it against all of them, or against none, in one
 * atomic step: two replicas can never both take the last unit of a limit, and a request refused by
 * one key leaves no count on the others. The same rule as slidingWindowWait in sliding-window.ts.
 * The clock is Redis' (TIME), so that replicas whose clocks disagree still share one window.
 *
 * KEYS[i]: the hash of one limit of one quota key (field: bucket index, value: count).
 * ARGV[1]: bucket length in ms; ARGV[2]: buckets per window;
 * ARGV[1 + 2i]: the limit of KEYS[i]; ARGV[2 + 2i]: what this request counts against it.
 * Returns {0, 0} when admitted, otherwise {i, milliseconds} for the limit that frees up last.
 */
const acquireLua = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local bucket_ms = tonumber(ARGV[1])
local buckets = tonumber(ARGV[2])
local current = math.floor(now / bucket_ms)
local oldest = current - buckets + 1
local denied, denied_wait = 0, 0
for i = 1, #KEYS do
  local max = tonumber(ARGV[1 + 2 * i])
  local needed = math.min(tonumber(ARGV[2 + 2 * i]), max)
  local fields = redis.call('HGETALL', KEYS[i])
  local live, used = {}, 0
  for j = 1, #fields, 2 do
    local bucket, count = tonumber(fields[j]), tonumber(fields[j + 1])
    if bucket < oldest then
      redis.call('HDEL', KEYS[i], fields[j])
    else
      used = used + count
      live[#live + 1] = { bucket, count }
    end
  end
  if math.max(used, 0) + needed > max then
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local wait = buckets * bucket_ms
    for _, entry in ipairs(live) do
      used = used - entry[2]
      if math.max(used, 0) + needed <= max then
        wait = (entry[1] + buckets) * bucket_ms - now
        break
      end
    end
    if wait > denied_wait then denied, denied_wait = i, wait end
  end
end
if denied > 0 then return { denied, denied_wait } end
for i = 1, #KEYS do
  local cost = tonumber(ARGV[2 + 2 * i])
  if cost ~= 0 then
    redis.call('HINCRBY', KEYS[i], current, cost)
    redis.call('PEXPIRE', KEYS[i], buckets * bucket_ms)
  end
end
return { 0, 0 }
`;

/**
 * Adds the difference between real and estimated tokens to the current bucket of each tpm limit.
 * KEYS: tpm hashes; ARGV[1]: bucket length in ms; ARGV[2]: buckets per window; ARGV[3]: the difference.
 */
const commitLua = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local bucket_ms = tonumber(ARGV[1])
local buckets = tonumber(ARGV[2])
local current = math.floor(now / bucket_ms)
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], current, ARGV[3])
  redis.call('PEXPIRE', KEYS[i], buckets * bucket_ms)
end
return 0
`;

interface LuaScript {
  lua: string;
  sha: string;
}

const script = (lua: string): LuaScript => ({ lua, sha: createHash("sha1").update(lua).digest("hex") });
const acquireScript = script(acquireLua);
const commitScript = script(commitLua);

/**
 * Runs a script by its hash, the usual case, and sends its text only when this Redis does not know
 * it yet (after a restart or a failover), which also loads it for the next calls.
 */
async function runScript(redis: Redis, { lua, sha }: LuaScript, keys: string[], args: Array<string | number>): Promise<unknown> {
  try {
    return await redis.evalsha(sha, keys.length, ...keys, ...args);
  } catch (error) {
    if (!(error instanceof Error) || !error.message.startsWith("NOSCRIPT")) throw error;
    return redis.eval(lua, keys.length, ...keys, ...args);
  }
}

/** The decision in acquireLua's reply; throws on a reply it could not have given. */
function toDecision(reply: unknown, checks: readonly QuotaCheck[]): QuotaDecision {
  const [denied, wait] = Array.isArray(reply) ? (reply as unknown[]) : [];
  if (denied === 0) return { allowed: true };
  const check = typeof denied === "number" ? checks[denied - 1] : undefined;
  if (!check || typeof wait !== "number") throw new Error(`unexpected reply from the quota script: ${JSON.stringify(reply)}`);
  return { allowed: false, key: check.key, limit: check.limit, retryAfterMs: wait };
}

/** Options of {@link createRedisQuotaLimiter}. */
export interface RedisQuotaLimiterOptions extends QuotaWindowOptions {
  /** A client made by createRedisConnection (fails fast, times commands out); not closed by the limiter. */
  redis: Redis;
  logger: Logger;
  /**
   * What a request gets when Redis cannot be asked (down, slow, failing). "open" (the default):
   * admitted. "closed": refused with UNAVAILABLE.
   */
  failMode?: "open" | "closed";
  /** Counts the requests admitted because Redis could not be asked, e.g. a prom-client Counter. */
  failOpenCounter?: { inc(): void };
  /** Put before every key, e.g. to separate environments sharing one Redis (none). */
  keyPrefix?: string;
}

/**
 * RPM/TPM limits held across every broker replica: the counts live in Redis, one hash per limit
 * of each quota key (`quota:{key}:rpm`, `quota:{key}:tpm`), and each acquire is one Lua script
 * run atomically (see acquireLua). The keys of one request may hash to different slots, so this
 * needs a standalone Redis (with or without Sentinel), not Redis Cluster.
 *
 * When Redis cannot be asked, requests are admitted (fail open) by default. The quotas mirror the
 * providers' own rate limits and spend; a provider still refuses what goes over its limit (429,
 * which the broker turns into RESOURCE_EXHAUSTED), so a Redis outage costs at worst a short burst
 * of refusals from upstream. Failing closed would instead turn a Redis outage into an outage of all
 * inference. Every such admission is counted (`failOpenCounter`) and logged at most once per 30 s.
 * Where spend must never exceed the quota, choose `failMode: "closed"`.
 */
export function createRedisQuotaLimiter(options: RedisQuotaLimiterOptions): QuotaLimiter {
  const { redis, logger } = options;
  const window = quotaWindow(options);
  const failMode = options.failMode ?? "open";
  const keyPrefix = options.keyPrefix ?? "";
  const throttle = createLogThrottle();
  const commits = new Set<Promise<void>>();
  const windowArgs = [window.bucketMs, window.buckets];
  const redisKey = (key: string, limit: "rpm" | "tpm"): string => `${keyPrefix}quota:${key}:${limit}`;

  const warn = (error: unknown, message: string): void => {
    const suppressed = throttle();
    if (suppressed !== undefined) logger.warn({ err: error, suppressed }, message);
  };

  return {
    async acquire(keys, estimatedTokens, signal) {
      throwIfAborted(signal);
      const checks = quotaChecks(keys, estimatedTokens);
      if (checks.length === 0) return { allowed: true };
      const args = checks.flatMap((check) => [check.max, check.cost]);
      try {
        // An abort stops the wait, not the script: Redis may still count this request.
        const reply = await abortable(signal, runScript(redis, acquireScript, checks.map((check) => redisKey(check.key, check.limit)), [...windowArgs, ...args]));
        return toDecision(reply, checks);
      } catch (error) {
        if (isAbortError(error)) throw error;
        if (failMode === "closed") {
          throw new ServerError(Status.UNAVAILABLE, `quotas cannot be checked: Redis failed (${error instanceof Error ? error.message : String(error)})`);
        }
        options.failOpenCounter?.inc();
        warn(error, "quotas: Redis failed; admitting requests without checking quotas");
        return { allowed: true };
      }
    },

    commit(keys, actualTokens, estimatedTokens) {
      const delta = tokenCount(actualTokens) - tokenCount(estimatedTokens);
      const tpmKeys = keys.filter((key) => key.tpm !== undefined).map((key) => redisKey(key.key, "tpm"));
      if (delta === 0 || tpmKeys.length === 0) return;
      const pending = runScript(redis, commitScript, tpmKeys, [...windowArgs, delta]).then(
        () => undefined,
        (error: unknown) => warn(error, "quotas: Redis failed; a token count correction is lost"),
      );
      commits.add(pending);
      void pending.finally(() => commits.delete(pending));
    },

    async flush() {
      await Promise.all(commits);
    },

    // Nothing else to release: the connection belongs to the caller.
    async close() {
      await Promise.all(commits);
    },
  };
}
