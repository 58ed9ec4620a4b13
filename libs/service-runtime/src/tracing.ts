import { context, propagation, SpanKind, SpanStatusCode, trace, type Attributes, type Span } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  AlwaysOffSampler,
  BasicTracerProvider,
  ConsoleSpanExporter,
  SimpleSpanProcessor,
  type SpanExporter,
} from "@opentelemetry/sdk-trace-base";
import { linkSignals } from "./linked-signal";
import { bindTraceContext, traceContextOf } from "./middleware/tracing";

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
  // Without an exporter nothing would read a recorded span, and recording costs every call of
  // every hop: spans are then not recorded, while their ids are still made and sent on.
  const provider = new BasicTracerProvider(
    exporter ? { spanProcessors: [new SimpleSpanProcessor(exporter)] } : { sampler: new AlwaysOffSampler() },
  );
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

/** A span of work inside a call, and the signal that carries it to the work's downstream calls. */
export interface SignalSpan {
  readonly span: Span;
  /**
   * Aborts when the parent signal does, and carries this span's trace context: pass it to
   * downstream calls (their client spans become children of this span) and to startSignalSpan for
   * nested spans.
   */
  readonly signal: AbortSignal;
  /** Ends the span, as an error when `error` is given, and unlinks the signal from its parent. Call it once. */
  end(error?: unknown): void;
}

const internalTracer = trace.getTracer("vlinders-mesh");

/**
 * Starts a span (INTERNAL) as a child of the trace context that `parent` carries: the server span
 * of the call whose signal it is, or a span another startSignalSpan made. The mesh passes trace
 * context with AbortSignals rather than through an async context manager (see initTracing), so the
 * work inside the span must be handed the returned signal (or one linkSignals made from it), not
 * the parent's: AbortSignal.any or a new AbortController would carry no trace context at all.
 */
export function startSignalSpan(name: string, parent: AbortSignal, attributes: Attributes = {}): SignalSpan {
  const parentContext = traceContextOf(parent) ?? context.active();
  const span = internalTracer.startSpan(name, { kind: SpanKind.INTERNAL, attributes }, parentContext);
  const linked = linkSignals(parent);
  bindTraceContext(linked.signal, trace.setSpan(parentContext, span));
  let ended = false;
  return {
    span,
    signal: linked.signal,
    end(error?: unknown) {
      if (ended) return;
      ended = true;
      linked.dispose();
      if (error !== undefined) {
        const message = error instanceof Error ? ((error as { details?: string }).details ?? error.message) : String(error);
        span.setStatus({ code: SpanStatusCode.ERROR, message });
      }
      span.end();
    },
  };
}

/** The trace id a signal's work belongs to (startSignalSpan, or a server call's signal), if any. */
export function traceIdOf(signal: AbortSignal): string | undefined {
  const active = traceContextOf(signal);
  return active === undefined ? undefined : trace.getSpanContext(active)?.traceId;
}
