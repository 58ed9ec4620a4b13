import { Status } from "nice-grpc-common";
import type { Logger } from "../logger";
import type { GrpcServerMetrics } from "../metrics";

function callType(call: { requestStream: boolean; responseStream: boolean }): string {
  if (call.requestStream) return call.responseStream ? "bidi_stream" : "client_stream";
  return call.responseStream ? "server_stream" : "unary";
}

/** The metric series of one method, looked up once: prom-client hashes a label set on every use. */
interface MethodSeries {
  started: { inc(): void };
  ended: Map<Status, { handled: { inc(): void }; handlingSeconds: { observe(value: number): void } }>;
  labels: { grpc_service: string; grpc_method: string; grpc_type: string };
}

/**
 * Records Prometheus metrics and one access-log line per call: `start` when it begins, the
 * returned `end` with its status. Nothing happens per streamed message.
 */
export function createCallRecorder(options: { logger: Logger; metrics: GrpcServerMetrics }) {
  const { logger, metrics } = options;
  const seriesByPath = new Map<string, MethodSeries>();

  function seriesOf(call: { path: string; requestStream: boolean; responseStream: boolean }): MethodSeries {
    let series = seriesByPath.get(call.path);
    if (!series) {
      const [, service = "", method = ""] = call.path.split("/");
      const labels = { grpc_service: service, grpc_method: method, grpc_type: callType(call) };
      series = { started: metrics.started.labels(labels), ended: new Map(), labels };
      seriesByPath.set(call.path, series);
    }
    return series;
  }

  function endedSeriesOf(series: MethodSeries, code: Status) {
    let ended = series.ended.get(code);
    if (!ended) {
      const labels = { ...series.labels, grpc_code: Status[code] };
      ended = { handled: metrics.handled.labels(labels), handlingSeconds: metrics.handlingSeconds.labels(labels) };
      series.ended.set(code, ended);
    }
    return ended;
  }

  return function start(
    call: { path: string; requestStream: boolean; responseStream: boolean },
    logFields: Record<string, string | undefined> = {},
  ): (code: Status) => void {
    const series = seriesOf(call);
    series.started.inc();
    const startedAt = performance.now();
    return (code) => {
      const seconds = (performance.now() - startedAt) / 1000;
      const ended = endedSeriesOf(series, code);
      ended.handled.inc();
      ended.handlingSeconds.observe(seconds);
      if (!call.path.startsWith("/grpc.") && logger.isLevelEnabled("info")) {
        logger.info({ ...logFields, method: call.path, code: Status[code], duration_ms: Math.round(seconds * 1000) }, "rpc finished");
      }
    };
  };
}
