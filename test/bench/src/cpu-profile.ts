import { readFileSync } from "node:fs";

/** The parts of a V8 `.cpuprofile` (written by `node --cpu-prof`) that a summary needs. */
interface CpuProfile {
  nodes: Array<{ id: number; hitCount?: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
  startTime: number;
  endTime: number;
}

export interface ProfileSummary {
  durationMs: number;
  /** Share of the samples in which the process was not idle. */
  busyShare: number;
  /** Self time by function, busiest first, in percent of busy time. */
  functions: Array<{ name: string; percent: number }>;
  /** Self time by package (node_modules package, node internals, the service's own code), in percent of busy time. */
  packages: Array<{ name: string; percent: number }>;
  /** Self time by kind of work (gRPC and HTTP/2, GC, async context, tracing, …), in percent of busy time. */
  categories: Array<{ name: string; percent: number }>;
}

/**
 * The kind of work a function does, from where it lives: what a reader needs to know to decide
 * what to remove from a relay's hot path.
 */
export function categoryOf(functionName: string, url: string): string {
  if (functionName === "(garbage collector)") return "garbage collection";
  if (functionName === "(program)" || (url === "" && functionName.startsWith("("))) return "V8 and native (unattributed)";
  if (url === "" && /^(writeBuffer|writev|writeUtf8String|writeLatin1String|writeAsciiString)$/.test(functionName)) return "socket writes";
  if (/internal\/errors|ts-error|domexception|abort_controller|abort-controller-x/.test(url) || functionName === "get stack") return "errors and abort signals";
  if (url === "node:buffer" || url.includes("internal/buffer")) return "buffers";
  if (functionName === "runMicrotasks" || url.includes("task_queues")) return "promises and microtasks";
  if (url.includes("async_hooks") || url.includes("async_local_storage") || /^promise\w*Hook$/.test(functionName)) return "async context (async_hooks)";
  if (url.includes("opentelemetry")) return "tracing (OpenTelemetry)";
  if (url.includes("prom-client")) return "metrics (prom-client)";
  if (url.includes("pino")) return "logging (pino)";
  if (url.includes("@bufbuild/protobuf") || url.includes("/libs/proto/")) return "protobuf encode/decode";
  if (url.includes("grpc-js") || url.includes("nice-grpc") || url.includes("internal/http2")) return "gRPC and HTTP/2";
  if (url.includes("undici") || url.includes("webstreams") || url.includes("_http_") || url.includes("internal/http")) return "HTTP client to the worker (fetch)";
  if (url.includes("pglite") || url.startsWith("wasm://")) return "PGlite (in-process database)";
  if (/\/(libs|services)\//.test(url)) return "the services' own code";
  if (url.includes("internal/streams") || url.includes("stream_base") || url.includes("node:events") || url.includes("event_target")) return "node streams and events";
  if (url.includes("modules/cjs") || functionName === "wrapSafe" || functionName === "compileFunction") return "module loading (start)";
  if (url === "") return "V8 and native (unattributed)";
  return "other";
}

/** Which package a script belongs to: the last node_modules package in its path, else its role. */
export function packageOf(url: string): string {
  if (url === "") return "(native / V8)";
  if (url.startsWith("node:")) return "node internals";
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*node_modules\/)/.exec(url);
  if (match?.[1]) return match[1];
  const workspace = /\/(libs|services)\/([^/]+)\//.exec(url);
  if (workspace?.[2]) return `@vlinders/${workspace[2]}`;
  return url.replace(/^file:\/\//, "").split("/").slice(-2).join("/");
}

function shortLocation(url: string, line: number): string {
  const file = url.replace(/^file:\/\//, "").replace(/^.*node_modules\//, "").replace(/^.*\/(libs|services)\//, "$1/");
  return file === "" ? "" : ` ${file}:${line + 1}`;
}

/** Summarises where a process spent its CPU time (self time, from the sample counts). */
export function summarizeCpuProfile(path: string, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  let total = 0;
  let idle = 0;
  const byFunction = new Map<string, number>();
  const byPackage = new Map<string, number>();
  const byCategory = new Map<string, number>();
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    total += hits;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === "(idle)") {
      idle += hits;
      continue;
    }
    const name = `${functionName || "(anonymous)"}${shortLocation(url, lineNumber)}`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + hits);
    const owner = functionName.startsWith("(") ? functionName : packageOf(url);
    byPackage.set(owner, (byPackage.get(owner) ?? 0) + hits);
    const category = categoryOf(functionName, url);
    byCategory.set(category, (byCategory.get(category) ?? 0) + hits);
  }
  const busy = Math.max(1, total - idle);
  const ranked = (map: Map<string, number>) =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, hits]) => ({ name, percent: (hits / busy) * 100 }));
  return {
    durationMs: (profile.endTime - profile.startTime) / 1000,
    busyShare: total === 0 ? 0 : (total - idle) / total,
    functions: ranked(byFunction),
    packages: ranked(byPackage),
    categories: ranked(byCategory),
  };
}
