import { abortErrorFor } from "@vlinders/database";

/** A write waiting in a WriteBatcher, with what settles its caller's promise (later calls are ignored). */
export interface QueuedWrite<W> {
  readonly write: W;
  resolve(): void;
  reject(error: unknown): void;
}

export interface WriteBatcher<W> {
  /**
   * Queues a write. Resolves once the batch that carried it is written, rejects when that failed.
   * `signal` is heeded while the write waits in the queue (it is dropped and rejects at once);
   * once its batch is being written, the caller learns how that ended, as with any statement
   * already sent: a write that lands is never reported as given up.
   */
  submit(write: W, signal?: AbortSignal): Promise<void>;
  /** Puts writes back at the front of the queue, for the next batch. */
  requeue(entries: ReadonlyArray<QueuedWrite<W>>): void;
  /** Resolves once nothing is queued or being written. */
  drained(): Promise<void>;
}

/**
 * Group commit: writes that arrive while a batch is being written wait and go together in the
 * next one, so that N runs writing at once cost a few statements instead of N. A write that
 * arrives when nothing is being written goes out at the next turn of the event loop, so a lone
 * write waits for nobody.
 *
 * `writeBatch` settles every entry it is given. If it throws, the entries it left unsettled are
 * rejected with that error: no caller waits forever.
 */
export function createWriteBatcher<W>(options: {
  writeBatch: (entries: Array<QueuedWrite<W>>) => Promise<void>;
  /** The most writes in one batch; the rest wait for the next. */
  maxBatch: number;
}): WriteBatcher<W> {
  const queue: Array<QueuedWrite<W>> = [];
  let writing: Promise<void> | undefined;

  function schedule(): void {
    if (writing !== undefined || queue.length === 0) return;
    writing = new Promise<void>((resolve) => setImmediate(resolve))
      .then(async () => {
        while (queue.length > 0) {
          const batch = queue.splice(0, options.maxBatch);
          try {
            await options.writeBatch(batch);
          } catch (error: unknown) {
            for (const entry of batch) entry.reject(error);
          }
        }
      })
      .finally(() => {
        writing = undefined;
        schedule();
      });
  }

  return {
    submit(write, signal) {
      if (signal?.aborted) return Promise.reject(abortErrorFor(signal));
      return new Promise<void>((resolve, reject) => {
        let settled = false;
        const onAbort = (): void => {
          const index = queue.indexOf(entry);
          if (index < 0) return;
          queue.splice(index, 1);
          settle(() => reject(abortErrorFor(signal as AbortSignal)));
        };
        const settle = (how: () => void): void => {
          if (settled) return;
          settled = true;
          signal?.removeEventListener("abort", onAbort);
          how();
        };
        const entry: QueuedWrite<W> = {
          write,
          resolve: () => settle(resolve),
          reject: (error) => settle(() => reject(error)),
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        queue.push(entry);
        schedule();
      });
    },

    requeue(entries) {
      queue.unshift(...entries);
      schedule();
    },

    async drained() {
      while (writing !== undefined) await writing;
    },
  };
}
