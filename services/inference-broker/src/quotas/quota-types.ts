/** The limits of one quota key, e.g. `provider:openai` or `model:gpt-4o`. An unset limit is no limit. */
export interface QuotaKey {
  key: string;
  /** Requests per window (a minute by default). */
  rpm?: number;
  /** Tokens (prompt and completion) per window. */
  tpm?: number;
}

/** A refusal: which limit of which key, and when to try again. */
export interface QuotaDenial {
  allowed: false;
  /** The key whose limit was reached (of several, the one that frees up last). */
  key: string;
  limit: "rpm" | "tpm";
  /** When the request would be allowed if nothing else came in meanwhile; in (0, window]. */
  retryAfterMs: number;
}

/** What {@link QuotaLimiter.acquire} decided. */
export type QuotaDecision = { allowed: true } | QuotaDenial;

/**
 * Requests-per-minute and tokens-per-minute limits, checked before a request is dispatched.
 *
 * Each limit is a sliding window made of buckets (60 of one second by default): a request counts
 * against a limit from the moment it is admitted until its bucket leaves the window, between 59
 * and 60 s later. Unlike fixed minute windows, this never lets twice the limit through around the
 * turn of a minute, and it needs a fixed amount of memory per key whatever the traffic.
 */
export interface QuotaLimiter {
  /**
   * Admits the request under every limit of every key, or under none: when one limit is reached
   * nothing is counted anywhere. A request counts 1 against rpm and `estimatedTokens` against tpm.
   * Rejects with an AbortError when `signal` aborts, with a RangeError for a limit that is not a
   * positive number, and, from a Redis limiter that fails closed, with UNAVAILABLE when Redis
   * cannot be asked.
   */
  acquire(keys: readonly QuotaKey[], estimatedTokens: number, signal: AbortSignal): Promise<QuotaDecision>;
  /**
   * Corrects the tpm counts of an admitted request once its real token count is known, by the
   * difference from the estimate. Returns at once; the correction is applied in the background
   * (errors are logged), and {@link flush} and {@link close} wait for it.
   */
  commit(keys: readonly QuotaKey[], actualTokens: number, estimatedTokens: number): void;
  /** Resolves once the corrections committed so far are applied (or failed); never rejects. */
  flush(): Promise<void>;
  /** Waits for corrections still in progress. Does not close a Redis connection it was given. */
  close(): Promise<void>;
}

/** The window options both implementations share. */
export interface QuotaWindowOptions {
  /** Length of the sliding window (60000: per minute). Shorter in tests. */
  windowMs?: number;
  /** Buckets the window is made of (60); windowMs must be a multiple of it. */
  buckets?: number;
}
