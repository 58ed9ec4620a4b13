/**
 * How long a caller refused with RESOURCE_EXHAUSTED should wait before it tries again, sent in the
 * `retry-after-ms` trailer. An error carries it as `retryAfterMs`: the call pipeline puts it in the
 * trailer of the failed call, and the internal client reads it back from a downstream's trailer
 * onto the ClientError it throws, so the hint crosses every hop of the mesh to the caller.
 */
export const retryAfterTrailer = "retry-after-ms";

/** `error` with a retry hint of `milliseconds`. */
export function withRetryAfter<E extends Error>(error: E, milliseconds: number): E {
  return Object.assign(error, { retryAfterMs: Math.max(0, Math.ceil(milliseconds)) });
}

/** The retry hint an error carries, if any. */
export function retryAfterOf(error: unknown): number | undefined {
  const value = (error as { retryAfterMs?: unknown } | null)?.retryAfterMs;
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/** The hint of a `retry-after-ms` header or trailer value, if it is one. */
export function parseRetryAfter(value: unknown): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (typeof text !== "string" || !/^\d{1,12}$/.test(text)) return undefined;
  return Number(text);
}
