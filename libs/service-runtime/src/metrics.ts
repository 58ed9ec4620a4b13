import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { collectDefaultMetrics, Counter, Histogram, Registry } from "prom-client";

/** Each service owns one registry, so that several services can live in one test process. */
export function createMetricsRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** Metrics every gRPC server records for every call. */
export interface GrpcServerMetrics {
  started: Counter<"grpc_service" | "grpc_method" | "grpc_type">;
  handled: Counter<"grpc_service" | "grpc_method" | "grpc_type" | "grpc_code">;
  handlingSeconds: Histogram<"grpc_service" | "grpc_method" | "grpc_type" | "grpc_code">;
}

/** Returns the metric of that name already in the registry, or registers the one `create` makes. */
function reuseOrRegister<T>(registry: Registry, name: string, create: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? create();
}

/** Servers sharing a registry (several services in one process) share these metrics. */
export function createGrpcServerMetrics(registry: Registry): GrpcServerMetrics {
  const labelNames = ["grpc_service", "grpc_method", "grpc_type"] as const;
  return {
    started: reuseOrRegister(registry, "grpc_server_started_total", () => new Counter({
      name: "grpc_server_started_total",
      help: "RPCs started on the server.",
      labelNames,
      registers: [registry],
    })),
    handled: reuseOrRegister(registry, "grpc_server_handled_total", () => new Counter({
      name: "grpc_server_handled_total",
      help: "RPCs completed on the server, by status code.",
      labelNames: [...labelNames, "grpc_code"],
      registers: [registry],
    })),
    handlingSeconds: reuseOrRegister(registry, "grpc_server_handling_seconds", () => new Histogram({
      name: "grpc_server_handling_seconds",
      help: "Time from the start of an RPC to its status, in seconds.",
      labelNames: [...labelNames, "grpc_code"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: [registry],
    })),
  };
}

/** Serves the registry in Prometheus text format at /metrics. */
export async function startMetricsServer(
  registry: Registry,
  options: { host: string; port: number },
): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    if (request.method === "GET" && request.url?.split("?")[0] === "/metrics") {
      registry
        .metrics()
        .then((body) => {
          response.writeHead(200, { "content-type": registry.contentType });
          response.end(body);
        })
        .catch((error: unknown) => {
          response.writeHead(500, { "content-type": "text/plain" });
          response.end(String(error));
        });
      return;
    }
    response.writeHead(404, { "content-type": "text/plain" });
    response.end("not found: metrics are served at /metrics\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
