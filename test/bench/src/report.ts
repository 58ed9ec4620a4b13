import type { BenchOptions } from "./bench-options";
import type { ProfileSummary } from "./cpu-profile";
import type { CapacityRow, HoldResult, LatencyRow } from "./phases";
import { round } from "./stats";
import { renderChart, renderPage, renderText, type ChartSeries } from "./svg-chart";

export interface BenchResults {
  options: BenchOptions;
  startedAt: Date;
  durationS: number;
  machine: { cpus: number; node: string; openFilesLimit: string; loadAverage: number[] };
  /** Time spent waiting for other work on the machine to settle before phases. */
  quietWaitS: number;
  latency: LatencyRow[];
  capacity: CapacityRow[];
  hold: HoldResult | undefined;
  profiles: Array<{ service: string; summary: ProfileSummary }>;
  serviceLogs: Array<{ workload: string; counts: Record<string, number>; lines: string[] }>;
  skipped: string[];
}

export const goal = { addedTtftP50Ms: 1, addedTtftP99Ms: 5, relayTokensPerS: 50_000, concurrentStreams: 10_000 };

const pathColors: Record<string, string> = { direct: "#2b7bb9", broker: "#e08a1e", mesh: "#c0392b" };
const shortNames: Record<string, string> = {
  client: "client",
  "vllm-simulator": "sim",
  "inference-broker": "broker",
  orchestrator: "orch",
  gateway: "gw",
  other: "OTHER",
};

function fixed(value: number | null | undefined, digits = 1): string {
  return value === null || value === undefined || !Number.isFinite(value) ? "-" : value.toFixed(digits);
}

function signed(value: number, digits = 2): string {
  if (!Number.isFinite(value)) return "-";
  return `${value >= 0 ? "+" : ""}${value.toFixed(digits)}`;
}

function table(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? "").length)));
  const line = (cells: readonly string[]) => cells.map((cell, column) => (column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0))).join("  ");
  return [line(headers), widths.map((width) => "-".repeat(width)).join("  "), ...rows.map(line)].join("\n");
}

function cpuCell(cpu: Record<string, number>): string {
  const entries = Object.entries(cpu);
  if (entries.length === 0) return "-";
  return entries.map(([name, percent]) => `${shortNames[name] ?? name} ${percent.toFixed(0)}`).join(" ");
}

/** The direct path's row for the same N: the baseline every other path is compared with. */
export function baselineOf(rows: readonly LatencyRow[], n: number): LatencyRow | undefined {
  return rows.find((row) => row.path === "direct" && row.n === n);
}

export function addedTtft(rows: readonly LatencyRow[], path: string, n: number): { p50: number; p99: number; itlP99: number } {
  const row = rows.find((candidate) => candidate.path === path && candidate.n === n);
  const base = baselineOf(rows, n);
  if (!row || !base) return { p50: NaN, p99: NaN, itlP99: NaN };
  return { p50: row.ttft.p50 - base.ttft.p50, p99: row.ttft.p99 - base.ttft.p99, itlP99: row.itl.p99 - base.itl.p99 };
}

/** The most tokens per second a path delivered in a step that passed. */
export function relayCapacity(rows: readonly CapacityRow[], path: string): number | undefined {
  const passing = rows.filter((row) => row.path === path && row.pass).map((row) => row.deliveredTokensPerS);
  return passing.length === 0 ? undefined : Math.max(...passing);
}

export function formatReport(results: BenchResults): string {
  const out: string[] = [];
  const { options } = results;
  out.push("");
  out.push(
    `Inference benchmark — ${results.startedAt.toISOString()} — ${results.machine.cpus} CPUs, Node.js ${results.machine.node}, open files limit ${results.machine.openFilesLimit}, load average at start ${results.machine.loadAverage.join(" ")}`,
  );
  out.push(
    `worker: simulator process, TTFT ${options.ttftMs} ms, ITL ${options.itlMs} ms; services at LOG_LEVEL=${options.logLevel}; ${options.channels} HTTP/2 connections per gRPC door; every process on these ${results.machine.cpus} cores`,
  );
  if (results.latency.length > 0) {
    out.push("");
    out.push("Latency at the client, open-loop arrivals (TTFT from each stream's scheduled start; added = path percentile − direct percentile at the same N)");
    out.push(
      table(
        ["path", "N", "tok", "streams", "failed", "in flight", "TTFT p50", "p99", "added p50", "added p99", "ITL p50", "ITL p99", "p99.9", "added ITL p99", "tok/s", "lag p99", "CPU % (1 core = 100)"],
        results.latency.map((row) => {
          const added = addedTtft(results.latency, row.path, row.n);
          const direct = row.path === "direct";
          return [
            row.path,
            String(row.n),
            String(row.tokens),
            `${row.measured}+${row.streams - row.measured}`,
            String(row.failed),
            `${fixed(row.inFlightMean, 0)}/${row.inFlightMax}`,
            fixed(row.ttft.p50, 2),
            fixed(row.ttft.p99, 2),
            direct ? "" : signed(added.p50),
            direct ? "" : signed(added.p99),
            fixed(row.itl.p50, 2),
            fixed(row.itl.p99, 2),
            fixed(row.itl.p999, 2),
            direct ? "" : signed(added.itlP99),
            fixed(row.tokensPerS, 0),
            fixed(row.startLagP99, 2),
            cpuCell(row.cpu),
          ];
        }),
      ),
    );
    out.push(
      "(streams: measured+warm-up; in flight: mean/max during the measured window; lag: how late the client itself started streams; times in ms; CPU: per process during the measured window, OTHER = the rest of the machine)",
    );
    for (const row of results.latency.filter((candidate) => candidate.n === 100 && candidate.tokensPerS > 0)) {
      const perToken = Object.entries(row.cpu)
        .filter(([name]) => name !== "other")
        .map(([name, percent]) => `${shortNames[name] ?? name} ${((percent / 100) * (1e6 / row.tokensPerS)).toFixed(0)}`);
      out.push(`  CPU per token delivered, ${row.path} N=100 (µs): ${perToken.join(", ")}`);
    }
    const failing = results.latency.filter((row) => row.failed > 0);
    for (const row of failing) out.push(`  ${row.path} N=${row.n} failures: ${row.errors.map((error) => `${error.count}x ${error.cause}`).join("; ")}`);
  }
  if (results.capacity.length > 0) {
    out.push("");
    out.push(
      `Relay capacity: ${options.capacityTokens}-token streams at ITL ${options.capacityItlMs} ms (${1000 / options.capacityItlMs} tokens/s each), ${options.capacityStepS} s measured per step; a step passes with no failure, ITL p99 <= ${options.itlLimitMs} ms and >= 90 % of the offered tokens delivered`,
    );
    out.push(
      table(
        ["path", "streams", "offered tok/s", "delivered tok/s", "ITL p50", "ITL p99", "ITL max", "TTFT p50", "TTFT p99", "failed", "pass", "CPU % (1 core = 100)"],
        results.capacity.map((row) => [
          row.path,
          String(row.concurrency),
          fixed(row.offeredTokensPerS, 0),
          fixed(row.deliveredTokensPerS, 0),
          fixed(row.itl.p50, 2),
          fixed(row.itl.p99, 2),
          fixed(row.itl.max, 1),
          fixed(row.ttft.p50, 1),
          fixed(row.ttft.p99, 1),
          String(row.failed),
          row.pass ? "yes" : "NO",
          cpuCell(row.cpu),
        ]),
      ),
    );
    for (const row of results.capacity.filter((candidate) => candidate.failed > 0)) {
      out.push(`  ${row.path} ${row.concurrency} streams failures: ${row.errors.map((error) => `${error.count}x ${error.cause}`).join("; ")}`);
    }
  }
  const hold = results.hold;
  if (hold) {
    out.push("");
    out.push(
      `Hold: ${hold.streams} Chat streams through the whole mesh, ramped over ${options.holdRampS} s, ${hold.tokens} tokens each at ${options.holdItlMs} ms per token`,
    );
    out.push(
      table(
        ["streams", "completed", "failed", "max concurrent (receiving)", "max open", "TTFT p50", "TTFT p99", "ITL p99", "ITL max", "took s"],
        [
          [
            String(hold.streams),
            String(hold.ok),
            String(hold.failed),
            String(hold.maxConcurrentStreams),
            String(hold.maxOpenStreams),
            fixed(hold.ttft.p50, 1),
            fixed(hold.ttft.p99, 1),
            fixed(hold.itl.p99, 1),
            fixed(hold.itl.max, 1),
            fixed(hold.durationS, 1),
          ],
        ],
      ),
    );
    out.push(`  CPU during the hold (% of one core): ${cpuCell(hold.cpu)}`);
    out.push(`  peak per process: ${hold.peaks.map((peak) => `${shortNames[peak.name] ?? peak.name} ${peak.rssMb.toFixed(0)} MB RSS, ${peak.openFds} fds`).join("; ")}`);
    if (hold.failed > 0) out.push(`  failures: ${hold.errors.map((error) => `${error.count}x ${error.cause}`).join("; ")}`);
  }
  for (const profile of results.profiles) {
    out.push("");
    out.push(
      `CPU profile of ${profile.service}: its whole life (${(profile.summary.durationMs / 1000).toFixed(0)} s: start, an N=100 run through the mesh, stop), busy ${(profile.summary.busyShare * 100).toFixed(0)} % of it; self time in % of busy time`,
    );
    out.push(`  by kind of work: ${profile.summary.categories.slice(0, 9).map((entry) => `${entry.name} ${entry.percent.toFixed(1)}`).join(", ")}`);
    out.push(`  by package: ${profile.summary.packages.slice(0, 8).map((entry) => `${entry.name} ${entry.percent.toFixed(1)}`).join(", ")}`);
    for (const entry of profile.summary.functions.slice(0, 10)) out.push(`  ${entry.percent.toFixed(1).padStart(5)}  ${entry.name}`);
  }
  const logs = results.serviceLogs.filter((log) => Object.keys(log.counts).length > 0);
  if (logs.length > 0) {
    out.push("");
    out.push("Warnings and errors the services logged:");
    for (const log of logs) {
      out.push(`  ${log.workload}: ${Object.entries(log.counts).map(([key, count]) => `${key} x${count}`).join(", ")}`);
      for (const line of log.lines.slice(0, 6)) out.push(`    ${line.slice(0, 240)}`);
    }
  }
  const busy = [
    ...results.latency.map((row) => ({ what: `${row.path} N=${row.n}`, other: row.cpu.other ?? 0 })),
    ...results.capacity.map((row) => ({ what: `${row.path} capacity ${row.concurrency}`, other: row.cpu.other ?? 0 })),
    ...(hold ? [{ what: "hold", other: hold.cpu.other ?? 0 }] : []),
  ].filter((entry) => entry.other > 25);
  if (busy.length > 0 || results.quietWaitS > 1) {
    out.push("");
    out.push(
      busy.length === 0
        ? `No measured window shared the machine with other work (the run waited ${results.quietWaitS.toFixed(0)} s for quiet before its phases).`
        : `Other work on the machine (not the benchmark's processes) took CPU during: ${busy.map((entry) => `${entry.what} (${entry.other.toFixed(0)} %)`).join(", ")}; the run waited ${results.quietWaitS.toFixed(0)} s for quiet. Those timings are worse than the mesh alone would give.`,
    );
  }
  if (results.skipped.length > 0) {
    out.push("");
    for (const skipped of results.skipped) out.push(`skipped: ${skipped}`);
  }
  return out.join("\n");
}

/** The one JSON line that ends the output. */
export function summaryLine(results: BenchResults, svgPath: string | undefined): Record<string, unknown> {
  const mesh100 = addedTtft(results.latency, "mesh", 100);
  const relay = relayCapacity(results.capacity, "mesh");
  const hold = results.hold;
  const latencyErrors = results.latency.reduce((sum, row) => sum + row.failed, 0);
  const capacityErrors = results.capacity.reduce((sum, row) => sum + row.failed, 0);
  return {
    bench: "inference",
    quick: results.options.quick,
    added_ttft_p50_ms: round(mesh100.p50),
    added_ttft_p99_ms: round(mesh100.p99),
    added_itl_p99_ms: round(mesh100.itlP99),
    relay_tokens_per_s: relay === undefined ? null : Math.round(relay),
    max_concurrent_streams: hold?.maxConcurrentStreams ?? null,
    errors: hold?.failed ?? null,
    error_causes: hold?.errors ?? [],
    latency_errors: latencyErrors,
    capacity_step_errors: capacityErrors,
    goal_met: {
      added_ttft_p50: Number.isFinite(mesh100.p50) ? mesh100.p50 <= goal.addedTtftP50Ms : null,
      added_ttft_p99: Number.isFinite(mesh100.p99) ? mesh100.p99 <= goal.addedTtftP99Ms : null,
      relay_tokens_per_s: relay === undefined ? (results.capacity.length > 0 ? false : null) : relay >= goal.relayTokensPerS,
      concurrent_streams: hold ? hold.maxConcurrentStreams >= goal.concurrentStreams && hold.failed === 0 : null,
    },
    latency: results.latency.map((row) => {
      const added = addedTtft(results.latency, row.path, row.n);
      return {
        path: row.path,
        n: row.n,
        ttft_p50_ms: round(row.ttft.p50),
        ttft_p99_ms: round(row.ttft.p99),
        added_ttft_p50_ms: row.path === "direct" ? 0 : round(added.p50),
        added_ttft_p99_ms: row.path === "direct" ? 0 : round(added.p99),
        itl_p99_ms: round(row.itl.p99),
        failed: row.failed,
      };
    }),
    capacity: results.capacity.map((row) => ({
      path: row.path,
      streams: row.concurrency,
      offered_tokens_per_s: Math.round(row.offeredTokensPerS),
      delivered_tokens_per_s: Math.round(row.deliveredTokensPerS),
      itl_p99_ms: round(row.itl.p99),
      failed: row.failed,
      pass: row.pass,
    })),
    capacity_direct_tokens_per_s: (() => {
      const direct = relayCapacity(results.capacity, "direct");
      return direct === undefined ? null : Math.round(direct);
    })(),
    other_cpu_max_pct: round(
      Math.max(0, ...results.latency.map((row) => row.cpu.other ?? 0), ...results.capacity.map((row) => row.cpu.other ?? 0), hold?.cpu.other ?? 0),
      0,
    ),
    duration_s: round(results.durationS, 1),
    svg: svgPath ?? null,
  };
}

export function renderSvg(results: BenchResults): string {
  const panels: Array<(box: { x: number; y: number; width: number; height: number }) => string> = [];
  const paths = [...new Set(results.latency.map((row) => row.path))];
  if (results.latency.length > 0) {
    const ttftSeries: ChartSeries[] = paths.flatMap((path) => {
      const rows = results.latency.filter((row) => row.path === path);
      return [
        { name: `${path} p50`, color: pathColors[path] ?? "#555", points: rows.map((row) => [row.n, row.ttft.p50] as const) },
        { name: `${path} p99`, color: pathColors[path] ?? "#555", dashed: true, points: rows.map((row) => [row.n, row.ttft.p99] as const) },
      ];
    });
    panels.push((box) =>
      renderChart({ title: "Time to first token by streams in flight", xLabel: "streams in flight (N)", yLabel: "TTFT ms (log)", xLog: true, yLog: true, series: ttftSeries }, box),
    );
    const addedSeries: ChartSeries[] = paths
      .filter((path) => path !== "direct")
      .flatMap((path) => {
        const ns = results.latency.filter((row) => row.path === path).map((row) => row.n);
        return [
          { name: `${path} added p50`, color: pathColors[path] ?? "#555", points: ns.map((n) => [n, Math.max(0.01, addedTtft(results.latency, path, n).p50)] as const) },
          { name: `${path} added p99`, color: pathColors[path] ?? "#555", dashed: true, points: ns.map((n) => [n, Math.max(0.01, addedTtft(results.latency, path, n).p99)] as const) },
        ];
      });
    panels.push((box) =>
      renderChart(
        {
          title: "Added TTFT over direct (goal N=100: p50 1, p99 5 ms)",
          xLabel: "streams in flight (N)",
          yLabel: "added ms (log; <= 0 drawn at 0.01)",
          xLog: true,
          yLog: true,
          series: addedSeries,
          references: [
            { y: goal.addedTtftP50Ms, label: "1 ms", color: "#27ae60" },
            { y: goal.addedTtftP99Ms, label: "5 ms", color: "#27ae60" },
          ],
        },
        box,
      ),
    );
    const itlSeries: ChartSeries[] = paths.map((path) => ({
      name: `${path} ITL p99`,
      color: pathColors[path] ?? "#555",
      points: results.latency.filter((row) => row.path === path).map((row) => [row.n, row.itl.p99] as const),
    }));
    panels.push((box) =>
      renderChart(
        {
          title: "Inter-token latency p99 by streams in flight",
          xLabel: "streams in flight (N)",
          yLabel: "ITL p99 ms (log)",
          xLog: true,
          yLog: true,
          series: itlSeries,
          references: [{ y: results.options.itlMs, label: `worker ITL ${results.options.itlMs} ms`, color: "#888" }],
        },
        box,
      ),
    );
  }
  if (results.capacity.length > 0) {
    const capacityPaths = [...new Set(results.capacity.map((row) => row.path))];
    panels.push((box) =>
      renderChart(
        {
          title: "Relay capacity: delivered vs offered tokens/s",
          xLabel: "offered tokens/s",
          yLabel: "delivered tokens/s",
          diagonal: true,
          series: capacityPaths.map((path) => ({
            name: path,
            color: pathColors[path] ?? "#555",
            points: results.capacity
              .filter((row) => row.path === path)
              .sort((a, b) => a.concurrency - b.concurrency)
              .map((row) => [row.offeredTokensPerS, row.deliveredTokensPerS] as const),
          })),
          references: [{ y: goal.relayTokensPerS, label: "goal 50k tokens/s", color: "#27ae60" }],
        },
        box,
      ),
    );
    panels.push((box) =>
      renderChart(
        {
          title: `Relay capacity: ITL p99 vs delivered tokens/s (limit ${results.options.itlLimitMs} ms)`,
          xLabel: "delivered tokens/s",
          yLabel: "ITL p99 ms (log)",
          yLog: true,
          series: capacityPaths.map((path) => ({
            name: path,
            color: pathColors[path] ?? "#555",
            points: results.capacity
              .filter((row) => row.path === path)
              .sort((a, b) => a.concurrency - b.concurrency)
              .map((row) => [row.deliveredTokensPerS, row.itl.p99] as const),
          })),
          references: [{ y: results.options.itlLimitMs, label: `${results.options.itlLimitMs} ms`, color: "#c0392b" }],
        },
        box,
      ),
    );
  }
  const hold = results.hold;
  if (hold) {
    panels.push((box) =>
      renderChart(
        {
          title: `Hold: ${hold.streams} slow streams through the mesh`,
          xLabel: "seconds",
          yLabel: "streams",
          series: [
            { name: "open (started, not ended)", color: "#2b7bb9", points: hold.timeline.map((point) => [point.t, point.open] as const) },
            { name: "receiving tokens", color: "#c0392b", points: hold.timeline.map((point) => [point.t, point.live] as const) },
            { name: "failed (cumulative)", color: "#000", dashed: true, points: hold.timeline.map((point) => [point.t, point.failed] as const) },
          ],
          references: [{ y: goal.concurrentStreams, label: "goal 10,000", color: "#27ae60" }],
        },
        box,
      ),
    );
  }
  const json = summaryLine(results, undefined);
  const shown = (value: unknown, unit = "") => (value === null || value === undefined ? "not measured" : `${String(value)}${unit}`);
  panels.push((box) =>
    renderText(
      "Summary (whole mesh)",
      [
        `added TTFT p50 at N=100: ${shown(json.added_ttft_p50_ms, " ms")} (goal <= 1 ms)`,
        `added TTFT p99 at N=100: ${shown(json.added_ttft_p99_ms, " ms")} (goal <= 5 ms)`,
        `added ITL p99 at N=100:  ${shown(json.added_itl_p99_ms, " ms")}`,
        `relay capacity: ${shown(json.relay_tokens_per_s, " tokens/s")} (goal >= 50000)`,
        `max concurrent streams: ${shown(json.max_concurrent_streams)} (goal 10000)`,
        `errors while holding streams: ${shown(json.errors)} (goal 0)`,
        `failed streams in the latency phases: ${shown(json.latency_errors)}`,
        "",
        `${results.machine.cpus} CPUs shared by client, simulator and services`,
        `services at LOG_LEVEL=${results.options.logLevel}; ${results.options.channels} HTTP/2 connections per door`,
        `worker TTFT ${results.options.ttftMs} ms, ITL ${results.options.itlMs} ms; direct client ${results.options.directClient}`,
        `run took ${fixed(results.durationS, 0)} s${results.options.quick ? " (--quick)" : ""}`,
      ],
      box,
    ),
  );
  return renderPage(panels, 3, 520, 400, `Vlinders mesh inference benchmark, ${results.startedAt.toISOString()}`);
}
