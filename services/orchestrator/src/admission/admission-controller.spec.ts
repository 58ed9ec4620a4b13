import { ServerError, Status } from "nice-grpc-common";
import { Registry } from "prom-client";
import { createAdmissionController, type AdmissionTicket } from "./admission-controller";

const live = (): AbortSignal => new AbortController().signal;

async function rejectionOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error: unknown) {
    return error as Error;
  }
  throw new Error("expected a rejection");
}

/** Lets the promise callbacks of released tickets run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe("createAdmissionController", () => {
  it("admits up to maxConcurrentRuns at once and reports active, queued and the limits", async () => {
    const admission = createAdmissionController({ maxConcurrentRuns: 2, maxQueuedRuns: 5, queueTimeoutMs: 10_000 });
    const a = await admission.admit("u1", live());
    const b = await admission.admit("u2", live());
    expect(a.waitedMs).toBe(0);
    expect(admission.stats()).toEqual({ active: 2, queued: 0, maxConcurrentRuns: 2, maxQueuedRuns: 5 });

    const third = admission.admit("u3", live());
    await settle();
    expect(admission.stats()).toMatchObject({ active: 2, queued: 1 });
    a.release();
    const c = await third;
    expect(c.waitedMs).toBeGreaterThanOrEqual(0);
    expect(admission.stats()).toMatchObject({ active: 2, queued: 0 });
    // release is idempotent: a second call frees no second slot.
    a.release();
    b.release();
    c.release();
    c.release();
    expect(admission.stats()).toMatchObject({ active: 0, queued: 0 });
  });

  it("is fair across users: with A's 10 runs queued before B's one, B is admitted second, not eleventh", async () => {
    const admission = createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 100, queueTimeoutMs: 10_000 });
    const running = await admission.admit("A", live());
    const order: string[] = [];
    const tickets = new Map<string, Promise<AdmissionTicket>>();
    const enqueue = (user: string, label: string): void => {
      tickets.set(
        label,
        admission.admit(user, live()).then((ticket) => {
          order.push(label);
          return ticket;
        }),
      );
    };
    for (let i = 1; i <= 10; i += 1) enqueue("A", `A${i}`);
    enqueue("B", "B1");
    expect(admission.stats().queued).toBe(11);

    // Each admitted run ends as soon as it starts; the one slot goes round.
    let current = running;
    for (let i = 0; i < 11; i += 1) {
      current.release();
      await settle();
      const admitted = tickets.get(order.at(-1) ?? "");
      if (admitted === undefined || order.length !== i + 1) throw new Error(`expected ${i + 1} admissions, saw ${order.join(",")}`);
      current = await admitted;
    }
    current.release();
    expect(order).toEqual(["A1", "B1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "A10"]);
    expect(admission.stats()).toMatchObject({ active: 0, queued: 0 });
  });

  it("refuses at once with RESOURCE_EXHAUSTED and a retry hint when the queue is full", async () => {
    const admission = createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 2, queueTimeoutMs: 10_000, assumedRunMs: 2_000 });
    const running = await admission.admit("u", live());
    const queued = [admission.admit("u", live()), admission.admit("v", live())];

    const started = performance.now();
    const error = await rejectionOf(admission.admit("w", live()));
    expect(performance.now() - started).toBeLessThan(50);
    expect(error).toBeInstanceOf(ServerError);
    expect((error as ServerError).code).toBe(Status.RESOURCE_EXHAUSTED);
    // Three rounds of one 2 s run ahead of a new request: the two queued and itself.
    expect((error as ServerError).details).toMatch(/1 running, 2 queued \(MAX_CONCURRENT_RUNS=1, MAX_QUEUED_RUNS=2\); retry after ~6000 ms$/);

    running.release();
    (await queued[0])?.release();
    (await queued[1])?.release();
  });

  it("with no queue, refuses as soon as every slot is busy", async () => {
    const admission = createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 0, queueTimeoutMs: 1_000 });
    const running = await admission.admit("u", live());
    await expect(admission.admit("v", live())).rejects.toMatchObject({ code: Status.RESOURCE_EXHAUSTED });
    running.release();
  });

  it("takes a request whose signal aborts out of the queue at once; the slot goes to the next one", async () => {
    const admission = createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 5, queueTimeoutMs: 10_000 });
    const running = await admission.admit("u", live());
    const caller = new AbortController();
    const abandoned = admission.admit("u", caller.signal);
    const next = admission.admit("v", live());
    expect(admission.stats().queued).toBe(2);

    caller.abort(new Error("client cancelled"));
    const error = await rejectionOf(abandoned);
    expect(error.name).toBe("AbortError");
    expect(admission.stats()).toMatchObject({ active: 1, queued: 1 });

    running.release();
    (await next).release();
    expect(admission.stats()).toMatchObject({ active: 0, queued: 0 });
    // An already aborted signal takes no slot.
    await expect(admission.admit("u", caller.signal)).rejects.toMatchObject({ name: "AbortError" });
    expect(admission.stats().active).toBe(0);
  });

  it("ends a wait longer than queueTimeoutMs with RESOURCE_EXHAUSTED and a retry hint", async () => {
    const admission = createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 5, queueTimeoutMs: 100 });
    const running = await admission.admit("u", live());
    const started = performance.now();
    const error = await rejectionOf(admission.admit("v", live()));
    expect(performance.now() - started).toBeGreaterThanOrEqual(90);
    expect(error).toMatchObject({ code: Status.RESOURCE_EXHAUSTED });
    expect((error as ServerError).details).toMatch(/^no agent run slot became free within 100 ms: .*; retry after ~\d+ ms$/);
    expect(admission.stats()).toMatchObject({ active: 1, queued: 0 });
    running.release();
  });

  it("estimates the retry hint from the length of recent runs", async () => {
    const admission = createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 0, queueTimeoutMs: 1_000, assumedRunMs: 50_000 });
    for (let i = 0; i < 60; i += 1) (await admission.admit("u", live())).release();
    const running = await admission.admit("u", live());
    const error = await rejectionOf(admission.admit("u", live()));
    // Runs that end at once pull the estimate down to the floor of 100 ms.
    expect((error as ServerError).details).toMatch(/retry after ~100 ms$/);
    running.release();
  });

  it("exports active and queued gauges, admitted and rejected counters and the queue wait histogram", async () => {
    const registry = new Registry();
    const admission = createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 1, queueTimeoutMs: 10_000, registry });
    const running = await admission.admit("u", live());
    const queued = admission.admit("v", live());
    await rejectionOf(admission.admit("w", live()));

    const scraped = await registry.metrics();
    expect(scraped).toMatch(/^orchestrator_runs_active 1$/m);
    expect(scraped).toMatch(/^orchestrator_runs_queued 1$/m);
    expect(scraped).toMatch(/^orchestrator_runs_admitted_total 1$/m);
    expect(scraped).toMatch(/^orchestrator_runs_rejected_total\{reason="queue_full"\} 1$/m);

    running.release();
    (await queued).release();
    const after = await registry.metrics();
    expect(after).toMatch(/^orchestrator_runs_active 0$/m);
    expect(after).toMatch(/^orchestrator_runs_admitted_total 2$/m);
    expect(after).toMatch(/^orchestrator_admission_queue_wait_seconds_count 2$/m);
  });

  it("checks its options", () => {
    expect(() => createAdmissionController({ maxConcurrentRuns: 0, maxQueuedRuns: 1, queueTimeoutMs: 1 })).toThrow(/maxConcurrentRuns/);
    expect(() => createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: -1, queueTimeoutMs: 1 })).toThrow(/maxQueuedRuns/);
    expect(() => createAdmissionController({ maxConcurrentRuns: 1, maxQueuedRuns: 1, queueTimeoutMs: 0 })).toThrow(/queueTimeoutMs/);
  });
});
