import { createHash } from "node:crypto";
import type { ChatMessage } from "@vlinders/proto";
import type { Worker } from "../pool/worker";
import { defaultRoutingSettings, type ModelEntry } from "../registry/model-registry";

export interface RouteRequest {
  sessionId: string;
  messages: readonly ChatMessage[];
}

export interface RouterSettings {
  /** Scraped metrics older than this count as missing (the worker is treated as saturated). */
  metricsStaleAfterMs: number;
  /** An affine worker is kept while its load is at most the least-loaded one's plus this (fraction of capacity). */
  affinitySlack: number;
  /** Sessions remembered for session affinity (least recently used are forgotten first). */
  maxSessions: number;
}

export const defaultRouterSettings: RouterSettings = { metricsStaleAfterMs: 15_000, affinitySlack: 0.25, maxSessions: 100_000 };

/** Characters of the prompt prefix that decide prefix affinity: enough to tell system prompts apart. */
const prefixCharacters = 4_096;

/**
 * Picks the worker for a request among the routable ones. Least-loaded (default): session
 * affinity first (a session sticks to its worker while that worker is healthy and not much busier
 * than the least-loaded one), then prefix affinity (rendezvous hashing of the prompt prefix, so the
 * same prefix meets the same vLLM prefix cache, with the same load bound), then the least-loaded
 * worker. Round-robin: a plain rotation, one per model. Both skip workers already tried by this request.
 */
export class WorkerRouter {
  private readonly sessions = new Map<string, string>();
  // One counter per model: with a shared one, models whose requests interleave each see only every
  // other step of the rotation, and two models of two workers each always land on the same worker.
  // Bounded by the catalog's model ids (a removed model leaves one number behind until restart).
  private readonly rotations = new Map<string, number>();

  constructor(private readonly settings: RouterSettings = defaultRouterSettings) {}

  pick(model: ModelEntry, candidates: readonly Worker[], request: RouteRequest, exclude: ReadonlySet<string>): Worker | undefined {
    const available = exclude.size === 0 ? candidates : candidates.filter((worker) => !exclude.has(worker.id));
    if (available.length === 0) return undefined;
    const routing = model.routing ?? defaultRoutingSettings;
    if (routing.policy === "round-robin") {
      const rotation = this.rotations.get(model.id) ?? 0;
      this.rotations.set(model.id, (rotation + 1) % Number.MAX_SAFE_INTEGER);
      return available[rotation % available.length];
    }
    if (available.length === 1) return this.remember(request.sessionId, routing.sessionAffinity, available[0]);

    const now = performance.now();
    const loads = new Map<Worker, number>();
    let leastLoaded = available[0] as Worker;
    let leastLoad = Infinity;
    for (const worker of available) {
      const load = worker.load(now, this.settings.metricsStaleAfterMs);
      loads.set(worker, load);
      if (load < leastLoad) {
        leastLoad = load;
        leastLoaded = worker;
      }
    }
    const acceptable = (worker: Worker | undefined): worker is Worker =>
      worker !== undefined && (loads.get(worker) ?? Infinity) <= leastLoad + this.settings.affinitySlack;

    if (routing.sessionAffinity && request.sessionId !== "") {
      const stickyId = this.sessions.get(request.sessionId);
      const sticky = stickyId === undefined ? undefined : available.find((worker) => worker.id === stickyId);
      if (acceptable(sticky)) return this.remember(request.sessionId, true, sticky);
    }
    if (routing.prefixAffinity) {
      const preferred = rendezvous(prefixKey(request.messages), available);
      if (acceptable(preferred)) return this.remember(request.sessionId, routing.sessionAffinity, preferred);
    }
    return this.remember(request.sessionId, routing.sessionAffinity, leastLoaded);
  }

  private remember(sessionId: string, enabled: boolean, worker: Worker | undefined): Worker | undefined {
    if (!enabled || sessionId === "" || !worker) return worker;
    // Re-inserting moves the session to the young end of the Map's insertion order (an LRU).
    this.sessions.delete(sessionId);
    this.sessions.set(sessionId, worker.id);
    if (this.sessions.size > this.settings.maxSessions) {
      const oldest = this.sessions.keys().next().value;
      if (oldest !== undefined) this.sessions.delete(oldest);
    }
    return worker;
  }
}

/**
 * The conversation before its last message: what the next request of the same conversation, or of
 * others with the same system prompt, will share with this one.
 */
export function prefixKey(messages: readonly ChatMessage[]): string {
  let key = "";
  const shared = messages.length > 1 ? messages.length - 1 : messages.length;
  for (let index = 0; index < shared && key.length < prefixCharacters; index += 1) {
    const message = messages[index];
    if (message) key += `${message.role}\u0000${message.content}\u0001`;
  }
  return key.slice(0, prefixCharacters);
}

/** Highest-random-weight hashing: the same key picks the same worker while it is available. */
function rendezvous(key: string, workers: readonly Worker[]): Worker | undefined {
  let best: Worker | undefined;
  let bestScore = -1;
  const keyDigest = createHash("sha1").update(key).digest("hex");
  for (const worker of workers) {
    const score = createHash("sha1").update(keyDigest).update(worker.id).digest().readUInt32BE(0);
    if (score > bestScore) {
      bestScore = score;
      best = worker;
    }
  }
  return best;
}
