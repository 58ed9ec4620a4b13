/**
 * Bounds retries across the whole broker, as Envoy's retry budgets do: when a worker dies, its
 * requests fail over, but a fleet-wide outage must not double the load on what is left. A retry is
 * allowed while retries in flight stay under a share of the requests in flight (with a floor, so
 * that a quiet broker can still retry).
 */
export class RetryBudget {
  private activeRequests = 0;
  private activeRetries = 0;

  constructor(
    private readonly ratio = 0.2,
    private readonly minimum = 10,
  ) {}

  startRequest(): () => void {
    this.activeRequests += 1;
    let ended = false;
    return () => {
      if (!ended) {
        ended = true;
        this.activeRequests -= 1;
      }
    };
  }

  /** Returns a release function, or undefined when the budget is spent. */
  tryRetry(): (() => void) | undefined {
    if (this.activeRetries >= Math.max(this.minimum, this.ratio * this.activeRequests)) return undefined;
    this.activeRetries += 1;
    let released = false;
    return () => {
      if (!released) {
        released = true;
        this.activeRetries -= 1;
      }
    };
  }
}
