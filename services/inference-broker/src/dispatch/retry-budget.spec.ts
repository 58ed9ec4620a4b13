import { RetryBudget } from "./retry-budget";

describe("RetryBudget", () => {
  it("allows retries up to a share of the requests in flight, with a floor", () => {
    const budget = new RetryBudget(0.5, 1);
    const requests = Array.from({ length: 4 }, () => budget.startRequest());
    const retries = [budget.tryRetry(), budget.tryRetry()];
    expect(retries.every((release) => release !== undefined)).toBe(true);
    expect(budget.tryRetry()).toBeUndefined();
    retries[0]?.();
    expect(budget.tryRetry()).toBeDefined();
    for (const end of requests) end();
  });

  it("lets a quiet broker retry up to the floor", () => {
    const budget = new RetryBudget(0.2, 2);
    expect(budget.tryRetry()).toBeDefined();
    expect(budget.tryRetry()).toBeDefined();
    expect(budget.tryRetry()).toBeUndefined();
  });
});
