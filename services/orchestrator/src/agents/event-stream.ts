/** Events buffered ahead of a slow consumer before `emit` starts to wait. */
const highWaterMark = 64;

/**
 * Hands one event to the consumer. Resolves at once while fewer than 64 events are queued, else when
 * the consumer has caught up; rejects with the signal's reason when `signal` aborts first, so that a
 * client that stays connected but stops reading cannot hold a cancelled or timed-out run forever.
 */
export type Emit = (event: Uint8Array, signal?: AbortSignal) => Promise<void>;

/**
 * Turns a run that pushes events through `emit` into an async generator that yields them, for a
 * streaming handler: `yield* streamRun((emit) => runner.run(request, { ...options, emit }))`. The
 * run waits when the consumer falls 64 events behind, until the consumer catches up or the signal
 * given to `emit` aborts. When the consumer stops early (the client went away), later events are
 * dropped; the handler's signal, aborted by then, ends the run.
 * Returns the run's outcome; a run that throws makes the generator throw after the events before it.
 */
export async function* streamRun<Outcome>(start: (emit: Emit) => Promise<Outcome>): AsyncGenerator<Uint8Array, Outcome, undefined> {
  const queue: Uint8Array[] = [];
  let wakeConsumer: (() => void) | undefined;
  let wakeProducer: (() => void) | undefined;
  let closed = false;
  let done = false;

  const emit: Emit = async (event, signal) => {
    if (closed) return;
    // Queued even when the signal has aborted: a consumer that still reads gets run_finished.
    queue.push(event);
    wakeConsumer?.();
    if (queue.length < highWaterMark) return;
    signal?.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        wakeProducer = undefined;
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      wakeProducer = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
    });
  };
  const running = start(emit).finally(() => {
    done = true;
    wakeConsumer?.();
  });
  // Observed here so that an early failure is not reported as unhandled before the loop awaits it.
  running.catch(() => undefined);
  try {
    for (;;) {
      const event = queue.shift();
      if (event !== undefined) {
        if (queue.length < highWaterMark) {
          wakeProducer?.();
          wakeProducer = undefined;
        }
        yield event;
        continue;
      }
      if (done) return await running;
      await new Promise<void>((resolve) => (wakeConsumer = resolve));
      wakeConsumer = undefined;
    }
  } finally {
    closed = true;
    queue.length = 0;
    wakeProducer?.();
    // Whatever happens to the consumer, the run is waited for: nothing is left running unobserved.
    await running.catch(() => undefined);
  }
}
