import { context as otelContext, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span } from "@opentelemetry/api";
import { type Metadata, Status } from "nice-grpc-common";

const tracer = trace.getTracer("vlinders-mesh");

/** The trace context of each call in flight, keyed by the call's AbortSignal. */
const traceContexts = new WeakMap<AbortSignal, Context>();

/** Records that work done under `signal` belongs to the trace context `active`. */
export function bindTraceContext(signal: AbortSignal, active: Context): void {
  traceContexts.set(signal, active);
}

/**
 * The trace context of the call whose signal a client call was given: the mesh passes each call's
 * signal to every downstream call, so the trace follows it without any async context tracking.
 */
export function traceContextOf(signal: AbortSignal | undefined): Context | undefined {
  return signal === undefined ? undefined : traceContexts.get(signal);
}

/** trace_id and span_id of a context, for log lines. */
export function traceFields(active: Context): { trace_id?: string; span_id?: string } {
  const spanContext = trace.getSpanContext(active);
  return spanContext ? { trace_id: spanContext.traceId, span_id: spanContext.spanId } : {};
}

const metadataGetter = {
  get: (carrier: Metadata, key: string) => {
    const value = carrier.get(key);
    return typeof value === "string" ? value : undefined;
  },
  keys: (carrier: Metadata) => Array.from(carrier, ([key]) => key),
};
const metadataSetter = { set: (carrier: Metadata, key: string, value: string) => carrier.set(key, value) };

/** "/vlinders.v1.InferenceService/Chat" -> the span's name and RPC attributes. */
function describeMethod(path: string): { name: string; attributes: Record<string, string> } {
  const name = path.slice(1);
  const slash = name.lastIndexOf("/");
  return { name, attributes: { "rpc.system": "grpc", "rpc.service": name.slice(0, slash), "rpc.method": name.slice(slash + 1) } };
}

function endSpan(span: Span, code: Status, message: string | undefined): void {
  span.setAttribute("rpc.grpc.status_code", code);
  if (code !== Status.OK) span.setStatus({ code: SpanStatusCode.ERROR, message: `${Status[code]}${message ? `: ${message}` : ""}` });
  span.end();
}

/**
 * A SERVER span for a call, continuing the caller's trace (W3C trace context in the metadata).
 * `active` is the context to run the handler in, so that its logs and downstream calls belong to
 * the trace. Unlike nice-grpc-opentelemetry nothing is recorded per streamed message: a long stream
 * would otherwise keep thousands of events in memory and pay for each token.
 */
export function startServerSpan(methodPath: string, metadata: Metadata): { active: Context; end(code: Status, message?: string): void } {
  const { name, attributes } = describeMethod(methodPath);
  const parent = propagation.extract(ROOT_CONTEXT, metadata, metadataGetter);
  const span = tracer.startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
  return { active: trace.setSpan(parent, span), end: (code, message) => endSpan(span, code, message) };
}

/** A CLIENT span for a call, child of `parent` (the server call it is made from). */
export function startClientSpan(methodPath: string, parent: Context): { active: Context; end(code: Status, message?: string): void } {
  const { name, attributes } = describeMethod(methodPath);
  const span = tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }, parent);
  return { active: trace.setSpan(parent, span), end: (code, message) => endSpan(span, code, message) };
}

/** Puts the W3C trace context (traceparent, tracestate) of `active` into outgoing metadata. */
export function injectTraceContext(active: Context, metadata: Metadata): void {
  propagation.inject(active, metadata, metadataSetter);
}
