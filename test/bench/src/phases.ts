import type { ChatPath, StreamOutcome } from "./chat-streams";
import { runOpenLoop, type OpenLoopState } from "./open-loop";
import { cpuPercent, cpuSnapshot, PeakTracker, sampleProcesses, type CpuSnapshot } from "./process-stats";
import { Samples, type Summary } from "./stats";

/** What every phase needs from the run around it. */
export interface PhaseContext {
  signal: AbortSignal;
  /** The processes whose CPU use is reported (the client is added automatically). */
  processes: ReadonlyArray<{ name: string; pid: number }>;
  /** performance.now() after which no stream may still be running. */
  budgetEndsAt: number;
  /** Unique word that starts every prompt of this run (no prefix-cache hits across runs). */
  runTag: string;
}

const vocabulary = "the mesh relays every token from the worker to the client through gateway orchestrator and broker".split(" ");

/** A prompt of exactly `tokens` words (the simulator echoes one token per word), unique per stream. */
export function promptOf(tag: string, index: number, tokens: number): string {
  const words = [`${tag}s${index}`];
  for (let word = 1; word < tokens; word += 1) words.push(vocabulary[word % vocabulary.length] ?? "token");
  return words.join(" ");
}

/** The nominal duration of a stream on the simulator: first token, then one token per ITL. */
export function streamDurationMs(ttftMs: number, itlMs: number, tokens: number): number {
  return ttftMs + (tokens - 1) * itlMs;
}

class ErrorTally {
  failed = 0;
  readonly byCause = new Map<string, number>();

  add(error: string): void {
    this.failed += 1;
    this.byCause.set(error, (this.byCause.get(error) ?? 0) + 1);
  }

  top(limit = 5): Array<{ cause: string; count: number }> {
    return [...this.byCause.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([cause, count]) => ({ cause, count }));
  }
}

function progressPrinter(label: string, total: number): (state: OpenLoopState) => void {
  let lastPrinted = 0;
  return (state) => {
    if (state.now - lastPrinted < 2_000) return;
    lastPrinted = state.now;
    process.stderr.write(
      `  ${label}: ${((state.now - state.t0) / 1000).toFixed(1)} s, started ${state.launched}/${total}, open ${state.open}, receiving ${state.live}, failed ${state.failed}\n`,
    );
  };
}

/** CPU use of every process between two moments of the phase (armed relative to t0). */
function cpuWindow(processes: PhaseContext["processes"], t0: number, startMs: number, endMs: number) {
  let before: CpuSnapshot | undefined;
  let result: Record<string, number> = {};
  const timers = [
    setTimeout(() => {
      before = cpuSnapshot(processes);
    }, Math.max(0, t0 + startMs - performance.now())),
    setTimeout(() => {
      if (before) result = cpuPercent(before, cpuSnapshot(processes));
    }, Math.max(0, t0 + endMs - performance.now())),
  ];
  return {
    result: () => result,
    cancel: () => timers.forEach((timer) => clearTimeout(timer)),
  };
}

export interface LatencyRow {
  path: string;
  n: number;
  tokens: number;
  streams: number;
  measured: number;
  failed: number;
  errors: Array<{ cause: string; count: number }>;
  /** From the stream's scheduled start to its first content token. */
  ttft: Summary;
  itl: Summary;
  /** How late the client started streams against their schedule (its own event loop lag). */
  startLagP99: number;
  inFlightMean: number;
  inFlightMax: number;
  tokensPerS: number;
  cpu: Record<string, number>;
  durationS: number;
}

/**
 * N streams in flight on one path: arrivals at N / (stream duration) per second, N warm-up
 * streams not measured, then the measured ones; TTFT of the measured streams and every
 * inter-token gap that falls inside the measured window.
 */
export async function runLatencyPhase(
  context: PhaseContext,
  path: ChatPath,
  spec: { n: number; tokens: number; measured: number; ttftMs: number; itlMs: number },
): Promise<LatencyRow> {
  const durationMs = streamDurationMs(spec.ttftMs, spec.itlMs, spec.tokens);
  const ratePerS = (spec.n * 1000) / durationMs;
  const warmup = spec.n === 1 ? 3 : spec.n;
  const count = warmup + spec.measured;
  const intervalMs = 1000 / ratePerS;
  const windowStartMs = warmup * intervalMs;
  const windowEndMs = count * intervalMs;
  // 15 s past the last start is ten times a stream's length: streams still open then are stuck.
  const deadlineMs = Math.min(windowEndMs + Math.max(15_000, 10 * durationMs), context.budgetEndsAt - performance.now());
  const ttft = new Samples();
  const itl = new Samples(64 * 1024);
  const startLag = new Samples();
  const errors = new ErrorTally();
  let tokensInWindow = 0;
  let inFlightTotal = 0;
  let inFlightSamples = 0;
  let inFlightMax = 0;
  const t0 = performance.now() + 50;
  const windowStart = t0 + windowStartMs;
  const windowEnd = t0 + windowEndMs;
  const cpu = cpuWindow(context.processes, t0, windowStartMs, windowEndMs);
  const print = progressPrinter(`${path.name} N=${spec.n}`, count);
  const run = await runOpenLoop(
    path,
    {
      count,
      ratePerS,
      deadlineMs,
      signal: context.signal,
      expectedTokens: spec.tokens,
      prompt: (index) => promptOf(context.runTag, index, spec.tokens),
      observer: {
        onToken(now, gap) {
          if (now < windowStart || now > windowEnd) return;
          tokensInWindow += 1;
          if (gap !== undefined) itl.push(gap);
        },
      },
      onOutcome(index, scheduledAt, outcome: StreamOutcome) {
        if (outcome.error !== undefined) errors.add(outcome.error);
        if (index < warmup) return;
        startLag.push(outcome.startedAt - scheduledAt);
        if (outcome.firstTokenAt !== undefined) ttft.push(outcome.firstTokenAt - scheduledAt);
      },
      progressEveryMs: 100,
      onProgress(state) {
        if (state.now >= windowStart && state.now <= windowEnd) {
          inFlightTotal += state.open;
          inFlightSamples += 1;
          if (state.open > inFlightMax) inFlightMax = state.open;
        }
        print(state);
      },
    },
    t0,
  );
  cpu.cancel();
  const notLaunched = run.notLaunched;
  for (let index = 0; index < notLaunched; index += 1) errors.add("not started before the phase deadline");
  return {
    path: path.name,
    n: spec.n,
    tokens: spec.tokens,
    streams: count,
    measured: spec.measured,
    failed: errors.failed,
    errors: errors.top(),
    ttft: ttft.summarize(),
    itl: itl.summarize(),
    startLagP99: startLag.summarize().p99,
    inFlightMean: inFlightSamples === 0 ? NaN : inFlightTotal / inFlightSamples,
    inFlightMax,
    tokensPerS: (tokensInWindow * 1000) / (windowEndMs - windowStartMs),
    cpu: cpu.result(),
    durationS: (performance.now() - t0) / 1000,
  };
}

export interface CapacityRow {
  path: string;
  concurrency: number;
  offeredTokensPerS: number;
  deliveredTokensPerS: number;
  itl: Summary;
  ttft: Summary;
  failed: number;
  errors: Array<{ cause: string; count: number }>;
  cpu: Record<string, number>;
  /** No failure, ITL p99 under the limit and at least 90 % of the offered tokens delivered. */
  pass: boolean;
}

/** One step of the capacity search: `concurrency` streams in flight at the worker's token rate. */
export async function runCapacityStep(
  context: PhaseContext,
  path: ChatPath,
  spec: { concurrency: number; tokens: number; ttftMs: number; itlMs: number; measureS: number; itlLimitMs: number },
): Promise<CapacityRow> {
  const durationMs = streamDurationMs(spec.ttftMs, spec.itlMs, spec.tokens);
  const ratePerS = (spec.concurrency * 1000) / durationMs;
  const warmMs = durationMs + 500;
  const measureMs = spec.measureS * 1000;
  const count = Math.ceil((ratePerS * (warmMs + measureMs)) / 1000);
  const deadlineMs = Math.min(warmMs + measureMs + Math.max(15_000, 5 * durationMs), context.budgetEndsAt - performance.now());
  const itl = new Samples(256 * 1024);
  const ttft = new Samples();
  const errors = new ErrorTally();
  let tokensInWindow = 0;
  const t0 = performance.now() + 50;
  const windowStart = t0 + warmMs;
  const windowEnd = windowStart + measureMs;
  const cpu = cpuWindow(context.processes, t0, warmMs, warmMs + measureMs);
  const print = progressPrinter(`${path.name} capacity ${spec.concurrency} streams`, count);
  const run = await runOpenLoop(
    path,
    {
      count,
      ratePerS,
      deadlineMs,
      signal: context.signal,
      expectedTokens: spec.tokens,
      prompt: (index) => promptOf(context.runTag, index, spec.tokens),
      observer: {
        onToken(now, gap) {
          if (now < windowStart || now > windowEnd) return;
          tokensInWindow += 1;
          if (gap !== undefined) itl.push(gap);
        },
      },
      onOutcome(_index, scheduledAt, outcome) {
        if (outcome.error !== undefined) errors.add(outcome.error);
        if (scheduledAt >= windowStart && scheduledAt <= windowEnd && outcome.firstTokenAt !== undefined) ttft.push(outcome.firstTokenAt - scheduledAt);
      },
      progressEveryMs: 500,
      onProgress: print,
    },
    t0,
  );
  cpu.cancel();
  for (let index = 0; index < run.notLaunched; index += 1) errors.add("not started before the phase deadline");
  const offered = (spec.concurrency * 1000) / spec.itlMs;
  const delivered = (tokensInWindow * 1000) / measureMs;
  const itlSummary = itl.summarize();
  return {
    path: path.name,
    concurrency: spec.concurrency,
    offeredTokensPerS: offered,
    deliveredTokensPerS: delivered,
    itl: itlSummary,
    ttft: ttft.summarize(),
    failed: errors.failed,
    errors: errors.top(),
    cpu: cpu.result(),
    pass: errors.failed === 0 && itlSummary.p99 <= spec.itlLimitMs && delivered >= 0.9 * offered,
  };
}

export interface HoldResult {
  streams: number;
  tokens: number;
  ok: number;
  failed: number;
  errors: Array<{ cause: string; count: number }>;
  /** Streams that had received a token and not yet ended, at the most. */
  maxConcurrentStreams: number;
  /** Streams started and not yet ended, at the most (some may not have had a token yet). */
  maxOpenStreams: number;
  ttft: Summary;
  itl: Summary;
  timeline: Array<{ t: number; open: number; live: number; failed: number }>;
  peaks: Array<{ name: string; rssMb: number; openFds: number }>;
  cpu: Record<string, number>;
  durationS: number;
}

/** Many slow streams at once: ramped up over `rampS`, each open for about `tokens` x ITL. */
export async function runHoldPhase(
  context: PhaseContext,
  path: ChatPath,
  spec: { streams: number; rampS: number; tokens: number; ttftMs: number; itlMs: number },
): Promise<HoldResult> {
  const durationMs = streamDurationMs(spec.ttftMs, spec.itlMs, spec.tokens);
  const ratePerS = spec.streams / spec.rampS;
  const deadlineMs = Math.min(spec.rampS * 1000 + durationMs + 30_000, context.budgetEndsAt - performance.now());
  const ttft = new Samples();
  const itl = new Samples(256 * 1024);
  const errors = new ErrorTally();
  let ok = 0;
  const timeline: HoldResult["timeline"] = [];
  const peaks = new PeakTracker();
  let lastPeakSample = 0;
  const print = progressPrinter(`${path.name} hold`, spec.streams);
  const t0 = performance.now() + 50;
  const cpu = cpuWindow(context.processes, t0, 0, spec.rampS * 1000 + durationMs);
  const run = await runOpenLoop(
    path,
    {
      count: spec.streams,
      ratePerS,
      deadlineMs,
      signal: context.signal,
      expectedTokens: spec.tokens,
      prompt: (index) => promptOf(context.runTag, index, spec.tokens),
      observer: {
        onToken(_now, gap) {
          if (gap !== undefined) itl.push(gap);
        },
      },
      onOutcome(_index, scheduledAt, outcome) {
        if (outcome.error !== undefined) errors.add(outcome.error);
        else ok += 1;
        if (outcome.firstTokenAt !== undefined) ttft.push(outcome.firstTokenAt - scheduledAt);
      },
      progressEveryMs: 250,
      onProgress(state) {
        timeline.push({ t: (state.now - t0) / 1000, open: state.open, live: state.live, failed: state.failed });
        if (state.now - lastPeakSample >= 1_000) {
          lastPeakSample = state.now;
          peaks.add(sampleProcesses(context.processes));
        }
        print(state);
      },
    },
    t0,
  );
  cpu.cancel();
  for (let index = 0; index < run.notLaunched; index += 1) errors.add("not started before the phase deadline");
  // The last progress tick may precede the deadline's cancellations: end the timeline with them.
  timeline.push({ t: (performance.now() - t0) / 1000, open: 0, live: 0, failed: errors.failed });
  return {
    streams: spec.streams,
    tokens: spec.tokens,
    ok,
    failed: errors.failed,
    errors: errors.top(),
    maxConcurrentStreams: run.maxLive,
    maxOpenStreams: run.maxOpen,
    ttft: ttft.summarize(),
    itl: itl.summarize(),
    timeline,
    peaks: [...peaks.peaks.entries()].map(([name, peak]) => ({ name, ...peak })),
    cpu: cpu.result(),
    durationS: (performance.now() - t0) / 1000,
  };
}
