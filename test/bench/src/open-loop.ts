import { setMaxListeners } from "node:events";
import type { ChatPath, StreamOutcome, TokenObserver } from "./chat-streams";

/**
 * An open-loop load: stream i starts at t0 + i / rate whatever happened to the streams before it,
 * so that a slow system meets the same arrivals as a fast one (a closed loop would wait for answers
 * and hide the slowness). Bounded in count and in time: at `deadlineMs` after t0 every stream still
 * open is cancelled and counted as failed.
 */
export interface OpenLoopPlan {
  count: number;
  ratePerS: number;
  /** From t0; streams still open then are aborted. */
  deadlineMs: number;
  /** Stops the run early (Ctrl-C, the overall budget). */
  signal: AbortSignal;
  /** Builds the prompt of stream i. */
  prompt(index: number): string;
  expectedTokens: number;
  observer: TokenObserver;
  /** Called for each stream as it ends. */
  onOutcome(index: number, scheduledAt: number, outcome: StreamOutcome): void;
  /** Called every `progressEveryMs` while the run lasts. */
  onProgress?(state: OpenLoopState): void;
  progressEveryMs?: number;
}

export interface OpenLoopState {
  t0: number;
  now: number;
  launched: number;
  ended: number;
  /** Launched and not ended. */
  open: number;
  /** Received at least one token and not ended. */
  live: number;
  failed: number;
}

export interface OpenLoopRun {
  t0: number;
  launched: number;
  /** Streams that did not get to launch before the deadline or the stop signal. */
  notLaunched: number;
  maxOpen: number;
  maxLive: number;
}

/** Starts the load; t0 is a little ahead so that the caller can arm timers relative to it. */
export async function runOpenLoop(path: ChatPath, plan: OpenLoopPlan, t0 = performance.now() + 20): Promise<OpenLoopRun> {
  const intervalMs = 1000 / plan.ratePerS;
  const abort = new AbortController();
  // Every stream listens to this one signal; the default limit of 10 listeners would warn.
  setMaxListeners(plan.count + 100, abort.signal);
  const stop = () => abort.abort(new Error("benchmark stopped"));
  plan.signal.addEventListener("abort", stop, { once: true });
  const deadlineTimer = setTimeout(() => abort.abort(new Error("phase deadline")), Math.max(0, t0 + plan.deadlineMs - performance.now()));

  const state: OpenLoopState = { t0, now: t0, launched: 0, ended: 0, open: 0, live: 0, failed: 0 };
  let maxOpen = 0;
  let maxLive = 0;
  const observer: TokenObserver = plan.observer;
  const running: Array<Promise<void>> = [];

  const launch = (index: number, scheduledAt: number) => {
    state.launched += 1;
    state.open += 1;
    if (state.open > maxOpen) maxOpen = state.open;
    let counted = false;
    const streamObserver: TokenObserver = {
      onToken(now, gap) {
        if (!counted) {
          counted = true;
          state.live += 1;
          if (state.live > maxLive) maxLive = state.live;
        }
        observer.onToken(now, gap);
      },
    };
    running.push(
      path.run(plan.prompt(index), abort.signal, streamObserver).then((outcome) => {
        state.open -= 1;
        state.ended += 1;
        if (counted) state.live -= 1;
        let checked = outcome;
        if (outcome.error !== undefined && abort.signal.aborted) {
          const reason: unknown = abort.signal.reason;
          checked = { ...outcome, error: `cancelled by the benchmark (${reason instanceof Error ? reason.message : "stopped"})` };
        } else if (outcome.error === undefined && outcome.tokens !== plan.expectedTokens) {
          checked = { ...outcome, error: `got ${outcome.tokens} of ${plan.expectedTokens} tokens` };
        }
        if (checked.error !== undefined) state.failed += 1;
        plan.onOutcome(index, scheduledAt, checked);
      }),
    );
  };

  const progress = plan.onProgress
    ? setInterval(() => {
        state.now = performance.now();
        plan.onProgress?.(state);
      }, plan.progressEveryMs ?? 1000)
    : undefined;

  let next = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      while (next < plan.count && t0 + next * intervalMs <= now && !abort.signal.aborted) {
        launch(next, t0 + next * intervalMs);
        next += 1;
      }
      if (next >= plan.count || abort.signal.aborted) {
        resolve();
        return;
      }
      setTimeout(tick, Math.max(0, t0 + next * intervalMs - performance.now()));
    };
    setTimeout(tick, Math.max(0, t0 - performance.now()));
  });
  await Promise.all(running);
  clearTimeout(deadlineTimer);
  if (progress) clearInterval(progress);
  plan.signal.removeEventListener("abort", stop);
  return { t0, launched: state.launched, notLaunched: plan.count - state.launched, maxOpen, maxLive };
}
