import { readdirSync, readFileSync } from "node:fs";

/**
 * What each process of the benchmark costs, read from /proc (Linux; elsewhere every value is
 * NaN): CPU time, resident memory and open file descriptors.
 */
export interface ProcessSample {
  name: string;
  /** User + system CPU time so far, in milliseconds. */
  cpuMs: number;
  rssMb: number;
  openFds: number;
}

/** Linux reports CPU time in clock ticks of 1/100 s on every common architecture. */
const ticksPerSecond = 100;

function cpuMsOf(pid: number | "self"): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name, which is in parentheses and may contain spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond;
  } catch {
    return NaN;
  }
}

function rssMbOf(pid: number | "self"): number {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

function openFdsOf(pid: number | "self"): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
  }
}

/** One sample of every process: the benchmark's own client first, as "client". */
export function sampleProcesses(processes: ReadonlyArray<{ name: string; pid: number }>): ProcessSample[] {
  const all: Array<{ name: string; pid: number | "self" }> = [{ name: "client", pid: "self" }, ...processes];
  return all.map(({ name, pid }) => ({ name, cpuMs: cpuMsOf(pid), rssMb: rssMbOf(pid), openFds: openFdsOf(pid) }));
}

/** CPU time all processes of the machine have used so far (busy time of every core, added up), in milliseconds. */
export function machineBusyMs(): number {
  try {
    const fields = (readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "").trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields;
    return ((user + nice + system + irq + softirq + steal) * 1000) / ticksPerSecond;
  } catch {
    return NaN;
  }
}

export interface CpuSnapshot {
  processes: ProcessSample[];
  machineBusyMs: number;
  at: number;
}

export function cpuSnapshot(processes: ReadonlyArray<{ name: string; pid: number }>): CpuSnapshot {
  return { processes: sampleProcesses(processes), machineBusyMs: machineBusyMs(), at: performance.now() };
}

/**
 * CPU use between two snapshots, in percent of one core, by process name, plus "other": what the
 * rest of the machine used meanwhile (other people's builds and tests on a shared machine take the
 * same cores and make every timing of the window worse).
 */
export function cpuPercent(before: CpuSnapshot, after: CpuSnapshot): Record<string, number> {
  const wallMs = after.at - before.at;
  const result: Record<string, number> = {};
  let ours = 0;
  for (const end of after.processes) {
    const start = before.processes.find((sample) => sample.name === end.name);
    if (!start) continue;
    result[end.name] = ((end.cpuMs - start.cpuMs) / wallMs) * 100;
    ours += end.cpuMs - start.cpuMs;
  }
  const other = ((after.machineBusyMs - before.machineBusyMs - ours) / wallMs) * 100;
  if (Number.isFinite(other)) result.other = Math.max(0, other);
  return result;
}

/** CPU use over the next `ms`, in percent of one core: the benchmark's processes, and the rest of the machine. */
export async function machineLoad(processes: ReadonlyArray<{ name: string; pid: number }>, ms = 1_000): Promise<{ ours: number; other: number }> {
  const before = cpuSnapshot(processes);
  await new Promise((resolve) => setTimeout(resolve, ms));
  const { other = NaN, ...ours } = cpuPercent(before, cpuSnapshot(processes));
  return { ours: Object.values(ours).reduce((sum, value) => sum + value, 0), other };
}

/** Keeps the largest RSS and descriptor count seen per process. */
export class PeakTracker {
  readonly peaks = new Map<string, { rssMb: number; openFds: number }>();

  add(samples: readonly ProcessSample[]): void {
    for (const sample of samples) {
      const peak = this.peaks.get(sample.name) ?? { rssMb: 0, openFds: 0 };
      if (sample.rssMb > peak.rssMb) peak.rssMb = sample.rssMb;
      if (sample.openFds > peak.openFds) peak.openFds = sample.openFds;
      this.peaks.set(sample.name, peak);
    }
  }
}
