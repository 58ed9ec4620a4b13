/** Something that wants to be called back at a time: the heap keeps its place inside it. */
export interface TimerEntry {
  /** When it is due, in `performance.now()` milliseconds. Set by the heap. */
  dueAt: number;
  /** Its place in the heap, -1 when not scheduled. Owned by the heap; start it at -1. */
  heapIndex: number;
  /** Called once when due. It may schedule itself again. It must not throw. */
  fire(now: number): void;
}

/**
 * One Node.js timer for any number of timed entries (a min-heap on due time), so that thousands of
 * streams, each waiting for its next token, cost neither a timer nor a closure per token: the heap
 * stores the entries themselves, and entries due within the same millisecond fire in one wake-up.
 */
export class TimerHeap {
  private readonly heap: TimerEntry[] = [];
  private timer: NodeJS.Timeout | undefined;
  private armedFor = Infinity;
  private firing = false;

  get size(): number {
    return this.heap.length;
  }

  /** Schedules the entry at `dueAt`, moving it if it was already scheduled. */
  schedule(entry: TimerEntry, dueAt: number): void {
    if (entry.heapIndex >= 0) this.remove(entry);
    entry.dueAt = dueAt;
    entry.heapIndex = this.heap.length;
    this.heap.push(entry);
    this.siftUp(entry.heapIndex);
    // While firing, the heap re-arms once at the end of the batch.
    if (!this.firing && dueAt < this.armedFor) this.arm();
  }

  /** Unschedules the entry; nothing happens if it was not scheduled. */
  cancel(entry: TimerEntry): void {
    if (entry.heapIndex >= 0) this.remove(entry);
    // The armed timer stays: waking up for nothing once is cheaper than re-arming on every cancel.
  }

  /** Unschedules everything. */
  clear(): void {
    for (const entry of this.heap) entry.heapIndex = -1;
    this.heap.length = 0;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Infinity;
  }

  private arm(): void {
    clearTimeout(this.timer);
    const first = this.heap[0];
    if (first === undefined) {
      this.timer = undefined;
      this.armedFor = Infinity;
      return;
    }
    this.armedFor = first.dueAt;
    this.timer = setTimeout(this.onTimeout, Math.max(0, Math.ceil(first.dueAt - performance.now())));
  }

  private readonly onTimeout = (): void => {
    this.timer = undefined;
    this.armedFor = Infinity;
    const now = performance.now();
    // Node's timers count whole milliseconds from a cached loop time, so they may wake up to 1 ms
    // before the exact due time: anything due before the next millisecond fires now. An entry that
    // schedules itself at least 1 ms ahead waits for the next wake-up, so this loop always ends.
    const horizon = now + 1;
    this.firing = true;
    try {
      for (let first = this.heap[0]; first !== undefined && first.dueAt < horizon; first = this.heap[0]) {
        this.remove(first);
        first.fire(now);
      }
    } finally {
      this.firing = false;
      this.arm();
    }
  };

  private remove(entry: TimerEntry): void {
    const index = entry.heapIndex;
    const last = this.heap.pop() as TimerEntry;
    entry.heapIndex = -1;
    if (last === entry) return;
    this.heap[index] = last;
    last.heapIndex = index;
    this.siftUp(index);
    this.siftDown(last.heapIndex);
  }

  private siftUp(index: number): void {
    const heap = this.heap;
    const entry = heap[index] as TimerEntry;
    while (index > 0) {
      const parentIndex = (index - 1) >> 1;
      const parent = heap[parentIndex] as TimerEntry;
      if (parent.dueAt <= entry.dueAt) break;
      heap[index] = parent;
      parent.heapIndex = index;
      index = parentIndex;
    }
    heap[index] = entry;
    entry.heapIndex = index;
  }

  private siftDown(index: number): void {
    const heap = this.heap;
    const length = heap.length;
    const entry = heap[index] as TimerEntry;
    for (;;) {
      const left = 2 * index + 1;
      if (left >= length) break;
      const right = left + 1;
      let child = left;
      if (right < length && (heap[right] as TimerEntry).dueAt < (heap[left] as TimerEntry).dueAt) child = right;
      const smaller = heap[child] as TimerEntry;
      if (smaller.dueAt >= entry.dueAt) break;
      heap[index] = smaller;
      smaller.heapIndex = index;
      index = child;
    }
    heap[index] = entry;
    entry.heapIndex = index;
  }
}
