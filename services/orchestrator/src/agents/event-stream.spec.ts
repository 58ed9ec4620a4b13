import { streamRun } from "./event-stream";

const bytes = (value: number) => Uint8Array.of(value);

describe("streamRun", () => {
  it("yields what the run emits, in order, and returns its outcome", async () => {
    const stream = streamRun(async (emit) => {
      for (let value = 0; value < 200; value += 1) await emit(bytes(value));
      return "done";
    });
    const seen: number[] = [];
    let result = await stream.next();
    while (!result.done) {
      seen.push(result.value[0]!);
      result = await stream.next();
    }
    expect(seen).toEqual(Array.from({ length: 200 }, (_, value) => value));
    expect(result.value).toBe("done");
  });

  it("throws the run's error after the events before it", async () => {
    const seen: number[] = [];
    const consume = async () => {
      for await (const event of streamRun(async (emit) => {
        await emit(bytes(1));
        throw new Error("model call failed");
      })) {
        seen.push(event[0]!);
      }
    };
    await expect(consume()).rejects.toThrow("model call failed");
    expect(seen).toEqual([1]);
  });

  it("waits for the run when the consumer stops early, dropping later events", async () => {
    const controller = new AbortController();
    let finished = false;
    for await (const event of streamRun(async (emit) => {
      await emit(bytes(1));
      await new Promise((resolve) => controller.signal.addEventListener("abort", resolve, { once: true }));
      await emit(bytes(2));
      finished = true;
    })) {
      expect(event[0]).toBe(1);
      setTimeout(() => controller.abort(), 10);
      break;
    }
    expect(finished).toBe(true);
  });

  it("stops a waiting emit when its signal aborts, so a consumer that stopped reading cannot hold the run", async () => {
    const controller = new AbortController();
    let outcome: Promise<string> | undefined;
    const stream = streamRun((emit) => {
      outcome = (async () => {
        try {
          // Far more than the consumer will read: the run waits once 64 are queued.
          for (let value = 0; value < 1_000; value += 1) await emit(bytes(value % 256), controller.signal);
          return "all emitted";
        } catch (error: unknown) {
          return controller.signal.aborted && error === controller.signal.reason ? "stopped by the signal" : `unexpected: ${String(error)}`;
        }
      })();
      return outcome;
    });
    // The consumer reads one event, then neither reads nor goes away.
    await stream.next();
    controller.abort();
    await expect(outcome).resolves.toBe("stopped by the signal");
    await stream.return("closed");
  });
});
