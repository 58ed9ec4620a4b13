/**
 * The deadline a caller gave a call (grpc-timeout), carried by the call's AbortSignal as its trace
 * context is: every downstream call made with that signal inherits it, so no hop waits longer than
 * the caller who will throw the answer away.
 */
const deadlines = new WeakMap<AbortSignal, number>();

/** Records that work done under `signal` must end by `deadline` (epoch ms). */
export function bindDeadline(signal: AbortSignal, deadline: number): void {
  deadlines.set(signal, deadline);
}

/** Work under `signal` no longer ends with its caller's deadline (work shared by several callers). */
export function unbindDeadline(signal: AbortSignal): void {
  deadlines.delete(signal);
}

/** The deadline (epoch ms) bound to `signal`, if its call has one. */
export function deadlineOf(signal: AbortSignal | undefined): number | undefined {
  return signal === undefined ? undefined : deadlines.get(signal);
}

/**
 * The reason of a call's signal when its caller's deadline passed: work cut off by the deadline
 * can tell itself from work its caller cancelled (an agent run records a timeout, not a cancel).
 * Named AbortError, so that whatever handles an abort (isAbortError) handles this one the same way.
 */
export class CallDeadlineError extends Error {
  override name = "AbortError";
  constructor(readonly timeoutMs: number) {
    super(`the caller's deadline of ${Math.round(timeoutMs)} ms passed`);
  }
}
