import { spawn } from "node:child_process";
import { once } from "node:events";
import { constants } from "node:os";
import { OutputCapture } from "./output-capture";
import type { CommandKillReason, CommandOutcome, CommandRequest } from "./sandbox";

/** How to start one command as a host process (bubblewrap or the bare host). */
export interface HostProcessSpec {
  readonly file: string;
  readonly args: readonly string[];
  readonly cwd: string;
  readonly env: NodeJS.ProcessEnv;
  /** Set only when this process may switch users (it runs as root). */
  readonly uid?: number;
  readonly gid?: number;
}

// After the process exits, output still in the pipes is read for at most this long: a background
// child that keeps the pipe open must not hold the call.
const drainAfterExitMs = 1_000;
// SIGKILL of a process group ends it at once; this bounds the wait should the kernel be slow.
const exitAfterKillMs = 5_000;

/**
 * Runs a command as a host process in its own process group, capturing stdout and stderr in
 * arrival order. A timeout, a cancel or too much output kills the whole group with SIGKILL (a
 * process that starts its own session escapes this on the bare host; bubblewrap's PID namespace
 * does not let it).
 */
export async function runHostProcess(spec: HostProcessSpec, request: CommandRequest, killBytes: number): Promise<CommandOutcome> {
  const startedAt = performance.now();
  let killedBecause: CommandKillReason | undefined;
  const child = spawn(spec.file, spec.args, {
    cwd: spec.cwd,
    env: spec.env,
    detached: true, // Its own process group, so that a kill reaches every descendant.
    stdio: ["ignore", "pipe", "pipe"],
    ...(spec.uid === undefined ? {} : { uid: spec.uid, gid: spec.gid }),
  });
  const exited = once(child, "exit") as Promise<[number | null, NodeJS.Signals | null]>;
  const closed = once(child, "close");
  // A spawn failure (missing binary) arrives as "error" and rejects both, and is thrown below.

  const kill = (reason: CommandKillReason) => {
    if (killedBecause !== undefined) return;
    killedBecause = reason;
    try {
      if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
    } catch {
      // The group is already gone.
    }
    child.stdout.destroy();
    child.stderr.destroy();
  };
  const capture = new OutputCapture({ limitBytes: request.outputLimitBytes, killBytes, onKillLimit: () => kill("output-limit") });
  child.stdout.on("data", (chunk: Buffer) => capture.push(chunk));
  child.stderr.on("data", (chunk: Buffer) => capture.push(chunk));

  const timer = setTimeout(() => kill("timeout"), Math.max(0, request.timeoutMs));
  const onAbort = () => kill("cancelled");
  if (request.signal.aborted) onAbort();
  else request.signal.addEventListener("abort", onAbort, { once: true });
  try {
    const [code, signal] = await withDeadline(exited, request.timeoutMs + exitAfterKillMs + drainAfterExitMs, "the command's process did not exit");
    clearTimeout(timer);
    const drained = await Promise.race([closed.then(() => true), delay(drainAfterExitMs).then(() => false)]);
    if (!drained) {
      child.stdout.destroy();
      child.stderr.destroy();
    }
    const { output, truncated } = capture.result();
    const exitCode = killedBecause !== undefined ? null : code ?? (signal === null ? null : 128 + (constants.signals[signal] ?? 0));
    return { exitCode, output, truncated, durationMs: performance.now() - startedAt, ...(killedBecause === undefined ? {} : { killedBecause }) };
  } finally {
    clearTimeout(timer);
    request.signal.removeEventListener("abort", onAbort);
    closed.catch(() => {}); // Already observed through `exited`; keep the twin from reporting as unhandled.
  }
}

async function delay(ms: number): Promise<void> {
  await new Promise<void>((resolve) => {
    setTimeout(resolve, ms).unref();
  });
}

/** What to do when `withDeadline` gave up on a promise that then still resolved or was aborted. */
export interface DeadlineOptions<T> {
  /**
   * Called with the value of a promise that resolved after the deadline (or the abort): a container
   * created too late, say, which nobody else tracks and which must then be removed.
   */
  readonly onAbandoned?: (value: T) => void;
  /** Rejects at once with the signal's reason when it aborts. */
  readonly signal?: AbortSignal;
}

/** Resolves as `promise` does, or rejects with `message` after `ms` (or when `options.signal` aborts). */
export async function withDeadline<T>(promise: Promise<T>, ms: number, message: string, options: DeadlineOptions<T> = {}): Promise<T> {
  const { onAbandoned, signal } = options;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  let abandoned = false;
  promise.then(
    (value) => {
      if (abandoned) onAbandoned?.(value);
    },
    () => {}, // The caller sees the rejection through the race below, or gave up on it.
  );
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          abandoned = true;
          reject(new Error(`${message} within ${ms} ms`));
        }, ms);
        if (signal !== undefined) {
          onAbort = () => {
            abandoned = true;
            reject(signal.reason instanceof Error ? signal.reason : new Error(`${message}: aborted`));
          };
          if (signal.aborted) onAbort();
          else signal.addEventListener("abort", onAbort, { once: true });
        }
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
  }
}
