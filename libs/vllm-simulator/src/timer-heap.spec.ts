import { TimerHeap, type TimerEntry } from "./timer-heap";

function entry(name: string, fired: string[], onFire?: (self: TimerEntry, now: number) => void): TimerEntry {
  const self: TimerEntry = {
    dueAt: 0,
    heapIndex: -1,
    fire(now) {
      fired.push(name);
      onFire?.(self, now);
    },
  };
  return self;
}

const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until the heap has fired everything (a loaded machine may be slow), or fails after 5 s. */
async function drained(heap: TimerHeap): Promise<void> {
  const deadline = performance.now() + 5_000;
  while (heap.size > 0 && performance.now() < deadline) await settle(5);
  expect(heap.size).toBe(0);
}

describe("TimerHeap", () => {
  let heap: TimerHeap;

  beforeEach(() => {
    heap = new TimerHeap();
  });

  afterEach(() => {
    heap.clear();
  });

  it("fires entries in the order of their due times, whatever the order they were scheduled in", async () => {
    const fired: string[] = [];
    const now = performance.now();
    const delays = [40, 5, 25, 15, 35, 10, 30, 20];
    delays.forEach((delay) => heap.schedule(entry(`t${delay}`, fired), now + delay));
    await drained(heap);
    expect(fired).toEqual([...delays].sort((a, b) => a - b).map((delay) => `t${delay}`));
    expect(heap.size).toBe(0);
  });

  it("does not fire a cancelled entry, and moves a rescheduled one", async () => {
    const fired: string[] = [];
    const now = performance.now();
    const cancelled = entry("cancelled", fired);
    const moved = entry("moved", fired);
    heap.schedule(cancelled, now + 5);
    heap.schedule(moved, now + 5);
    heap.schedule(entry("middle", fired), now + 15);
    heap.cancel(cancelled);
    heap.cancel(cancelled);
    heap.schedule(moved, now + 30);
    expect(cancelled.heapIndex).toBe(-1);
    await drained(heap);
    expect(fired).toEqual(["middle", "moved"]);
  });

  it("lets an entry schedule itself again from fire, as a stream does for its next token", async () => {
    const fired: string[] = [];
    let remaining = 5;
    const ticking = entry("tick", fired, (self, now) => {
      if (--remaining > 0) heap.schedule(self, now + 2);
    });
    heap.schedule(ticking, performance.now());
    await drained(heap);
    expect(fired).toEqual(["tick", "tick", "tick", "tick", "tick"]);
  });

  it("keeps a thousand entries in order when many are cancelled on the way", async () => {
    const fired: number[] = [];
    const now = performance.now();
    const entries = Array.from({ length: 1000 }, (_, index) => {
      const item: TimerEntry = { dueAt: 0, heapIndex: -1, fire: () => fired.push(index) };
      // Due times in a scrambled order, all within 20 ms.
      heap.schedule(item, now + ((index * 7919) % 1000) / 50);
      return item;
    });
    entries.forEach((item, index) => {
      if (index % 3 === 0) heap.cancel(item);
    });
    await drained(heap);
    const expected = entries
      .map((item, index) => ({ index, dueAt: item.dueAt }))
      .filter(({ index }) => index % 3 !== 0)
      .sort((a, b) => a.dueAt - b.dueAt)
      .map(({ index }) => index);
    expect(fired).toEqual(expected);
  });

  it("forgets everything on clear", async () => {
    const fired: string[] = [];
    const item = entry("never", fired);
    heap.schedule(item, performance.now() + 5);
    heap.clear();
    expect(item.heapIndex).toBe(-1);
    await settle(20);
    expect(fired).toEqual([]);
  });
});
