import { StartLimiter } from "./start-limiter";

/** A start that ends when the test says so. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

describe("the start limiter", () => {
  it("runs at most `limit` starts at once and the others in arrival order", async () => {
    const limiter = new StartLimiter(2);
    const gates = Array.from({ length: 5 }, () => gate());
    const started: number[] = [];
    const runs = gates.map((g, index) =>
      limiter.run(async () => {
        started.push(index);
        await g.promise;
        return index;
      }),
    );
    await new Promise(setImmediate);
    expect(started).toEqual([0, 1]);
    expect([limiter.active, limiter.waiting]).toEqual([2, 3]);
    gates[1]?.open();
    await new Promise(setImmediate);
    expect(started).toEqual([0, 1, 2]);
    expect([limiter.active, limiter.waiting]).toEqual([2, 2]);
    for (const g of gates) g.open();
    expect(await Promise.all(runs)).toEqual([0, 1, 2, 3, 4]);
    expect(started).toEqual([0, 1, 2, 3, 4]);
    expect([limiter.active, limiter.waiting]).toEqual([0, 0]);
  });

  it("hands the turn on when a start fails", async () => {
    const limiter = new StartLimiter(1);
    const failing = limiter.run(async () => {
      throw new Error("create failed");
    });
    const next = limiter.run(async () => "next");
    await expect(failing).rejects.toThrow("create failed");
    await expect(next).resolves.toBe("next");
    expect(limiter.active).toBe(0);
  });

  it("refuses a limit that would block every start", () => {
    expect(() => new StartLimiter(0)).toThrow(RangeError);
  });
});
