import { context as otelContext } from "@opentelemetry/api";
import { isAbortError } from "abort-controller-x";
import { ClientError, Metadata, Status, type ClientMiddleware } from "nice-grpc-common";
import { linkSignals } from "../linked-signal";
import { internalAuthHeader } from "./internal-auth";
import { bindGenerator, injectTraceContext, startClientSpan, traceContextOf } from "./tracing";

/** Call options of an internal client: a deadline, absolute or in milliseconds from now. */
export interface DeadlineOptions {
  deadline?: Date | number;
}

/**
 * What every call from one service of the mesh to another carries: a CLIENT span whose context
 * travels in the metadata, the shared secret, and a deadline (the default unless the caller set
 * one) after which the call is cancelled and fails with DEADLINE_EXCEEDED.
 *
 * One middleware rather than three for the same reason as the server's call pipeline: each would
 * wrap a response stream in another async generator that every token passes through.
 */
export function createInternalClientPipeline(options: { internalSecret: string; defaultDeadlineMs: number }): ClientMiddleware<DeadlineOptions> {
  return function internalCall(call, callOptions) {
    const { deadline = options.defaultDeadlineMs, ...rest } = callOptions;
    const span = startClientSpan(call.method.path, traceContextOf(rest.signal) ?? otelContext.active());
    const metadata = Metadata(rest.metadata);
    metadata.set(internalAuthHeader, options.internalSecret);
    injectTraceContext(span.active, metadata);
    async function* run() {
      const timeout = new AbortController();
      const linked = rest.signal ? linkSignals(rest.signal, timeout.signal) : { signal: timeout.signal, dispose: () => {} };
      const milliseconds = deadline instanceof Date ? deadline.getTime() - Date.now() : deadline;
      const timer = setTimeout(() => timeout.abort(), Math.max(0, milliseconds));
      let code = Status.OK;
      let message: string | undefined;
      try {
        return yield* call.next(call.request, { ...rest, metadata, signal: linked.signal });
      } catch (error: unknown) {
        if (timeout.signal.aborted && isAbortError(error)) {
          code = Status.DEADLINE_EXCEEDED;
          throw new ClientError(call.method.path, Status.DEADLINE_EXCEEDED, `deadline of ${Math.round(milliseconds)} ms exceeded`);
        }
        code = error instanceof ClientError ? error.code : isAbortError(error) ? Status.CANCELLED : Status.UNKNOWN;
        message = error instanceof ClientError ? error.details : undefined;
        throw error;
      } finally {
        clearTimeout(timer);
        linked.dispose();
        span.end(code, message);
      }
    }
    return bindGenerator(span.active, run());
  };
}

