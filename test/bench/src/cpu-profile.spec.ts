import { categoryOf, packageOf } from "./cpu-profile";

describe("packageOf", () => {
  it("names the package a profiled script belongs to", () => {
    expect(packageOf("file:///w/node_modules/.pnpm/@grpc+grpc-js@1.14.7/node_modules/@grpc/grpc-js/build/src/server.js")).toBe("@grpc/grpc-js");
    expect(packageOf("file:///w/node_modules/.pnpm/pino@9.0.0/node_modules/pino/lib/proto.js")).toBe("pino");
    expect(packageOf("file:///w/services/inference-broker/dist/upstream/worker-client.js")).toBe("@vlinders/inference-broker");
    expect(packageOf("node:internal/http2/core")).toBe("node internals");
    expect(packageOf("")).toBe("(native / V8)");
  });
});

describe("categoryOf", () => {
  it("sorts a function into the kind of work it does", () => {
    expect(categoryOf("(garbage collector)", "")).toBe("garbage collection");
    expect(categoryOf("promiseInitHook", "node:internal/async_hooks")).toBe("async context (async_hooks)");
    expect(categoryOf("addEvent", "file:///w/node_modules/@opentelemetry/sdk-trace/build/src/Span.js")).toBe("tracing (OpenTelemetry)");
    expect(categoryOf("write", "file:///w/node_modules/@grpc/grpc-js/build/src/stream-decoder.js")).toBe("gRPC and HTTP/2");
    expect(categoryOf("streamJson", "file:///w/services/inference-broker/dist/upstream/worker-client.js")).toBe("the services' own code");
  });
});
