import type { ChatEvent } from "@vlinders/proto";

/**
 * What the dispatcher needs from the cache, quota, vault and usage modules. Each has an
 * implementation over Redis or PostgreSQL and an in-process one; the dispatcher knows neither.
 */
export interface ResponseCachePort {
  get(key: string, signal: AbortSignal): Promise<ChatEvent[] | undefined>;
  /** Keeps only complete, successful answers; never rejects. */
  set(key: string, events: readonly ChatEvent[], signal?: AbortSignal): Promise<void>;
}

export interface QuotaKey {
  key: string;
  rpm?: number;
  tpm?: number;
}

export type QuotaDecision = { allowed: true } | { allowed: false; key: string; limit: "rpm" | "tpm"; retryAfterMs: number };

export interface QuotaPort {
  acquire(keys: QuotaKey[], estimatedTokens: number, signal: AbortSignal): Promise<QuotaDecision>;
  /** Corrects the token count once the real usage is known; never throws, never blocks. */
  commit(keys: QuotaKey[], actualTokens: number, estimatedTokens: number): void;
}

export interface KeyVaultPort {
  /** The provider's API key, decrypted for this dispatch only. */
  retrieve(provider: string, signal: AbortSignal): Promise<string>;
}

export interface UsagePort {
  /** Buffers a usage row; synchronous, never throws. */
  record(row: { provider: string; model: string; promptTokens: number; completionTokens: number }): void;
}
