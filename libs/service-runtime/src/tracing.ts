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
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  installedProvider = provider;
  return {
    shutdown: async () => {
      await provider.shutdown();
    },
  };
}
