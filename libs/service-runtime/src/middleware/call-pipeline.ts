import { Status, type ServerMiddleware } from "nice-grpc-common";
import type { Logger } from "../logger";
import { linkSignals } from "../linked-signal";
import type { GrpcServerMetrics } from "../metrics";
import { createCallRecorder } from "./call-observer";
import { createErrorMapper } from "./error-boundary";
import { createInternalAuthCheck } from "./internal-auth";
import { bindGenerator, bindTraceContext, startServerSpan, traceFields } from "./tracing";

/**
 * Everything the mesh does around each call, in the order it matters: a trace span, metrics and
 * the access log, the error boundary (one place maps whatever a handler throws to a status), the
 * shared-secret check, and one AbortSignal per call linked to the client's cancel, the deadline
 * and shutdown.
 *
 * One middleware rather than five on purpose: each middleware wraps a server stream in another
 * async generator, and every streamed token then passes through each of them. Measured on the
 * mesh's Chat relay, that was a large share of the CPU per token. The concerns stay separate
 * functions in their own files; only their composition is inlined here.
 */
export function createCallPipelineMiddleware(options: {
  logger: Logger;
  metrics: GrpcServerMetrics;
  internalSecret: string;
  /** Aborted when the grace period after shutdown is over: calls still running are aborted. */
  shutdownSignal: AbortSignal;
}): ServerMiddleware {
  const record = createCallRecorder(options);
  const toServerError = createErrorMapper(options);
  const authorize = createInternalAuthCheck(options.internalSecret);

  return function callPipeline(call, context) {
    const span = startServerSpan(call.method.path, context.metadata);
    const end = record(call, traceFields(span.active));
    async function* run() {
      const linked = linkSignals(context.signal, options.shutdownSignal);
      bindTraceContext(linked.signal, span.active);
      let code = Status.OK;
      let message: string | undefined;
      try {
        authorize(call.method.path, context.metadata);
        return yield* call.next(call.request, { ...context, signal: linked.signal });
      } catch (error: unknown) {
        const mapped = toServerError(error, call.method.path);
        code = mapped.code;
        message = mapped.details;
        throw mapped;
      } finally {
        linked.dispose();
        if (code === Status.OK && context.signal.aborted) code = Status.CANCELLED;
        end(code);
        span.end(code, message);
      }
    }
    return bindGenerator(span.active, run());
  };
}
