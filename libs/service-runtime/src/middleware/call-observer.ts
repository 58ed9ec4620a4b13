import { Status } from "nice-grpc-common";
import type { Logger } from "../logger";
import type { GrpcServerMetrics } from "../metrics";

function callType(call: { requestStream: boolean; responseStream: boolean }): string {
  if (call.requestStream) return call.responseStream ? "bidi_stream" : "client_stream";
  return call.responseStream ? "server_stream" : "unary";
}

/**
 * Records Prometheus metrics and one access-log line per call: `start` when it begins, the
 * returned `end` with its status. Nothing happens per streamed message.
 */
export function createCallRecorder(options: { logger: Logger; metrics: GrpcServerMetrics }) {
  const { logger, metrics } = options;
  return function start(
    call: { path: string; requestStream: boolean; responseStream: boolean },
    logFields: Record<string, string | undefined> = {},
  ): (code: Status) => void {
    const [, service = "", method = ""] = call.path.split("/");
    const labels = { grpc_service: service, grpc_method: method, grpc_type: callType(call) };
    metrics.started.inc(labels);
    const startedAt = performance.now();
    return (code) => {
      const seconds = (performance.now() - startedAt) / 1000;
      const ended = { ...labels, grpc_code: Status[code] };
      metrics.handled.inc(ended);
      metrics.handlingSeconds.observe(ended, seconds);
      if (!call.path.startsWith("/grpc.")) {
        logger.info({ ...logFields, method: call.path, code: Status[code], duration_ms: Math.round(seconds * 1000) }, "rpc finished");
      }
    };
  };
}
