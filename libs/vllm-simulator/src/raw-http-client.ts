import { request, type IncomingHttpHeaders } from "node:http";

/** What a client saw of one HTTP exchange, byte for byte. */
export interface RawExchange {
  /** Undefined when no response headers arrived. */
  status: number | undefined;
  headers: IncomingHttpHeaders;
  /** The body as received, undecoded beyond UTF-8. */
  body: string;
  /** How it ended: a complete response, a connection cut by the server, or the client's timeout. */
  ending: "end" | "reset" | "timeout";
  /** Milliseconds from sending the request to the first body byte (undefined if none). */
  firstByteMs: number | undefined;
}

export interface RawRequestOptions {
  method?: string;
  body?: unknown;
  /** The client gives up (and closes the connection) after this long. */
  timeoutMs?: number;
  /** Aborting closes the connection, as a client that hangs up. */
  signal?: AbortSignal;
  /** Called with each piece of body as it arrives. */
  onData?: (text: string) => void;
}

/**
 * A deliberately plain HTTP client for the simulator's tests: a fresh connection per request, no
 * parsing, and an answer even when the server hangs or cuts the connection, so that a test can see
 * exactly what a client of a faulty worker sees. Not part of the package's API.
 */
export function rawRequest(baseUrl: string, path: string, options: RawRequestOptions = {}): Promise<RawExchange> {
  return new Promise((resolve) => {
    const startedAt = performance.now();
    const exchange: RawExchange = { status: undefined, headers: {}, body: "", ending: "end", firstByteMs: undefined };
    let settled = false;
    const settle = (ending: RawExchange["ending"]) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      exchange.ending = ending;
      resolve(exchange);
    };
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const outgoing = request(`${baseUrl}${path}`, {
      method: options.method ?? (payload === undefined ? "GET" : "POST"),
      agent: false,
      headers: payload === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
    });
    const timer = setTimeout(() => {
      settle("timeout");
      outgoing.destroy();
    }, options.timeoutMs ?? 5_000);
    const onAbort = () => {
      settle("timeout");
      outgoing.destroy();
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    outgoing.on("response", (incoming) => {
      exchange.status = incoming.statusCode;
      exchange.headers = incoming.headers;
      incoming.setEncoding("utf8");
      incoming.on("data", (text: string) => {
        exchange.firstByteMs ??= performance.now() - startedAt;
        exchange.body += text;
        options.onData?.(text);
      });
      incoming.on("end", () => settle("end"));
      incoming.on("aborted", () => settle("reset"));
      incoming.on("error", () => settle("reset"));
      incoming.on("close", () => settle(incoming.complete ? "end" : "reset"));
    });
    outgoing.on("error", () => settle("reset"));
    outgoing.end(payload);
  });
}

/** The payloads of a body of server-sent events: what follows `data: ` on each event. */
export function ssePayloads(body: string): string[] {
  return body
    .split("\n\n")
    .filter((event) => event !== "")
    .map((event) => (event.startsWith("data: ") ? event.slice("data: ".length) : event));
}

/** A chat completion request for the simulator's default chat model. */
export function chatBody(content: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { model: "vlinders-sim-chat", messages: [{ role: "user", content }], stream: true, ...extra };
}

/** Reads one sample of a Prometheus text exposition, e.g. `vllm:num_requests_running{model_name="m"}`. */
export function metricSample(exposition: string, series: string): number | undefined {
  for (const line of exposition.split("\n")) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}
