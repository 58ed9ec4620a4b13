import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { InferenceServiceDefinition, type InferenceServiceImplementation } from "@vlinders/proto";
import { ServerError, Status } from "nice-grpc-common";
import { createInProcessRuntime } from "./in-process-runtime";
import { createInternalChannel, createInternalClient } from "./client";
import { linkSignals } from "./linked-signal";
import { createServiceHost } from "./service-host";
import { initTracing, startSignalSpan, traceIdOf } from "./tracing";

// Installed before any server or client exists (once per test file's process registry).
const spans = new InMemorySpanExporter();
initTracing({ service: "tracing-spec", exporter: spans });

const secret = "tracing-spec-secret-0123456789";
const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId;
const named = (name: string) => {
  const found = spans.getFinishedSpans().find((span) => span.name === name);
  if (!found) throw new Error(`no span ${name} among ${spans.getFinishedSpans().map((span) => span.name).join(", ")}`);
  return found;
};

describe("startSignalSpan", () => {
  afterEach(() => spans.reset());

  it("nests spans through the signals they hand on, linkSignals included, in one trace", () => {
    const outer = startSignalSpan("outer", new AbortController().signal, { run_id: "r-1" });
    // A deadline linked in, as a handler does: the linked signal keeps the outer span's context.
    const { signal, dispose } = linkSignals(AbortSignal.timeout(60_000), outer.signal);
    const inner = startSignalSpan("inner", signal);
    expect(traceIdOf(inner.signal)).toBe(outer.span.spanContext().traceId);
    inner.end();
    dispose();
    outer.end();

    expect(named("outer").attributes).toMatchObject({ run_id: "r-1" });
    expect(parentOf(named("outer"))).toBeUndefined();
    expect(parentOf(named("inner"))).toBe(named("outer").spanContext().spanId);
    expect(named("inner").spanContext().traceId).toBe(named("outer").spanContext().traceId);
  });

  it("aborts its signal with its parent's, and ends an error span once", () => {
    const parent = new AbortController();
    const step = startSignalSpan("step", parent.signal);
    parent.abort(new Error("stop"));
    expect((step.signal.reason as Error).message).toBe("stop");
    step.end(new ServerError(Status.UNAVAILABLE, "broker gone"));
    step.end();
    expect(spans.getFinishedSpans().filter((span) => span.name === "step")).toHaveLength(1);
    expect(named("step").status).toMatchObject({ code: SpanStatusCode.ERROR, message: "broker gone" });
  });

  it("makes the client span of a call given its signal its child, and the server span joins the trace", async () => {
    const service: InferenceServiceImplementation = {
      async *chat() {
        throw new ServerError(Status.UNIMPLEMENTED, "not here");
      },
      complete: async () => {
        throw new ServerError(Status.UNIMPLEMENTED, "not here");
      },
      embed: async () => {
        throw new ServerError(Status.UNIMPLEMENTED, "not here");
      },
      listModels: async () => ({ models: [] }),
    };
    const host = createServiceHost(createInProcessRuntime("traced", { internalSecret: secret }));
    host.add(InferenceServiceDefinition, service);
    const { grpcPort } = await host.listen({ host: "127.0.0.1", grpcPort: 0 });
    const channel = createInternalChannel(`127.0.0.1:${grpcPort}`);
    try {
      const client = createInternalClient(InferenceServiceDefinition, channel, { internalSecret: secret, defaultDeadlineMs: 5_000 });
      const step = startSignalSpan("step", new AbortController().signal);
      await client.listModels({}, { signal: step.signal });
      step.end();
    } finally {
      channel.close();
      await host.shutdown();
    }
    const calls = spans.getFinishedSpans().filter((span) => span.name === "vlinders.v1.InferenceService/ListModels");
    const client = calls.find((span) => span.kind === SpanKind.CLIENT);
    const server = calls.find((span) => span.kind === SpanKind.SERVER);
    expect(parentOf(client!)).toBe(named("step").spanContext().spanId);
    expect(parentOf(server!)).toBe(client!.spanContext().spanId);
    expect(new Set([named("step"), client!, server!].map((span) => span.spanContext().traceId)).size).toBe(1);
  });
});
