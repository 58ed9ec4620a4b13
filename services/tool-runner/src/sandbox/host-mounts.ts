import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";

/**
 * Mount plumbing of the warm pool, done with the host's `mount`/`umount` (this needs root and the
 * same mount namespace as the Docker daemon). One-off scripts (start-up, the reaper) spawn a
 * `sh -c` each; the hand-overs of a running sandbox go through a MountShell, one long-lived shell,
 * so that a hand-over costs only the mount executions.
 */

/** Runs a mount script with its arguments as $1…; rejects with a MountError when it fails. */
export type MountRunner = (script: string, args: readonly string[]) => Promise<void>;

const mountDeadlineMs = 5_000;

/** Thrown when a mount script fails or outlives its deadline; the message holds its stderr. */
export class MountError extends Error {
  override name = "MountError";
}

/** Runs `script` with `sh -c script sh args…`; arguments arrive as $1… so paths are never re-parsed. */
export async function runMountScript(script: string, args: readonly string[], deadlineMs = mountDeadlineMs): Promise<void> {
  const child = spawn("/bin/sh", ["-c", script, "sh", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    if (stderr.length < 4_096) stderr += text;
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), deadlineMs);
  try {
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once("error", reject);
      child.once("close", (exitCode) => resolve(exitCode));
    });
    if (code !== 0) throw new MountError(`mount script failed (exit ${code ?? `killed after ${deadlineMs} ms`}): ${stderr.trim() || script}`);
  } finally {
    clearTimeout(timer);
  }
}

/** Mount points listed in /proc/self/mountinfo with their optional fields (`shared:N`, `master:N`). */
export async function readMounts(): Promise<{ mountPoint: string; optionalFields: string[] }[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8");
  return text
    .split("\n")
    .filter((line) => line.length > 0)
    .map((line) => {
      const fields = line.split(" ");
      const separator = fields.indexOf("-");
      return { mountPoint: decodeMountPath(fields[4] ?? ""), optionalFields: fields.slice(6, separator < 0 ? undefined : separator) };
    });
}

// mountinfo escapes space, tab, newline and backslash as octal.
const decodeMountPath = (path: string) => path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));

/**
 * Makes `dir` a shared mount (bound onto itself first when it is not a mount point), so that a
 * mount made below it later propagates into containers that bind a subdirectory with `rslave`.
 * Idempotent: a directory that already is a shared mount is left alone.
 */
export async function ensureSharedMount(dir: string, run: MountRunner = runMountScript): Promise<void> {
  const entries = (await readMounts()).filter((entry) => entry.mountPoint === dir);
  // The last entry for a path is the one on top, the one that new mounts land on.
  const top = entries.at(-1);
  if (top?.optionalFields.some((field) => field.startsWith("shared:"))) return;
  await run(top === undefined ? 'mount --bind "$1" "$1" && mount --make-shared "$1"' : 'mount --make-shared "$1"', [dir]);
}

/** Mount points strictly below `dir`, deepest first (the order to unmount them in). */
export async function mountsBelow(dir: string): Promise<string[]> {
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  const below = (await readMounts()).map((entry) => entry.mountPoint).filter((path) => path.startsWith(prefix));
  return [...new Set(below)].sort((a, b) => b.length - a.length);
}

/** Lazily unmounts each path (every mount stacked on it); paths that are not mounted are skipped. */
export async function unmountAll(paths: readonly string[], run: MountRunner = runMountScript): Promise<void> {
  if (paths.length === 0) return;
  await run('for p in "$@"; do while mountpoint -q "$p"; do umount -l "$p" || exit 1; done; done', paths);
}

/**
 * The hand-over: binds a workspace onto a pooled container's slot, which propagates into the
 * running container. A read-only session goes through `stagingDir` (which must exist): the
 * workspace is bound there, made read-only and private, and that read-only mount is bound onto the
 * slot. Binding read-only straight onto the slot is not enough: `mount --bind -o ro` is a bind and
 * then a remount, the bind propagates into the container read-write at once and the remount does
 * not follow it (the spec checks that a read-only session cannot write).
 */
export async function bindWorkspaceIntoSlot(workspacePath: string, slotDir: string, stagingDir: string | undefined, run: MountRunner = runMountScript): Promise<void> {
  if (stagingDir === undefined) {
    await run('mount --bind "$1" "$2"', [workspacePath, slotDir]);
    return;
  }
  // util-linux applies ro and private with further mount(2) calls of the same execution.
  await run('mount --bind -o ro,private "$1" "$3" && mount --bind "$3" "$2"', [workspacePath, slotDir, stagingDir]);
}

// Scripts are told apart by a marker line: a script's own output cannot end in it by accident.
const doneMarker = /\n@@vlinders-done-(\d+) (\d+)\n/;

/**
 * One long-lived root `sh` that runs mount scripts one at a time over pipes, each in a subshell
 * followed by a marker line with its exit status. Saves the process start of `sh -c` per script.
 * A script that outlives its deadline gets the shell's whole process group killed; a dead shell is
 * started again for the next script.
 */
export class MountShell {
  #child: ChildProcessWithoutNullStreams | undefined;
  #tail: Promise<unknown> = Promise.resolve();
  #sequence = 0;
  #output = "";
  #current:
    | { sequence: number; child: ChildProcessWithoutNullStreams; resolve: (result: { code: number; output: string }) => void; reject: (error: Error) => void }
    | undefined;
  #closed = false;

  /** Runs `script` with `args` as $1…, after every script queued before it. */
  run(script: string, args: readonly string[], deadlineMs = mountDeadlineMs): Promise<void> {
    const result = this.#tail.then(() => this.#runNow(script, args, deadlineMs));
    this.#tail = result.catch(() => {});
    return result;
  }

  /** Ends the shell (after the queued scripts), killing it if it does not exit within a second. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#tail;
    const child = this.#child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.stdin.end();
    const timer = setTimeout(() => killGroup(child), 1_000);
    try {
      await exited;
    } finally {
      clearTimeout(timer);
    }
  }

  async #runNow(script: string, args: readonly string[], deadlineMs: number): Promise<void> {
    if (this.#closed) throw new MountError("the mount shell is closed");
    const child = this.#spawned();
    this.#sequence += 1;
    const sequence = this.#sequence;
    const done = new Promise<{ code: number; output: string }>((resolve, reject) => {
      this.#current = { sequence, child, resolve, reject };
    });
    // `set --` inside the subshell: the arguments are quoted once here and never re-parsed.
    child.stdin.write(`( set -- ${args.map(shellQuote).join(" ")}\n${script}\n) </dev/null 2>&1; printf '\\n@@vlinders-done-%d %d\\n' ${sequence} $?\n`);
    const timer = setTimeout(() => {
      this.#current?.reject(new MountError(`mount script did not finish within ${deadlineMs} ms: ${script}`));
      this.#current = undefined;
      // Forgotten at once: the next script starts a new shell rather than meet this one dying.
      if (this.#child === child) this.#child = undefined;
      killGroup(child);
    }, deadlineMs);
    try {
      const { code, output } = await done;
      if (code !== 0) throw new MountError(`mount script failed (exit ${code}): ${output.trim() || script}`);
    } finally {
      clearTimeout(timer);
    }
  }

  #spawned(): ChildProcessWithoutNullStreams {
    if (this.#child !== undefined) return this.#child;
    // Its own process group, so a deadline kills the mount it waits for too.
    const child = spawn("/bin/sh", [], { stdio: ["pipe", "pipe", "pipe"], detached: true });
    this.#child = child;
    this.#output = "";
    child.stdout.setEncoding("utf8").on("data", (text: string) => this.#onOutput(text));
    child.stderr.setEncoding("utf8").on("data", (text: string) => this.#onOutput(text));
    child.stdin.on("error", () => {}); // EPIPE of a dead shell; its exit below reports it.
    const onGone = (reason: string) => {
      if (this.#child === child) this.#child = undefined;
      if (this.#current?.child !== child) return;
      this.#current.reject(new MountError(`the mount shell died: ${reason}`));
      this.#current = undefined;
    };
    child.once("error", (error) => onGone(error.message));
    child.once("exit", (code, signal) => onGone(`exit ${code ?? signal ?? "?"}`));
    return child;
  }

  #onOutput(text: string): void {
    this.#output += text;
    for (let match = doneMarker.exec(this.#output); match !== null; match = doneMarker.exec(this.#output)) {
      const output = this.#output.slice(0, match.index);
      this.#output = this.#output.slice(match.index + match[0].length);
      const current = this.#current;
      // A marker of a script whose deadline passed is skipped.
      if (current?.sequence === Number(match[1])) {
        this.#current = undefined;
        current.resolve({ code: Number(match[2]), output: output.slice(-4_096) });
      }
    }
    if (this.#output.length > 65_536) this.#output = this.#output.slice(-4_096);
  }
}

function shellQuote(value: string): string {
  return `'${value.replaceAll("'", "'\\''")}'`;
}

function killGroup(child: ChildProcessWithoutNullStreams): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}
