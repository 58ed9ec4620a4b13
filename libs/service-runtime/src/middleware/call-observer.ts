import { ServerError, Status, type ServerMiddleware } from "nice-grpc-common";
import type { Logger } from "../logger";
import type { GrpcServerMetrics } from "../metrics";

function callType(call: { requestStream: boolean; responseStream: boolean }): string {
  if (call.requestStream) return call.responseStream ? "bidi_stream" : "client_stream";
  return call.responseStream ? "server_stream" : "unary";
}

/** Records Prometheus metrics and one access-log line for every call. */
export function createCallObserverMiddleware(options: { logger: Logger; metrics: GrpcServerMetrics }): ServerMiddleware {
  const { logger, metrics } = options;
  return async function* callObserver(call, context) {
    const [, service = "", method = ""] = call.method.path.split("/");
    const type = callType(call);
    const labels = { grpc_service: service, grpc_method: method, grpc_type: type };
    metrics.started.inc(labels);
    const startedAt = performance.now();
    let code = Status.OK;
    let messagesSent = 0;
    try {
      if (!call.responseStream) return yield* call.next(call.request, context);
      for await (const message of call.next(call.request, context)) {
        messagesSent += 1;
        metrics.streamMessagesSent.inc({ grpc_service: service, grpc_method: method });
        yield message;
      }
      return;
    } catch (error: unknown) {
      code = error instanceof ServerError ? error.code : Status.UNKNOWN;
      throw error;
    } finally {
      if (code === Status.OK && context.signal.aborted) code = Status.CANCELLED;
      const seconds = (performance.now() - startedAt) / 1000;
      metrics.handled.inc({ ...labels, grpc_code: Status[code] });
      metrics.handlingSeconds.observe({ ...labels, grpc_code: Status[code] }, seconds);
      if (!call.method.path.startsWith("/grpc.")) {
        logger.info(
          { method: call.method.path, code: Status[code], duration_ms: Math.round(seconds * 1000), messages_sent: messagesSent },
          "rpc finished",
        );
      }
    }
  };
}
