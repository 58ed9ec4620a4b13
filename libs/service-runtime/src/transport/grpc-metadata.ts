import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http2";
import { Metadata, Status } from "nice-grpc-common";

/** Headers that belong to HTTP/2 or to the gRPC protocol itself, never to a call's metadata. */
const reservedHeaders = new Set([
  "content-type",
  "te",
  "grpc-timeout",
  "grpc-encoding",
  "grpc-accept-encoding",
  "grpc-status",
  "grpc-message",
  "grpc-status-details-bin",
  "content-length",
  "connection",
  "host",
]);

/** A call's metadata from request headers or response trailers. Binary (`-bin`) values are base64. */
export function metadataFromHeaders(headers: IncomingHttpHeaders): Metadata {
  const metadata = Metadata();
  for (const key of Object.keys(headers)) {
    if (key.charCodeAt(0) === 58 /* ":" */ || reservedHeaders.has(key)) continue;
    const value = headers[key];
    if (value === undefined) continue;
    const values = Array.isArray(value) ? value : key.endsWith("-bin") ? value.split(",") : [value];
    for (const one of values) {
      if (key.endsWith("-bin")) metadata.append(key, Buffer.from(one.trim(), "base64"));
      else metadata.append(key, one);
    }
  }
  return metadata;
}

/** Adds a call's metadata to outgoing headers or trailers. */
export function addMetadataHeaders(headers: OutgoingHttpHeaders, metadata: Metadata | undefined): OutgoingHttpHeaders {
  if (metadata === undefined) return headers;
  for (const [key, values] of metadata) {
    if (reservedHeaders.has(key)) continue;
    const encoded = values.map((value) => (typeof value === "string" ? value : Buffer.from(value).toString("base64")));
    headers[key] = encoded.length === 1 ? encoded[0] : encoded;
  }
  return headers;
}

const timeoutUnits: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1_000, m: 1, u: 0.001, n: 0.000_001 };

/** `grpc-timeout` ("100m", "5S", …) in milliseconds; undefined when absent or malformed. */
export function parseGrpcTimeout(value: string | string[] | undefined): number | undefined {
  if (typeof value !== "string") return undefined;
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!match) return undefined;
  return Number(match[1]) * timeoutUnits[match[2]!]!;
}

/** Milliseconds as a `grpc-timeout` value (at most 8 digits, in the finest unit that fits). */
export function formatGrpcTimeout(milliseconds: number): string {
  const ms = Math.max(0, Math.ceil(milliseconds));
  if (ms < 100_000_000) return `${ms}m`;
  const seconds = Math.ceil(ms / 1_000);
  if (seconds < 100_000_000) return `${seconds}S`;
  return `${Math.min(99_999_999, Math.ceil(seconds / 3_600))}H`;
}

/** grpc-message is percent-encoded: every byte outside printable ASCII and "%" itself. */
export function encodeGrpcMessage(message: string): string {
  let plain = true;
  for (let index = 0; index < message.length; index++) {
    const code = message.charCodeAt(index);
    if (code < 0x20 || code > 0x7e || code === 0x25) {
      plain = false;
      break;
    }
  }
  if (plain) return message;
  let encoded = "";
  for (const byte of Buffer.from(message, "utf8")) {
    encoded += byte < 0x20 || byte > 0x7e || byte === 0x25 ? `%${byte.toString(16).toUpperCase().padStart(2, "0")}` : String.fromCharCode(byte);
  }
  return encoded;
}

export function decodeGrpcMessage(value: string | string[] | undefined): string {
  if (typeof value !== "string") return "";
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** The gRPC status in a trailer or trailers-only header; undefined when there is none. */
export function grpcStatusOf(headers: IncomingHttpHeaders): Status | undefined {
  const value = headers["grpc-status"];
  if (typeof value !== "string") return undefined;
  const code = Number(value);
  return Number.isInteger(code) && code >= 0 && code <= 16 ? (code as Status) : Status.UNKNOWN;
}

/** The status a client reports for an HTTP response that is not gRPC (a proxy's error page, …). */
export function statusOfHttpStatus(httpStatus: number): Status {
  switch (httpStatus) {
    case 400:
      return Status.INTERNAL;
    case 401:
      return Status.UNAUTHENTICATED;
    case 403:
      return Status.PERMISSION_DENIED;
    case 404:
      return Status.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return Status.UNAVAILABLE;
    default:
      return Status.UNKNOWN;
  }
}
