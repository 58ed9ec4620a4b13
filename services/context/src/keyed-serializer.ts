import { untilAborted } from "./abort";

/**
 * Runs work for one key at a time, in arrival order; different keys run side by side. A waiter
 * whose signal aborts leaves the queue at once (those behind it still wait for the ones before it).
 * Within a replica this keeps two calls on one conversation from compacting it twice at once;
 * across replicas, PostgreSQL's row lock and the revision check keep it correct.
 */
export function createKeyedSerializer(): <T>(key: string, signal: AbortSignal, work: () => Promise<T>) => Promise<T> {
  const tails = new Map<string, Promise<void>>();
  return async (key, signal, work) => {
    const previous = tails.get(key) ?? Promise.resolve();
    let release = (): void => {};
    const done = new Promise<void>((resolve) => {
      release = resolve;
    });
    const tail = previous.then(() => done);
    tails.set(key, tail);
    try {
      await untilAborted(previous, signal, "waiting for the conversation");
      return await work();
    } finally {
      release();
      if (tails.get(key) === tail) tails.delete(key);
    }
  };
}
