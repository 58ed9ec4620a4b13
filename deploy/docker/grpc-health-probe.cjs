#!/usr/bin/env node
// A tiny grpc.health.v1 client for container health checks (docker compose), so that the images
// need no extra probe binary. Kubernetes does not use it: it has native gRPC probes.
//
//   node /app/grpc-health-probe.cjs [port] [service]
//
// port defaults to $GRPC_PORT, service to "" (the whole server). Exits 0 when the answer is
// SERVING, 1 otherwise (NOT_SERVING while draining, unreachable, timeout). It sends no
// x-internal-auth: health checks need none.
"use strict";

const { createRequire } = require("node:module");
const { existsSync, readdirSync } = require("node:fs");
const { join } = require("node:path");

// @grpc/grpc-js is not a direct dependency of any service: find it next to nice-grpc in the
// service (or services) installed beside this script.
function loadGrpc() {
  const servicesDir = join(__dirname, "services");
  const candidates = existsSync(servicesDir) ? readdirSync(servicesDir).map((name) => join(servicesDir, name)) : [];
  for (const dir of [...candidates, __dirname]) {
    try {
      const niceGrpc = require.resolve("nice-grpc", { paths: [dir] });
      return createRequire(niceGrpc)("@grpc/grpc-js");
    } catch {
      // try the next one
    }
  }
  throw new Error("cannot find @grpc/grpc-js (via nice-grpc) under " + servicesDir);
}

const port = process.argv[2] || process.env.GRPC_PORT;
const service = process.argv[3] || "";
if (!port) {
  process.stderr.write("usage: grpc-health-probe.cjs PORT [SERVICE] (or set GRPC_PORT)\n");
  process.exit(2);
}

// HealthCheckRequest { string service = 1; } encoded by hand: tag 0x0a, length, UTF-8 bytes.
function encodeRequest(name) {
  const bytes = Buffer.from(name, "utf8");
  if (bytes.length === 0) return Buffer.alloc(0);
  if (bytes.length > 127) throw new Error("service name too long for this probe");
  return Buffer.concat([Buffer.from([0x0a, bytes.length]), bytes]);
}

// HealthCheckResponse { ServingStatus status = 1; }: read field 1 (varint), skip anything else.
function decodeStatus(buffer) {
  let offset = 0;
  const varint = () => {
    let value = 0;
    let shift = 0;
    for (;;) {
      const byte = buffer[offset++];
      if (byte === undefined) throw new Error("truncated response");
      value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return value;
      shift += 7;
    }
  };
  let status = 0;
  while (offset < buffer.length) {
    const key = varint();
    const wireType = key & 7;
    if (wireType === 0) {
      const value = varint();
      if (key >>> 3 === 1) status = value;
    } else if (wireType === 2) {
      offset += varint();
    } else if (wireType === 1) {
      offset += 8;
    } else if (wireType === 5) {
      offset += 4;
    } else {
      throw new Error("unexpected wire type " + wireType);
    }
  }
  return status;
}

const statusNames = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];
const grpc = loadGrpc();
const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
client.makeUnaryRequest(
  "/grpc.health.v1.Health/Check",
  encodeRequest,
  (buffer) => buffer,
  service,
  new grpc.Metadata(),
  { deadline: Date.now() + 3000 },
  (error, response) => {
    client.close();
    if (error) {
      process.stderr.write(`health check failed: ${error.message}\n`);
      process.exit(1);
    }
    const status = decodeStatus(response);
    process.stdout.write(`${statusNames[status] ?? status}\n`);
    process.exit(status === 1 ? 0 : 1);
  },
);
