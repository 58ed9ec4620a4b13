import { context as otelContext } from "@opentelemetry/api";
import { Status } from "nice-grpc-common";
import type { Logger } from "../logger";
import { linkSignals } from "../linked-signal";
import type { GrpcServerMetrics } from "../metrics";
import type { CallInterceptor } from "../transport/grpc-server";
import { createCallRecorder } from "./call-observer";
import { retryAfterOf, retryAfterTrailer } from "../retry-hint";
import { createErrorMapper } from "./error-boundary";
import { createInternalAuthCheck } from "./internal-auth";
import { bindTraceContext, startServerSpan, traceFields } from "./tracing";

/**
 * Everything the mesh does around each call, in the order it matters: a trace span, metrics and
 * the access log, the error boundary (one place maps whatever a handler throws to a status), the
 * shared-secret check, and one AbortSignal per call linked to the client's cancel, the deadline
 * and shutdown. It wraps the call once; nothing of it runs per streamed message.
 */
export function createCallPipeline(options: {
  logger: Logger;
  metrics: GrpcServerMetrics;
  internalSecret: string;
  /** Aborted when the grace period after shutdown is over: calls still running are aborted. */
  shutdownSignal: AbortSignal;
}): CallInterceptor {
  const record = createCallRecorder(options);
  const toServerError = createErrorMapper(options);
  const authorize = createInternalAuthCheck(options.internalSecret);

  return async function callPipeline(call, context, invoke) {
    const span = startServerSpan(call.path, context.metadata);
    const end = record(call, traceFields(span.active));
    const linked = linkSignals(context.signal, options.shutdownSignal);
    bindTraceContext(linked.signal, span.active);
    let code = Status.OK;
    let message: string | undefined;
    try {
      authorize(call.path, context.metadata);
      await otelContext.with(span.active, () => invoke({ ...context, signal: linked.signal }));
    } catch (error: unknown) {
      const mapped = toServerError(error, call.path);
      // Its own refusal's hint, or a downstream's passed on: the caller learns when to come back.
      const retryAfterMs = retryAfterOf(error);
      if (retryAfterMs !== undefined && mapped.code === Status.RESOURCE_EXHAUSTED) context.trailer.set(retryAfterTrailer, String(retryAfterMs));
      code = mapped.code;
      message = mapped.details;
      throw mapped;
    } finally {
      linked.dispose();
      if (code === Status.OK && context.signal.aborted) code = Status.CANCELLED;
      end(code);
      span.end(code, message);
    }
  };
}
