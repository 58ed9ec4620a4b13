import { WorkerHealth, type ChatMessage } from "@vlinders/proto";
import { Worker } from "../pool/worker";
import type { ModelEntry } from "../registry/model-registry";
import { WorkerRouter, prefixKey } from "./worker-router";

const message = (role: string, content: string): ChatMessage => ({ role, content, toolCalls: [], toolCallId: "", name: "" });

function workerWith(id: string, state: Partial<Pick<Worker, "inFlight" | "running" | "waiting" | "kvCacheUsage">> & { fresh?: boolean } = {}): Worker {
  const worker = new Worker({ id, url: `http://${id}`, maxNumSeqs: 10 });
  worker.health = WorkerHealth.WORKER_HEALTH_HEALTHY;
  Object.assign(worker, { inFlight: 0, running: 0, waiting: 0, kvCacheUsage: 0, ...state });
  worker.scrapedAt = state.fresh === false ? undefined : performance.now();
  return worker;
}

const model = (policy: "least-loaded" | "round-robin" = "least-loaded", affinity = true): ModelEntry => ({
  id: "m",
  aliases: [],
  maxContextTokens: 0,
  workers: [],
  routing: { policy, sessionAffinity: affinity, prefixAffinity: affinity },
});

const request = (sessionId: string, ...contents: string[]) => ({ sessionId, messages: contents.map((content) => message("user", content)) });
const none = new Set<string>();

describe("WorkerRouter", () => {
  it("picks the least-loaded worker, counting others' load seen in the scrape and KV-cache pressure", () => {
    const router = new WorkerRouter();
    const busy = workerWith("busy", { running: 8 });
    const idle = workerWith("idle");
    const fullCache = workerWith("full-cache", { kvCacheUsage: 1 });
    expect(router.pick(model("least-loaded", false), [busy, fullCache, idle], request(""), none)?.id).toBe("idle");
  });

  it("treats a worker whose metrics are stale as saturated", () => {
    const router = new WorkerRouter();
    const stale = workerWith("stale", { fresh: false });
    const loaded = workerWith("loaded", { running: 6 });
    expect(router.pick(model("least-loaded", false), [stale, loaded], request(""), none)?.id).toBe("loaded");
  });

  it("keeps a session on its worker while that worker is not much busier than the others", () => {
    const router = new WorkerRouter({ metricsStaleAfterMs: 10_000, affinitySlack: 0.25, maxSessions: 10 });
    const a = workerWith("a");
    const b = workerWith("b");
    const first = router.pick(model(), [a, b], request("s1", "hello"), none)!;
    const other = first === a ? b : a;
    other.inFlight = 0;
    first.inFlight = 2; // 20 % busier: within the slack
    expect(router.pick(model(), [a, b], request("s1", "different prompt entirely"), none)).toBe(first);
    first.inFlight = 6; // 60 % busier: the session moves
    expect(router.pick(model(), [a, b], request("s1", "x"), none)).toBe(other);
  });

  it("sends requests sharing a prompt prefix to the same worker", () => {
    const router = new WorkerRouter();
    const workers = ["w0", "w1", "w2", "w3"].map((id) => workerWith(id));
    const picks = new Set(
      ["first question", "second question", "third question"].map(
        (question) => router.pick(model(), workers, { sessionId: "", messages: [message("system", "You are a careful coder."), message("user", question)] }, none)?.id,
      ),
    );
    expect(picks.size).toBe(1);
  });

  it("rotates with round-robin and skips workers already tried", () => {
    const router = new WorkerRouter();
    const workers = ["a", "b", "c"].map((id) => workerWith(id));
    const picks = Array.from({ length: 6 }, () => router.pick(model("round-robin"), workers, request(""), none)?.id);
    expect(new Set(picks)).toEqual(new Set(["a", "b", "c"]));
    expect(picks.slice(0, 3)).toEqual(picks.slice(3));
    expect(router.pick(model("least-loaded"), workers, request(""), new Set(["a", "b"]))?.id).toBe("c");
    expect(router.pick(model("least-loaded"), workers, request(""), new Set(["a", "b", "c"]))).toBeUndefined();
  });

  it("keys the prefix on everything but the last message", () => {
    expect(prefixKey([message("system", "S"), message("user", "Q1")])).toBe(prefixKey([message("system", "S"), message("user", "Q2")]));
    expect(prefixKey([message("system", "S1"), message("user", "Q")])).not.toBe(prefixKey([message("system", "S2"), message("user", "Q")]));
  });
});
