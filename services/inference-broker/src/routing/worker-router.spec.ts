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

const model = (policy: "least-loaded" | "round-robin" = "least-loaded", affinity = true, id = "m"): ModelEntry => ({
  id,
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

  describe("prefix affinity", () => {
    // sessionId "" throughout: session affinity must not be what keeps a request on its worker.
    const withPrefix = (systemPrompt: string, question: string) => ({ sessionId: "", messages: [message("system", systemPrompt), message("user", question)] });
    const systemPrompts = Array.from({ length: 12 }, (_, index) => `You are assistant number ${index}.`);

    it("sends requests sharing a prompt prefix to the same worker, whatever the order of the workers", () => {
      const router = new WorkerRouter();
      const workers = ["w0", "w1", "w2", "w3"].map((id) => workerWith(id));
      for (const systemPrompt of systemPrompts) {
        const first = router.pick(model(), workers, withPrefix(systemPrompt, "first question"), none)?.id;
        // All loads are equal: without prefix affinity the tie would go to the first worker of the
        // list, so the reversed list would give another worker.
        expect(router.pick(model(), [...workers].reverse(), withPrefix(systemPrompt, "second question"), none)?.id).toBe(first);
        expect(router.pick(model(), [workers[2]!, workers[0]!, workers[3]!, workers[1]!], withPrefix(systemPrompt, "third question"), none)?.id).toBe(first);
      }
    });

    it("spreads different prompt prefixes over the workers", () => {
      const router = new WorkerRouter();
      const workers = ["w0", "w1", "w2", "w3"].map((id) => workerWith(id));
      const picks = new Set(systemPrompts.map((systemPrompt) => router.pick(model(), workers, withPrefix(systemPrompt, "question"), none)?.id));
      // Rendezvous hashing of 12 prefixes over 4 workers: all 12 on one worker is not what it does.
      expect(picks.size).toBeGreaterThan(1);
    });

    it("keeps a prefix on its worker while it is busier by less than the slack, and moves it beyond", () => {
      const router = new WorkerRouter({ metricsStaleAfterMs: 10_000, affinitySlack: 0.25, maxSessions: 10 });
      const workers = ["w0", "w1", "w2", "w3"].map((id) => workerWith(id));
      const preferred = router.pick(model(), workers, withPrefix("You are a careful coder.", "first question"), none)!;
      preferred.inFlight = 2; // 0.2 of its capacity above the idle others: within the slack
      expect(router.pick(model(), workers, withPrefix("You are a careful coder.", "second question"), none)).toBe(preferred);
      preferred.inFlight = 3; // 0.3 above: beyond the slack, the least-loaded worker wins
      expect(router.pick(model(), workers, withPrefix("You are a careful coder.", "third question"), none)).not.toBe(preferred);
    });
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

  it("rotates each model on its own when the requests of two models interleave", () => {
    const router = new WorkerRouter();
    const first = model("round-robin", false, "first");
    const second = model("round-robin", false, "second");
    const firstWorkers = ["a", "b"].map((id) => workerWith(id));
    const secondWorkers = ["c", "d"].map((id) => workerWith(id));
    const firstPicks: Array<string | undefined> = [];
    const secondPicks: Array<string | undefined> = [];
    for (let round = 0; round < 4; round += 1) {
      firstPicks.push(router.pick(first, firstWorkers, request(""), none)?.id);
      secondPicks.push(router.pick(second, secondWorkers, request(""), none)?.id);
    }
    // With one counter shared by both models, each model would see every other step only: a, a, a, a.
    expect(firstPicks).toEqual(["a", "b", "a", "b"]);
    expect(secondPicks).toEqual(["c", "d", "c", "d"]);
  });

  it("keys the prefix on everything but the last message", () => {
    expect(prefixKey([message("system", "S"), message("user", "Q1")])).toBe(prefixKey([message("system", "S"), message("user", "Q2")]));
    expect(prefixKey([message("system", "S1"), message("user", "Q")])).not.toBe(prefixKey([message("system", "S2"), message("user", "Q")]));
  });
});
