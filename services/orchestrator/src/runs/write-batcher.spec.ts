import { createWriteBatcher, type QueuedWrite } from "./write-batcher";

/** A writeBatch that records its batches and finishes each one when the test says so. */
function heldWriter() {
  const batches: string[][] = [];
  const release: Array<() => void> = [];
  const writeBatch = async (entries: Array<QueuedWrite<string>>): Promise<void> => {
    batches.push(entries.map((entry) => entry.write));
    await new Promise<void>((resolve) => release.push(resolve));
    for (const entry of entries) entry.resolve();
  };
  /** Waits until a batch is being written, then lets it finish. */
  const releaseNext = async (): Promise<void> => {
    await whileWriting();
    release.shift()?.();
  };
  const whileWriting = async (): Promise<void> => {
    while (release.length === 0) await new Promise((resolve) => setImmediate(resolve));
  };
  return { batches, writeBatch, releaseNext, whileWriting };
}

describe("createWriteBatcher", () => {
  it("sends what arrives together as one batch, and what arrives while it is written as the next", async () => {
    const writer = heldWriter();
    const batcher = createWriteBatcher({ writeBatch: writer.writeBatch, maxBatch: 100 });
    const first = [batcher.submit("a"), batcher.submit("b")];
    await writer.whileWriting();
    const second = [batcher.submit("c"), batcher.submit("d"), batcher.submit("e")];
    await writer.releaseNext();
    await Promise.all(first);
    await writer.releaseNext();
    await Promise.all(second);
    expect(writer.batches).toEqual([["a", "b"], ["c", "d", "e"]]);
    await batcher.drained();
  });

  it("splits a queue longer than maxBatch", async () => {
    const batches: string[][] = [];
    const batcher = createWriteBatcher<string>({
      maxBatch: 2,
      writeBatch: async (entries) => {
        batches.push(entries.map((entry) => entry.write));
        for (const entry of entries) entry.resolve();
      },
    });
    await Promise.all(["a", "b", "c", "d", "e"].map((write) => batcher.submit(write)));
    expect(batches).toEqual([["a", "b"], ["c", "d"], ["e"]]);
  });

  it("rejects the writes of a batch whose writer threw, and goes on with the next", async () => {
    let calls = 0;
    const batcher = createWriteBatcher<string>({
      maxBatch: 1,
      writeBatch: async (entries) => {
        calls += 1;
        if (calls === 1) throw new Error("connection lost");
        for (const entry of entries) entry.resolve();
      },
    });
    const results = await Promise.allSettled([batcher.submit("a"), batcher.submit("b")]);
    expect(results).toEqual([
      { status: "rejected", reason: new Error("connection lost") },
      { status: "fulfilled", value: undefined },
    ]);
  });

  it("reports how a write already being written ended, even if its signal aborts meanwhile", async () => {
    const writer = heldWriter();
    const batcher = createWriteBatcher({ writeBatch: writer.writeBatch, maxBatch: 100 });
    const controller = new AbortController();
    const sent = batcher.submit("a", controller.signal);
    await writer.whileWriting();
    controller.abort(new Error("caller gone"));
    await writer.releaseNext();
    await expect(sent).resolves.toBeUndefined();
  });

  it("drops a queued write whose signal aborts, and rejects it with an AbortError", async () => {
    const writer = heldWriter();
    const batcher = createWriteBatcher({ writeBatch: writer.writeBatch, maxBatch: 100 });
    const first = batcher.submit("a");
    await writer.whileWriting();
    // "b" waits behind the batch being written, and is abandoned there.
    const controller = new AbortController();
    const abandoned = batcher.submit("b", controller.signal);
    controller.abort(new Error("caller gone"));
    await expect(abandoned).rejects.toMatchObject({ name: "AbortError" });
    const next = batcher.submit("c");
    await writer.releaseNext();
    await first;
    await writer.releaseNext();
    await next;
    await batcher.drained();
    expect(writer.batches).toEqual([["a"], ["c"]]);

    const already = new AbortController();
    already.abort();
    await expect(batcher.submit("d", already.signal)).rejects.toMatchObject({ name: "AbortError" });
  });
});
