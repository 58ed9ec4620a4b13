import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  ConsoleSpanExporter,
  SimpleSpanProcessor,
  type SpanExporter,
} from "@opentelemetry/sdk-trace-base";

let installedProvider: BasicTracerProvider | undefined;

/**
 * Installs the process-wide OpenTelemetry tracer provider, the async context manager and the W3C
 * trace-context propagator (traceparent/tracestate travel in gRPC metadata). Call it first in a
 * composition root, before any client or server exists. Spans are exported to the given exporter,
 * to the console when OTEL_TRACES_EXPORTER=console, or nowhere (ids are still made and propagated,
 * so logs of one request carry one trace id across services).
 */
export function initTracing(options: { service: string; exporter?: SpanExporter; env?: NodeJS.ProcessEnv }): {
  shutdown(): Promise<void>;
} {
  if (installedProvider) return { shutdown: async () => {} };
  const env = options.env ?? process.env;
  const exporter = options.exporter ?? (env.OTEL_TRACES_EXPORTER === "console" ? new ConsoleSpanExporter() : undefined);
  const provider = new BasicTracerProvider({
    spanProcessors: exporter ? [new SimpleSpanProcessor(exporter)] : [],
  });
  // The trace context of a call travels with its AbortSignal (see traceContextOf), which every
  // handler passes downstream anyway. An AsyncLocalStorage context manager would also give deep
  // code an "active span", but on Node 20 it hooks every promise: measured on the Chat relay, it
  // tripled the time to first token at 100 streams. Opt in with OTEL_CONTEXT_MANAGER.
  if (env.OTEL_CONTEXT_MANAGER === "async-local-storage") {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  }
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  installedProvider = provider;
  return {
    shutdown: async () => {
      await provider.shutdown();
    },
  };
}
