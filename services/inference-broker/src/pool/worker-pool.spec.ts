import { WorkerHealth } from "@vlinders/proto";
import type { ModelCatalog } from "../registry/model-registry";
import { WorkerPool } from "./worker-pool";

const catalog = (workerIds: string[]): ModelCatalog => ({
  models: [{ id: "m", aliases: [], maxContextTokens: 0, workers: workerIds.map((id) => ({ id, url: `http://${id}:8000` })) }],
});

describe("WorkerPool", () => {
  it("admits a new worker before its first probe, then ejects it after consecutive failures until cooldown and a passing probe", () => {
    const pool = new WorkerPool({ ejectAfterFailures: 2, ejectCooldownMs: 0, metricsStaleAfterMs: 1_000 });
    pool.sync(catalog(["a"]));
    const model = catalog(["a"]).models[0]!;
    const worker = pool.get("a")!;
    expect(pool.candidatesFor(model)).toEqual([worker]);
    pool.recordFailure(worker, "boom 1");
    expect(worker.health).toBe(WorkerHealth.WORKER_HEALTH_UNKNOWN);
    pool.recordFailure(worker, "boom 2");
    expect(worker.health).toBe(WorkerHealth.WORKER_HEALTH_EJECTED);
    // All of the model's workers are ejected: rather than none, all are tried (panic mode).
    expect(pool.candidatesFor(model)).toEqual([worker]);
    expect(pool.status()[0]).toMatchObject({ id: "a", health: WorkerHealth.WORKER_HEALTH_EJECTED, consecutiveFailures: 2, lastError: "boom 2" });
    pool.recordProbeSuccess(worker);
    expect(worker.health).toBe(WorkerHealth.WORKER_HEALTH_HEALTHY);
    expect(worker.consecutiveFailures).toBe(0);
  });

  it("routes around an ejected worker while another is healthy", () => {
    const pool = new WorkerPool({ ejectAfterFailures: 1, ejectCooldownMs: 60_000, metricsStaleAfterMs: 1_000 });
    pool.sync(catalog(["a", "b"]));
    pool.recordFailure(pool.get("a")!, "down");
    expect(pool.candidatesFor(catalog(["a", "b"]).models[0]!).map((worker) => worker.id)).toEqual(["b"]);
  });

  it("keeps an ejected worker out until its cooldown has passed", () => {
    const pool = new WorkerPool({ ejectAfterFailures: 1, ejectCooldownMs: 60_000, metricsStaleAfterMs: 1_000 });
    pool.sync(catalog(["a"]));
    const worker = pool.get("a")!;
    pool.recordFailure(worker, "down");
    pool.recordProbeSuccess(worker);
    expect(worker.health).toBe(WorkerHealth.WORKER_HEALTH_EJECTED);
  });

  it("lets requests in flight on a removed worker finish before it leaves", async () => {
    const pool = new WorkerPool();
    pool.sync(catalog(["a", "b"]));
    const lease = pool.lease(pool.get("a")!);
    const { removed } = pool.sync(catalog(["b"]));
    expect(removed).toEqual(["a"]);
    expect(pool.candidatesFor(catalog(["a", "b"]).models[0]!).map((worker) => worker.id)).toEqual(["b"]);
    expect(pool.get("a")).toBeDefined();
    expect(lease.signal.aborted).toBe(false);
    lease.release("success");
    expect(pool.get("a")).toBeUndefined();
  });

  it("aborts requests in flight when a worker is removed by force", async () => {
    const pool = new WorkerPool();
    pool.sync(catalog(["a"]));
    const lease = pool.lease(pool.get("a")!);
    await pool.remove("a", true);
    expect(lease.signal.aborted).toBe(true);
    expect(pool.get("a")).toBeUndefined();
  });

  it("keeps an operator's drain through a reload of the same catalog", () => {
    const pool = new WorkerPool();
    pool.sync(catalog(["a", "b"]));
    pool.drain("a");
    pool.sync(catalog(["a", "b"]));
    expect(pool.get("a")?.health).toBe(WorkerHealth.WORKER_HEALTH_DRAINING);
    expect(pool.candidatesFor(catalog(["a", "b"]).models[0]!).map((worker) => worker.id)).toEqual(["b"]);
  });

  it("does not let a worker removed by force disturb a new worker with its id", async () => {
    const pool = new WorkerPool();
    pool.sync(catalog(["a"]));
    const oldLease = pool.lease(pool.get("a")!);
    await pool.remove("a", true);
    const replacement = pool.add({ id: "a", url: "http://a-new:8000" }, ["m"]);
    const newLease = pool.lease(replacement);
    let removed = false;
    const removal = pool.remove("a", false).then(() => {
      removed = true;
    });
    oldLease.release("neutral");
    await Promise.resolve();
    expect(removed).toBe(false);
    expect(pool.get("a")).toBe(replacement);
    newLease.release("neutral");
    await removal;
    expect(pool.get("a")).toBeUndefined();
  });

  it("takes a draining worker back when it is added again", async () => {
    const pool = new WorkerPool();
    pool.sync(catalog(["a"]));
    const lease = pool.lease(pool.get("a")!);
    const leaving = pool.remove("a", false);
    pool.add({ id: "a", url: "http://a:8000" }, ["m"]);
    await leaving;
    expect(pool.get("a")?.routable).toBe(true);
    lease.release("neutral");
    expect(pool.get("a")).toBeDefined();
  });
});
