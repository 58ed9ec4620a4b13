import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmdirSync } from "node:fs";
import { mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * Memory cgroups for the bubblewrap backend: rlimits are per process (RLIMIT_AS times the process
 * count) and do not count tmpfs pages at all, so only a cgroup caps what a sandbox takes from the
 * host in total. Each command gets a cgroup of its own, `vlinders-bwrap-<random>`, made before it
 * starts and removed after it ended; cgroup v1 (the `memory` hierarchy) and v2 (a root cgroup
 * with the memory controller enabled for its children) are supported. Making cgroups needs root.
 *
 * Where the pids controller is there too, the same cgroup also bounds the command's processes:
 * RLIMIT_NPROC counts every process of the sandbox's uid on the host (Docker sandboxes included),
 * so a fork bomb elsewhere would make a bubblewrap command fail to start, and the other way round.
 */

const cgroupRoot = "/sys/fs/cgroup";
const namePrefix = "vlinders-bwrap-";
// After the kill, the kernel takes a moment to let the cgroup's last tasks go; rmdir says EBUSY until then.
const removeAttempts = 50;
const removeRetryMs = 20;

/** Where this host's memory cgroups are made, and in which cgroup version. */
export interface MemoryCgroupRoot {
  readonly version: 1 | 2;
  readonly path: string;
  /** v1: the pids hierarchy, when there is one; v2: the root again when its children get the pids controller. */
  readonly pidsPath?: string;
}

/**
 * The memory cgroup hierarchy this process can make cgroups in, or a reason why not: probed by
 * making and removing a cgroup, so that what is found works.
 */
export function findMemoryCgroupRoot(): MemoryCgroupRoot | { problem: string } {
  if (process.getuid?.() !== 0) return { problem: "making cgroups needs root" };
  let candidate: MemoryCgroupRoot;
  if (existsSync(join(cgroupRoot, "cgroup.controllers"))) {
    // v2: the children of the root cgroup get a memory controller only when it is delegated to them.
    const enabled = readFileSync(join(cgroupRoot, "cgroup.subtree_control"), "utf8").split(/\s+/);
    if (!enabled.includes("memory")) return { problem: `the memory controller is not enabled in ${cgroupRoot}/cgroup.subtree_control` };
    candidate = { version: 2, path: cgroupRoot, ...(enabled.includes("pids") ? { pidsPath: cgroupRoot } : {}) };
  } else if (existsSync(join(cgroupRoot, "memory", "cgroup.procs"))) {
    const pids = join(cgroupRoot, "pids");
    candidate = { version: 1, path: join(cgroupRoot, "memory"), ...(existsSync(join(pids, "cgroup.procs")) ? { pidsPath: pids } : {}) };
  } else {
    return { problem: `no memory cgroup hierarchy under ${cgroupRoot}` };
  }
  const probe = join(candidate.path, `${namePrefix}probe-${process.pid}`);
  try {
    mkdirSync(probe);
    rmdirSync(probe);
    if (candidate.version === 1 && candidate.pidsPath !== undefined) {
      const pidsProbe = join(candidate.pidsPath, `${namePrefix}probe-${process.pid}`);
      try {
        mkdirSync(pidsProbe);
        rmdirSync(pidsProbe);
      } catch {
        return { version: 1, path: candidate.path };
      }
    }
    return candidate;
  } catch (error: unknown) {
    return { problem: `cannot make a cgroup in ${candidate.path}: ${error instanceof Error ? error.message : String(error)}` };
  }
}

/** One command's memory cgroup (and its pids cgroup, when the host has that controller). */
export class MemoryCgroup {
  readonly path: string;
  readonly #version: 1 | 2;
  /** v1 only: the separate pids cgroup. */
  #pidsPath: string | undefined;
  /** Whether the command's processes are bounded here (else only RLIMIT_NPROC bounds them). */
  limitsProcesses = false;

  private constructor(path: string, version: 1 | 2) {
    this.path = path;
    this.#version = version;
  }

  /** Makes a cgroup limited to `limitBytes` of memory, tmpfs pages included, and no swap, and to `pidsLimit` processes where it can. */
  static async create(root: MemoryCgroupRoot, limitBytes: number, pidsLimit?: number): Promise<MemoryCgroup> {
    const name = `${namePrefix}${randomBytes(6).toString("hex")}`;
    const path = join(root.path, name);
    await mkdir(path);
    const cgroup = new MemoryCgroup(path, root.version);
    try {
      if (pidsLimit !== undefined && root.pidsPath !== undefined) {
        if (root.version === 1) {
          cgroup.#pidsPath = join(root.pidsPath, name);
          await mkdir(cgroup.#pidsPath);
          await writeFile(join(cgroup.#pidsPath, "pids.max"), String(pidsLimit));
        } else {
          await writeFile(join(path, "pids.max"), String(pidsLimit));
        }
        cgroup.limitsProcesses = true;
      }
      if (root.version === 1) {
        await writeFile(join(path, "memory.limit_in_bytes"), String(limitBytes));
        // memsw (memory + swap) exists when swap accounting is on; equal to the limit means no swap.
        const memsw = join(path, "memory.memsw.limit_in_bytes");
        if (existsSync(memsw)) await writeFile(memsw, String(limitBytes));
      } else {
        await writeFile(join(path, "memory.max"), String(limitBytes));
        const swap = join(path, "memory.swap.max");
        if (existsSync(swap)) await writeFile(swap, "0");
      }
    } catch (error: unknown) {
      await cgroup.remove();
      throw error;
    }
    return cgroup;
  }

  /** The files a process writes its pid to in order to enter the cgroup(s). */
  get procsFiles(): string[] {
    return [join(this.path, "cgroup.procs"), ...(this.#pidsPath === undefined ? [] : [join(this.#pidsPath, "cgroup.procs")])];
  }

  /** How many times the kernel's OOM killer struck in this cgroup (v1 memory.oom_control, v2 memory.events). */
  async oomKills(): Promise<number> {
    const file = join(this.path, this.#version === 1 ? "memory.oom_control" : "memory.events");
    const text = await readFile(file, "utf8").catch(() => "");
    return Number(/oom_kill (\d+)/.exec(text)?.[1] ?? 0);
  }

  /** SIGKILLs whatever is still in the cgroup (a process that slipped out of the sandbox's group), then removes it. */
  async remove(): Promise<void> {
    await removeCgroup(this.path);
    if (this.#pidsPath !== undefined) await removeCgroup(this.#pidsPath);
  }
}

async function removeCgroup(path: string): Promise<void> {
  for (let attempt = 0; ; attempt += 1) {
    const pids = (await readFile(join(path, "cgroup.procs"), "utf8").catch(() => "")).split("\n").filter((line) => line.length > 0);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        // Gone already.
      }
    }
    try {
      await rmdir(path);
      return;
    } catch (error: unknown) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      if (code !== "EBUSY" || attempt >= removeAttempts) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, removeRetryMs));
  }
}
