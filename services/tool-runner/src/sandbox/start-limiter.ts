/**
 * A counting semaphore for container starts. Each start costs the daemon, runc and the kernel a
 * burst of CPU; a batch over many workspaces would otherwise start dozens of cold containers at
 * once on a small host and make every one of them (and the commands already running) slow.
 * Waiters are served in arrival order.
 */
export class StartLimiter {
  readonly #limit: number;
  #active = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`the start limit must be a positive integer, not ${limit}`);
    this.#limit = limit;
  }

  /** Starts running right now. */
  get active(): number {
    return this.#active;
  }

  /** Waiting for a turn. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Runs `work` once fewer than `limit` others run; its turn is handed on when it settles. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#active >= this.#limit) {
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else {
      this.#active += 1;
    }
    try {
      return await work();
    } finally {
      const next = this.#waiting.shift();
      // The turn passes straight to the next waiter, so a newcomer cannot slip in between.
      if (next !== undefined) next();
      else this.#active -= 1;
    }
  }
}
