import { bindDeadline, deadlineOf } from "./call-deadline";
import { bindTraceContext, traceContextOf } from "./middleware/tracing";

/**
 * One AbortSignal that aborts when any of the given signals does, with the reason of the first.
 * It carries the trace context of the first source that has one (a call's signal, a span's from
 * startSignalSpan), so that calls made with it stay in the caller's trace, and the earliest
 * deadline of its sources, so that they inherit the caller's deadline.
 * Unlike AbortSignal.any, it leaves nothing behind on the sources once disposed: Node 20 keeps an
 * entry on each source of AbortSignal.any for as long as the source lives, which on a server-wide
 * or worker-wide signal grows with every call.
 */
export function linkSignals(...sources: AbortSignal[]): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  for (const source of sources) {
    const traceContext = traceContextOf(source);
    if (traceContext === undefined) continue;
    bindTraceContext(controller.signal, traceContext);
    break;
  }
  let deadline: number | undefined;
  for (const source of sources) {
    const sourceDeadline = deadlineOf(source);
    if (sourceDeadline !== undefined && (deadline === undefined || sourceDeadline < deadline)) deadline = sourceDeadline;
  }
  if (deadline !== undefined) bindDeadline(controller.signal, deadline);
  const aborted = sources.find((source) => source.aborted);
  if (aborted) {
    controller.abort(aborted.reason);
    return { signal: controller.signal, dispose: () => {} };
  }
  const onAbort = (event: Event) => {
    controller.abort((event.target as AbortSignal).reason);
    dispose();
  };
  const dispose = () => {
    for (const source of sources) source.removeEventListener("abort", onAbort);
  };
  for (const source of sources) source.addEventListener("abort", onAbort);
  return { signal: controller.signal, dispose };
}
