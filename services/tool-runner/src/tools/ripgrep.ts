import { spawn } from "node:child_process";

/** How one ripgrep run ended. */
export interface RipgrepResult {
  /** rg's exit code (0 found, 1 nothing found, 2 an error), or null when it was stopped. */
  readonly exitCode: number | null;
  /** The first bytes of stderr: rg's error messages. */
  readonly stderr: string;
  /** Why it was stopped before it finished, if it was. */
  readonly stoppedBecause?: "timeout" | "enough-output";
}

export interface RipgrepOptions {
  /** The rg executable ("rg" from PATH unless given). */
  readonly executable: string;
  /** rg's arguments, passed as argv: nothing is ever interpreted by a shell. */
  readonly args: readonly string[];
  /**
   * rg's working directory; the tools give `/proc/self/fd/<fd>` of a directory they opened safely
   * (workspace/safe-open): the child chdirs there before exec, while it still has the fd.
   */
  readonly cwd: string;
  /** A file descriptor given to rg as its stdin (a file opened safely, searched with the path "-"). */
  readonly stdin?: number;
  /**
   * Runs rg as this user (the workspace's owner) instead of this process's (root). rg walks the
   * directories below its start by name, so a command swapping one for a symlink could still lead
   * it astray; as the owner, it reads no more than that command could itself.
   */
  readonly user?: { readonly uid: number; readonly gid: number } | undefined;
  readonly timeoutMs: number;
  /** The call's signal; when it aborts rg is killed and the run rejects with its reason. */
  readonly signal: AbortSignal;
  /** Called for every line of stdout; returning false stops rg (the caller has seen enough). */
  readonly onLine: (line: string) => boolean;
}

/** stderr kept for error messages; rg can warn once per unreadable file. */
const maxStderrBytes = 16 * 1024;

/**
 * Runs ripgrep and streams its stdout line by line, so that a search over a large tree is
 * counted without being held in memory. `--no-config` keeps a RIPGREP_CONFIG_PATH in the
 * service's environment from changing what the tools see.
 */
export async function runRipgrep(options: RipgrepOptions): Promise<RipgrepResult> {
  options.signal.throwIfAborted();
  const controller = new AbortController();
  let stoppedBecause: RipgrepResult["stoppedBecause"];
  const stop = (reason: "timeout" | "enough-output"): void => {
    stoppedBecause ??= reason;
    controller.abort();
  };
  const timer = setTimeout(() => stop("timeout"), options.timeoutMs);
  const onCallAbort = (): void => controller.abort();
  options.signal.addEventListener("abort", onCallAbort);
  try {
    const child = spawn(options.executable, ["--no-config", ...options.args], {
      cwd: options.cwd,
      stdio: [options.stdin ?? "ignore", "pipe", "pipe"],
      ...(options.user ? { uid: options.user.uid, gid: options.user.gid } : {}),
      signal: controller.signal,
      killSignal: "SIGKILL",
    });
    // Typed as possibly null because stdin may be a descriptor; the two asked for as "pipe" are always there.
    const childStdout = child.stdout!;
    const childStderr = child.stderr!;
    let stderr = "";
    childStderr.setEncoding("utf8");
    childStderr.on("data", (chunk: string) => {
      if (stderr.length < maxStderrBytes) stderr += chunk.slice(0, maxStderrBytes - stderr.length);
    });
    let pending = "";
    childStdout.setEncoding("utf8");
    childStdout.on("data", (chunk: string) => {
      if (stoppedBecause) return;
      pending += chunk;
      let newline = pending.indexOf("\n");
      while (newline >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (!options.onLine(line)) {
          stop("enough-output");
          return;
        }
        newline = pending.indexOf("\n");
      }
    });
    const exitCode = await new Promise<number | null>((resolve, reject) => {
      child.once("error", (error: NodeJS.ErrnoException) => {
        // An abort is reported as an error too; 'close' follows and settles the run.
        if (error.name === "AbortError") return;
        reject(error.code === "ENOENT" ? new Error(`ripgrep is not installed here (${options.executable} not found)`, { cause: error }) : error);
      });
      child.once("close", (code) => resolve(code));
    });
    options.signal.throwIfAborted();
    if (!stoppedBecause && pending !== "") options.onLine(pending);
    return { exitCode: stoppedBecause ? null : exitCode, stderr, ...(stoppedBecause ? { stoppedBecause } : {}) };
  } finally {
    clearTimeout(timer);
    options.signal.removeEventListener("abort", onCallAbort);
  }
}

/** The message of rg's stderr, on one line, without rg's "rg: " prefixes. */
export function ripgrepError(stderr: string): string {
  return stderr
    .split("\n")
    .map((line) => line.replace(/^rg: /, "").trim())
    .filter((line) => line !== "")
    .join(" ")
    .slice(0, 1000);
}

/**
 * A path rg printed, relative to the directory it ran in ("./src/a.ts"), as the caller sees it:
 * relative to the workspace root, given where that directory is (`directory`, "." for the root).
 */
export function workspacePathOf(directory: string, printed: string): string {
  const inside = printed.startsWith("./") ? printed.slice(2) : printed;
  return directory === "." ? inside : `${directory}/${inside}`;
}
