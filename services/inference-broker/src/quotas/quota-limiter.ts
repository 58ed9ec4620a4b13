// What the broker imports for quotas: the limiter's contract and its two implementations.
export * from "./quota-types";
export { quotaChecks, quotaWindow, slidingWindowWait, tokenCount, type QuotaCheck } from "./sliding-window";
export { createInProcessQuotaLimiter, type InProcessQuotaLimiterOptions } from "./in-process-quota-limiter";
export { createRedisQuotaLimiter, type RedisQuotaLimiterOptions } from "./redis-quota-limiter";
