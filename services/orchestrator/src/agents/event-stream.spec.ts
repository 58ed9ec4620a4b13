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
});
