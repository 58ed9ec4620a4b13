import { throwIfAborted } from "abort-controller-x";
import type { QuotaDenial, QuotaLimiter, QuotaWindowOptions } from "./quota-types";
import { quotaChecks, quotaWindow, slidingWindowWait, tokenCount } from "./sliding-window";

/** Options of {@link createInProcessQuotaLimiter}. */
export interface InProcessQuotaLimiterOptions extends QuotaWindowOptions {
  /** The clock, for tests. */
  now?: () => number;
}

/**
 * RPM/TPM limits counted in this process: the embedded default when REDIS_URL is unset. Each
 * broker replica counts on its own, so with N replicas up to N times each limit gets through; use
 * the Redis limiter to hold a limit across replicas. Same rules as the Redis limiter otherwise.
 */
export function createInProcessQuotaLimiter(options: InProcessQuotaLimiterOptions = {}): QuotaLimiter {
  const window = quotaWindow(options);
  const now = options.now ?? Date.now;
  /** Per "key\0limit": the live buckets (bucket index -> count). */
  const counters = new Map<string, Map<number, number>>();

  /** The live buckets of one limit, dropping those that have left the window. */
  const liveBuckets = (id: string, time: number): Map<number, number> => {
    let buckets = counters.get(id);
    if (!buckets) {
      buckets = new Map();
      counters.set(id, buckets);
    }
    const oldest = Math.floor(time / window.bucketMs) - window.buckets + 1;
    for (const bucket of buckets.keys()) if (bucket < oldest) buckets.delete(bucket);
    return buckets;
  };

  const add = (buckets: Map<number, number>, time: number, amount: number): void => {
    if (amount === 0) return;
    const bucket = Math.floor(time / window.bucketMs);
    buckets.set(bucket, (buckets.get(bucket) ?? 0) + amount);
  };

  /** Drops limits with nothing left in the window, so that keys seen once do not stay forever. */
  const forgetIdle = (ids: readonly string[]): void => {
    for (const id of ids) if (counters.get(id)?.size === 0) counters.delete(id);
  };

  return {
    async acquire(keys, estimatedTokens, signal) {
      throwIfAborted(signal);
      const time = now();
      const limits = quotaChecks(keys, estimatedTokens).map((check) => {
        const id = `${check.key}\0${check.limit}`;
        return { check, id, buckets: liveBuckets(id, time) };
      });
      let denial: QuotaDenial | undefined;
      for (const { check, buckets } of limits) {
        const wait = slidingWindowWait(buckets, check.max, check.cost, time, window);
        if (wait !== undefined && (!denial || wait > denial.retryAfterMs)) {
          denial = { allowed: false, key: check.key, limit: check.limit, retryAfterMs: wait };
        }
      }
      if (!denial) for (const { check, buckets } of limits) add(buckets, time, check.cost);
      forgetIdle(limits.map((limit) => limit.id));
      return denial ?? { allowed: true };
    },

    commit(keys, actualTokens, estimatedTokens) {
      const delta = tokenCount(actualTokens) - tokenCount(estimatedTokens);
      if (delta === 0) return;
      const time = now();
      for (const { key, tpm } of keys) {
        if (tpm !== undefined) add(liveBuckets(`${key}\0tpm`, time), time, delta);
      }
    },

    async flush() {
      // Corrections are applied as they are committed.
    },

    async close() {
      counters.clear();
    },
  };
}
