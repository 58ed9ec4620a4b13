import type { QuotaKey, QuotaWindowOptions } from "./quota-types";

/** One limit of one key, as checked. */
export interface QuotaCheck {
  key: string;
  limit: "rpm" | "tpm";
  max: number;
  /** What this request counts against the limit. */
  cost: number;
}

/** The window in bucket terms, from the options; throws on options that cannot work. */
export function quotaWindow(options: QuotaWindowOptions): { bucketMs: number; buckets: number; windowMs: number } {
  const windowMs = options.windowMs ?? 60_000;
  const buckets = options.buckets ?? 60;
  const bucketMs = windowMs / buckets;
  if (!Number.isSafeInteger(buckets) || buckets <= 0 || !Number.isSafeInteger(bucketMs) || bucketMs <= 0) {
    throw new RangeError(`quotas: windowMs (${windowMs}) must be a positive multiple of buckets (${buckets})`);
  }
  return { bucketMs, buckets, windowMs };
}

/**
 * Token counts as whole, non-negative numbers (the counters are integers). Rounded up, so that the
 * estimate counted at acquire and the one given to commit round the same way.
 */
export function tokenCount(tokens: number): number {
  return Number.isFinite(tokens) && tokens > 0 ? Math.ceil(tokens) : 0;
}

/**
 * The limits to check for a request, in the order given. A limit must be a positive number (a
 * limit of 0 would be read as "unlimited" by some and "nothing" by others; neither is said here).
 */
export function quotaChecks(keys: readonly QuotaKey[], estimatedTokens: number): QuotaCheck[] {
  const checks: QuotaCheck[] = [];
  const tokens = tokenCount(estimatedTokens);
  for (const { key, rpm, tpm } of keys) {
    if (rpm !== undefined) checks.push({ key, limit: "rpm", max: positiveLimit(key, "rpm", rpm), cost: 1 });
    if (tpm !== undefined) checks.push({ key, limit: "tpm", max: positiveLimit(key, "tpm", tpm), cost: tokens });
  }
  return checks;
}

function positiveLimit(key: string, limit: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`quotas: ${key}: ${limit} must be a positive number (got ${value})`);
  return Math.floor(value) || 1;
}

/**
 * The sliding-window rule, shared by the in-process limiter and mirrored line for line by the Lua
 * script of the Redis limiter. `counts` holds the live buckets of one limit (bucket index -> count,
 * counts may be negative after a correction). Returns undefined when `cost` fits, otherwise the
 * milliseconds until enough buckets have left the window for it to fit.
 *
 * A cost larger than the whole limit is checked as the limit itself: such a request waits for an
 * empty window rather than being refused forever, and is then counted in full.
 */
export function slidingWindowWait(
  counts: ReadonlyMap<number, number>,
  max: number,
  cost: number,
  now: number,
  window: { bucketMs: number; buckets: number },
): number | undefined {
  const needed = Math.min(cost, max);
  let used = 0;
  for (const count of counts.values()) used += count;
  if (Math.max(used, 0) + needed <= max) return undefined;
  const oldestFirst = [...counts.entries()].sort(([a], [b]) => a - b);
  for (const [bucket, count] of oldestFirst) {
    used -= count;
    if (Math.max(used, 0) + needed <= max) return (bucket + window.buckets) * window.bucketMs - now;
  }
  // Unreachable: once every bucket has left, used is 0 and needed <= max.
  return window.buckets * window.bucketMs;
}
