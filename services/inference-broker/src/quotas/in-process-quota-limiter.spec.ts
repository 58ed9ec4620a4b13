import { createInProcessQuotaLimiter } from "./in-process-quota-limiter";

const live = (): AbortSignal => new AbortController().signal;

describe("createInProcessQuotaLimiter", () => {
  it("tells exactly when the oldest counted request leaves the minute", async () => {
    let now = 1_000_500; // 500 ms into the second 1000
    const quotas = createInProcessQuotaLimiter({ now: () => now });
    const keys = [{ key: "provider:p", rpm: 1 }];
    expect(await quotas.acquire(keys, 0, live())).toEqual({ allowed: true });
    now += 10_000;
    // Counted in second 1000, which leaves the window when second 1060 starts.
    expect(await quotas.acquire(keys, 0, live())).toEqual({ allowed: false, key: "provider:p", limit: "rpm", retryAfterMs: 49_500 });
    now = 1_059_999;
    expect(await quotas.acquire(keys, 0, live())).toEqual({ allowed: false, key: "provider:p", limit: "rpm", retryAfterMs: 1 });
    now = 1_060_000;
    expect(await quotas.acquire(keys, 0, live())).toEqual({ allowed: true });
  });

  it("does not let twice the limit through around the turn of a minute, as fixed windows would", async () => {
    let now = 59_900;
    const quotas = createInProcessQuotaLimiter({ now: () => now });
    const keys = [{ key: "provider:p", rpm: 2 }];
    expect((await quotas.acquire(keys, 0, live())).allowed).toBe(true);
    expect((await quotas.acquire(keys, 0, live())).allowed).toBe(true);
    now = 60_100;
    expect(await quotas.acquire(keys, 0, live())).toMatchObject({ allowed: false, limit: "rpm" });
  });

  it("counts per process only: two replicas each admit the whole limit", async () => {
    const keys = [{ key: "provider:p", rpm: 1 }];
    const a = createInProcessQuotaLimiter();
    const b = createInProcessQuotaLimiter();
    expect(await a.acquire(keys, 0, live())).toEqual({ allowed: true });
    expect(await b.acquire(keys, 0, live())).toEqual({ allowed: true });
  });
});
