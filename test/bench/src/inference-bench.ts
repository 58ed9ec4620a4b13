#!/usr/bin/env node
/**
 * npm run bench:inference: the cost of the mesh on the path of a streamed Chat, measured at the
 * client, side by side with the worker reached directly. See test/bench/README.md.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join, relative, resolve } from "node:path";
import { countTokens } from "@vlinders/vllm-simulator";
import { parseBenchOptions, usage, type BenchOptions } from "./bench-options";
import { createDirectPath, createGrpcPath, type ChatPath } from "./chat-streams";
import { summarizeCpuProfile } from "./cpu-profile";
import { machineLoad } from "./process-stats";
import { promptOf, runCapacityStep, runHoldPhase, runLatencyPhase, streamDurationMs, type CapacityRow, type PhaseContext } from "./phases";
import { formatReport, relayCapacity, renderSvg, summaryLine, type BenchResults } from "./report";
import { startWorkload, type Workload } from "./workload";

const rootDir = resolve(__dirname, "../../..");
const resultsDir = join(rootDir, "test/bench/results");
const model = "vlinders-bench-chat";

function note(message: string): void {
  process.stderr.write(`${message}\n`);
}

function openFilesLimit(): string {
  try {
    const match = /Max open files\s+(\S+)\s+(\S+)/.exec(readFileSync("/proc/self/limits", "utf8"));
    return match ? `${match[1]} (hard ${match[2]})` : "unknown";
  } catch {
    return "unknown";
  }
}

class Bench {
  readonly startedAt = new Date();
  private readonly started = performance.now();
  private readonly budgetEndsAt: number;
  readonly runTag = `b${Date.now().toString(36)}`;
  private waitedForQuietMs = 0;
  readonly results: BenchResults;

  constructor(
    readonly options: BenchOptions,
    readonly signal: AbortSignal,
  ) {
    this.budgetEndsAt = this.started + options.budgetS * 1000;
    this.results = {
      options,
      startedAt: this.startedAt,
      durationS: 0,
      machine: { cpus: cpus().length, node: process.versions.node, openFilesLimit: openFilesLimit(), loadAverage: loadavg().map((value) => Number(value.toFixed(2))) },
      quietWaitS: 0,
      latency: [],
      capacity: [],
      hold: undefined,
      profiles: [],
      serviceLogs: [],
      skipped: [],
    };
  }

  /** Whether a phase expected to take `ms` still fits the budget; records the skip when not. */
  fits(what: string, ms: number): boolean {
    if (this.signal.aborted) return false;
    if (performance.now() + ms <= this.budgetEndsAt) return true;
    this.results.skipped.push(`${what} (about ${Math.round(ms / 1000)} s would end after the ${this.options.budgetS} s budget)`);
    note(`skipping ${what}: over the budget`);
    return false;
  }

  /**
   * Waits (a little) for the machine to be quiet before a phase: the mesh done with the previous
   * phase's streams, and other people's builds and tests on a shared machine, which use the same
   * cores. Every phase also reports that "other" CPU use next to its timings.
   */
  async settle(workload: Workload): Promise<void> {
    const started = performance.now();
    for (;;) {
      const load = await machineLoad(workload.processes, 700);
      const busy = load.other > 50 || load.ours > 40;
      if (!busy || this.signal.aborted) break;
      const what = load.ours > 40 ? `the mesh is still busy (${load.ours.toFixed(0)} % of a core)` : `the machine is busy with other work (${load.other.toFixed(0)} % of a core)`;
      const waited = performance.now() - started;
      if (waited >= 15_000 || this.waitedForQuietMs + waited >= 90_000) {
        note(`   ${what}: measuring anyway`);
        break;
      }
      note(`   ${what}: waiting for it to settle`);
    }
    this.waitedForQuietMs += performance.now() - started;
    this.results.quietWaitS = this.waitedForQuietMs / 1000;
  }

  context(workload: Workload): PhaseContext {
    return { signal: this.signal, processes: workload.processes, budgetEndsAt: this.budgetEndsAt + 60_000, runTag: this.runTag };
  }

  async withWorkload<T>(label: string, latency: { ttftMs: number; itlMs: number }, body: (workload: Workload) => Promise<T>, serviceNodeArgs?: readonly string[]): Promise<T> {
    note(`\n== ${label}: starting a simulator (TTFT ${latency.ttftMs} ms, ITL ${latency.itlMs} ms) and the mesh`);
    const workload = await startWorkload({
      label,
      rootDir,
      secret: this.options.secret,
      logLevel: this.options.logLevel,
      model,
      timeToFirstTokenMs: latency.ttftMs,
      interTokenLatencyMs: latency.itlMs,
      maxNumSeqs: 20_000,
      signal: this.signal,
      ...(serviceNodeArgs === undefined ? {} : { serviceNodeArgs }),
    });
    note(`   simulator ${workload.simulatorUrl}, broker ${workload.brokerAddress}, gateway ${workload.gatewayAddress}`);
    try {
      return await body(workload);
    } finally {
      note(`   stopping ${label}`);
      await workload.stop();
      this.results.serviceLogs.push({ workload: label, counts: Object.fromEntries(workload.log.counts), lines: workload.log.kept });
    }
  }

  paths(workload: Workload, names: ReadonlyArray<"direct" | "broker" | "mesh">): ChatPath[] {
    return names.map((name) =>
      name === "direct"
        ? createDirectPath(workload.simulatorUrl, model, this.options.directClient)
        : createGrpcPath({
            name,
            address: name === "broker" ? workload.brokerAddress : workload.gatewayAddress,
            secret: this.options.secret,
            model,
            channels: this.options.channels,
          }),
    );
  }

  async latencyPhases(): Promise<void> {
    const { options } = this;
    const estimate = options.latencyN.reduce((sum, n) => {
      const tokens = n === 1 ? options.n1Tokens : options.tokens;
      const duration = streamDurationMs(options.ttftMs, options.itlMs, tokens);
      const streams = n === 1 ? options.n1Streams : Math.max(options.streams, options.cycles * n) + n;
      return sum + options.latencyPaths.length * ((streams * duration) / n + duration + 1_000);
    }, 15_000);
    if (!this.fits("the latency comparison", estimate)) return;
    await this.withWorkload("latency", { ttftMs: options.ttftMs, itlMs: options.itlMs }, async (workload) => {
      const paths = this.paths(workload, options.latencyPaths);
      const context = this.context(workload);
      try {
        // Warm-up, not recorded: connections opened and the JIT warm in every process.
        note("   warming up every path");
        for (const path of paths) {
          await runLatencyPhase(context, path, { n: 50, tokens: 8, measured: 300, ttftMs: options.ttftMs, itlMs: options.itlMs });
        }
        for (const n of options.latencyN) {
          const tokens = n === 1 ? options.n1Tokens : options.tokens;
          if (countTokens(promptOf(this.runTag, 0, tokens)) !== tokens) throw new Error("the prompt does not have one token per word");
          const measured = n === 1 ? options.n1Streams : Math.max(options.streams, options.cycles * n);
          for (const path of paths) {
            if (this.signal.aborted) return;
            await this.settle(workload);
            note(`-- ${path.name}, N=${n}: ${measured} measured streams of ${tokens} tokens`);
            const row = await runLatencyPhase(context, path, { n, tokens, measured, ttftMs: options.ttftMs, itlMs: options.itlMs });
            this.results.latency.push(row);
            note(
              `   TTFT p50 ${row.ttft.p50.toFixed(2)} ms, p99 ${row.ttft.p99.toFixed(2)} ms; ITL p99 ${row.itl.p99.toFixed(2)} ms; failed ${row.failed}; in flight ${row.inFlightMean.toFixed(0)}; other CPU ${(row.cpu.other ?? NaN).toFixed(0)} %`,
            );
          }
        }
      } finally {
        for (const path of paths) path.close();
      }
    });
  }

  async capacityPhase(): Promise<void> {
    const { options } = this;
    const duration = streamDurationMs(options.ttftMs, options.capacityItlMs, options.capacityTokens);
    const stepMs = duration + 500 + options.capacityStepS * 1000 + duration + 1_000;
    if (!this.fits("the capacity search", 15_000 + 3 * stepMs)) return;
    await this.withWorkload("capacity", { ttftMs: options.ttftMs, itlMs: options.capacityItlMs }, async (workload) => {
      const context = this.context(workload);
      for (const path of this.paths(workload, options.capacityPaths)) {
        try {
          const rows: CapacityRow[] = [];
          const step = async (concurrency: number) => {
            await this.settle(workload);
            note(`-- ${path.name} capacity: ${concurrency} streams x ${1000 / options.capacityItlMs} tokens/s`);
            const row = await runCapacityStep(context, path, {
              concurrency,
              tokens: options.capacityTokens,
              ttftMs: options.ttftMs,
              itlMs: options.capacityItlMs,
              measureS: options.capacityStepS,
              itlLimitMs: options.itlLimitMs,
            });
            rows.push(row);
            this.results.capacity.push(row);
            note(
              `   delivered ${row.deliveredTokensPerS.toFixed(0)} of ${row.offeredTokensPerS.toFixed(0)} tokens/s, ITL p99 ${row.itl.p99.toFixed(2)} ms, failed ${row.failed}, other CPU ${(row.cpu.other ?? NaN).toFixed(0)} %: ${row.pass ? "pass" : "FAIL"}`,
            );
            return row;
          };
          // Up the steps until one fails; if the first fails, halve down to a pass; then one step
          // between the last pass and the first failure narrows the knee. At most 14 steps.
          let lastPass: number | undefined;
          let firstFail: number | undefined;
          for (const concurrency of options.capacityConcurrency) {
            if (!this.fits(`capacity step ${path.name} ${concurrency}`, stepMs)) break;
            if ((await step(concurrency)).pass) {
              lastPass = concurrency;
            } else {
              firstFail = concurrency;
              break;
            }
          }
          for (let concurrency = Math.floor((firstFail ?? 0) / 2); lastPass === undefined && concurrency >= 4; concurrency = Math.floor(concurrency / 2)) {
            if (!this.fits(`capacity step ${path.name} ${concurrency}`, stepMs)) break;
            if ((await step(concurrency)).pass) lastPass = concurrency;
            else firstFail = concurrency;
          }
          if (lastPass !== undefined && firstFail !== undefined && firstFail - lastPass > Math.max(2, lastPass / 5)) {
            const middle = Math.round((lastPass + firstFail) / 2);
            if (this.fits(`capacity step ${path.name} ${middle}`, stepMs)) await step(middle);
          }
          const best = relayCapacity(rows, path.name);
          note(`   ${path.name} relay capacity: ${best === undefined ? "no step passed" : `${best.toFixed(0)} tokens/s`}`);
        } finally {
          path.close();
        }
      }
    });
  }

  async holdPhase(): Promise<void> {
    const { options } = this;
    const duration = streamDurationMs(options.ttftMs, options.holdItlMs, options.holdTokens);
    if (!this.fits("the hold phase", 15_000 + options.holdRampS * 1000 + duration + 5_000)) return;
    await this.withWorkload("hold", { ttftMs: options.ttftMs, itlMs: options.holdItlMs }, async (workload) => {
      const [mesh] = this.paths(workload, ["mesh"]);
      if (!mesh) return;
      try {
        await this.settle(workload);
        note(`-- hold: ${options.holdStreams} streams over ${options.holdRampS} s, ${options.holdTokens} tokens each (${(duration / 1000).toFixed(0)} s per stream)`);
        const hold = await runHoldPhase(this.context(workload), mesh, {
          streams: options.holdStreams,
          rampS: options.holdRampS,
          tokens: options.holdTokens,
          ttftMs: options.ttftMs,
          itlMs: options.holdItlMs,
        });
        this.results.hold = hold;
        note(`   held ${hold.maxConcurrentStreams} streams at once (open ${hold.maxOpenStreams}); completed ${hold.ok}, failed ${hold.failed}`);
      } finally {
        mesh.close();
      }
    });
  }

  /** The services under `node --cpu-prof` during an N = 100 run through the mesh: where their time goes. */
  async profilePhase(): Promise<void> {
    const { options } = this;
    if (!this.fits("the CPU profile", 30_000)) return;
    const profileDir = join(resultsDir, `profiles-${this.startedAt.toISOString().replace(/[:.]/g, "-")}`);
    mkdirSync(profileDir, { recursive: true });
    let pids = new Map<number, string>();
    await this.withWorkload(
      "profile",
      { ttftMs: options.ttftMs, itlMs: options.itlMs },
      async (workload) => {
        pids = new Map(workload.processes.map((started) => [started.pid, started.name]));
        const [mesh] = this.paths(workload, ["mesh"]);
        if (!mesh) return;
        try {
          note("-- profile: mesh N=100 with the services under --cpu-prof (timings of this run are not reported)");
          await runLatencyPhase(this.context(workload), mesh, { n: 100, tokens: options.tokens, measured: 1200, ttftMs: options.ttftMs, itlMs: options.itlMs });
        } finally {
          mesh.close();
        }
      },
      ["--cpu-prof", `--cpu-prof-dir=${profileDir}`],
    );
    for (const file of readdirSync(profileDir).filter((name) => name.endsWith(".cpuprofile"))) {
      // CPU.<date>.<time>.<pid>.<thread id>.<sequence>.cpuprofile; thread 0 is the main thread.
      const [, pid, thread] = /\.(\d+)\.(\d+)\.\d+\.cpuprofile$/.exec(file) ?? [];
      const service = pids.get(Number(pid));
      if (service === undefined) continue;
      const name = thread === "0" ? service : `${service} (worker thread ${thread ?? "?"})`;
      this.results.profiles.push({ service: name, summary: summarizeCpuProfile(join(profileDir, file)) });
    }
    const order = ["gateway", "orchestrator", "inference-broker"];
    const rank = (service: string) => order.findIndex((name) => service.startsWith(name)) * 2 + (service.includes("thread") ? 1 : 0);
    this.results.profiles.sort((a, b) => rank(a.service) - rank(b.service));
    if (this.results.profiles.length === 0) this.results.skipped.push(`CPU profile: no .cpuprofile written in ${profileDir}`);
    else note(`   profiles in ${relative(rootDir, profileDir)}`);
  }

  finish(): { report: string; svgPath: string; json: Record<string, unknown> } {
    this.results.durationS = (performance.now() - this.started) / 1000;
    mkdirSync(resultsDir, { recursive: true });
    const stamp = this.startedAt.toISOString().replace(/[:.]/g, "-");
    const svgPath = join(resultsDir, `inference-${stamp}.svg`);
    writeFileSync(svgPath, renderSvg(this.results));
    const json = summaryLine(this.results, relative(rootDir, svgPath));
    writeFileSync(join(resultsDir, `inference-${stamp}.json`), `${JSON.stringify({ summary: json, results: this.results }, null, 2)}\n`);
    return { report: formatReport(this.results), svgPath, json };
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(`${usage}\n`);
    return;
  }
  let options: BenchOptions;
  try {
    options = parseBenchOptions(argv);
  } catch (error: unknown) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n${usage}\n`);
    process.exitCode = 2;
    return;
  }
  for (const script of ["libs/vllm-simulator/dist/main.js", "services/gateway/dist/main.js", "services/inference-broker/dist/main.js", "services/orchestrator/dist/main.js"]) {
    if (!existsSync(join(rootDir, script))) throw new Error(`${script} is missing: build first (npm run bench:inference builds)`);
  }
  const stop = new AbortController();
  let interrupts = 0;
  const onSignal = () => {
    interrupts += 1;
    if (interrupts > 1) process.exit(130);
    note("\nstopping (Ctrl-C again to quit at once)");
    stop.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const bench = new Bench(options, stop.signal);
  note(`inference benchmark${options.quick ? " (--quick)" : ""}: ${bench.results.machine.cpus} CPUs, open files limit ${bench.results.machine.openFilesLimit}, budget ${options.budgetS} s`);
  let failure: unknown;
  try {
    if (options.phases.has("latency")) await bench.latencyPhases();
    if (options.phases.has("capacity")) await bench.capacityPhase();
    if (options.phases.has("hold")) await bench.holdPhase();
    if (options.profile && options.phases.has("latency")) await bench.profilePhase();
  } catch (error: unknown) {
    failure = error;
    bench.results.skipped.push(`the run stopped: ${error instanceof Error ? error.message : String(error)}`);
  }
  const { report, svgPath, json } = bench.finish();
  process.stdout.write(`${report}\n\nplot: ${relative(process.cwd(), svgPath)}\n`);
  if (failure !== undefined) process.stderr.write(`\nbenchmark failed: ${failure instanceof Error ? (failure.stack ?? failure.message) : String(failure)}\n`);
  process.stdout.write(`${JSON.stringify(json)}\n`);
  process.exitCode = failure !== undefined ? 1 : stop.signal.aborted ? 130 : 0;
}

main().catch((error: unknown) => {
  process.stderr.write(`benchmark failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
