/** Events buffered ahead of a slow consumer before `emit` starts to wait. */
const highWaterMark = 64;

/**
 * Turns a run that pushes events through `emit` into an async generator that yields them, for a
 * streaming handler: `yield* streamRun((emit) => runner.run(request, { ...options, emit }))`. The
 * run waits when the consumer falls 64 events behind. When the consumer stops early (the client
 * went away), later events are dropped; the handler's signal, aborted by then, ends the run.
 * Returns the run's outcome; a run that throws makes the generator throw after the events before it.
 */
export async function* streamRun<Outcome>(start: (emit: (event: Uint8Array) => Promise<void>) => Promise<Outcome>): AsyncGenerator<Uint8Array, Outcome, undefined> {
  const queue: Uint8Array[] = [];
  let wakeConsumer: (() => void) | undefined;
  let wakeProducer: (() => void) | undefined;
  let closed = false;
  let done = false;

  const emit = async (event: Uint8Array): Promise<void> => {
    if (closed) return;
    queue.push(event);
    wakeConsumer?.();
    if (queue.length >= highWaterMark) await new Promise<void>((resolve) => (wakeProducer = resolve));
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
