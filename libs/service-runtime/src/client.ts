import { context as otelContext } from "@opentelemetry/api";
import type { Client, CompatServiceDefinition } from "nice-grpc";
import { ClientError, Metadata, Status, type CallOptions } from "nice-grpc-common";
import { deadlineOf } from "./call-deadline";
import { internalAuthHeader } from "./middleware/internal-auth";
import { injectTraceContext, startClientSpan, traceContextOf } from "./middleware/tracing";
import { callOverHttp2, Http2Channel, type KeepaliveSettings, type WireCall } from "./transport/grpc-client";
import { wireMethodsOf, type WireMethod } from "./transport/service-definition";

/** Call options of an internal client: a deadline, absolute or in milliseconds from now. */
export interface DeadlineOptions {
  deadline?: Date | number;
}

export interface InternalClientOptions {
  /** The mesh's shared secret, sent as x-internal-auth. */
  internalSecret: string;
  /** Deadline of a call that sets none; no call of the mesh runs without one. */
  defaultDeadlineMs: number;
}

/** Connections to one downstream address, dialled once in the composition root. */
export type InternalChannel = Http2Channel;

/**
 * One channel per downstream address. `connections` > 1 spreads calls over that many HTTP/2
 * connections, each to the next address the name resolves to (the pods behind a headless Service).
 */
export function createInternalChannel(address: string, connections = 1, keepalive?: KeepaliveSettings): InternalChannel {
  return new Http2Channel(address, connections, keepalive);
}

/**
 * A client for another service of the mesh: it propagates the trace context, sends the shared
 * secret and always has a deadline. Pass the handler's `signal` with each call so that a cancelled
 * call upstream cancels this one. Unary and server-streaming methods (all the mesh has); the
 * transport is the mesh's own (transport/grpc-client.ts), without a wrapper per streamed message.
 */
export function createInternalClient<Definition extends CompatServiceDefinition>(
  definition: Definition,
  channel: InternalChannel,
  options: InternalClientOptions,
): Client<Definition, DeadlineOptions> {
  const client: Record<string, unknown> = {};
  for (const method of wireMethodsOf(definition)) {
    client[method.name] = method.requestStream
      ? () => {
          throw new Error(`${method.path}: client-streaming calls are not supported by the mesh's internal client`);
        }
      : method.responseStream
        ? (request: unknown, callOptions: CallOptions & DeadlineOptions = {}) => streamingCall(channel, method, options, request, callOptions)
        : (request: unknown, callOptions: CallOptions & DeadlineOptions = {}) => unaryCall(channel, method, options, request, callOptions);
  }
  return client as Client<Definition, DeadlineOptions>;
}

/** The call on the wire, inside a CLIENT span whose context travels in the metadata. */
function startCall<Message>(
  channel: InternalChannel,
  method: WireMethod,
  options: InternalClientOptions,
  request: unknown,
  callOptions: CallOptions & DeadlineOptions,
  decode: (bytes: Buffer) => Message,
): AsyncGenerator<Message, void, undefined> {
  const { signal } = callOptions;
  // The caller's deadline (from its signal) bounds this call too: no hop waits for an answer its
  // caller will not wait for. The call's own deadline, or the default, may only shorten it.
  const own = callOptions.deadline ?? options.defaultDeadlineMs;
  const ownDeadline = own instanceof Date ? own.getTime() : Date.now() + own;
  const inherited = deadlineOf(signal);
  const deadline = inherited !== undefined && inherited < ownDeadline ? new Date(inherited) : own;
  const span = startClientSpan(method.path, traceContextOf(signal) ?? otelContext.active());
  const metadata = Metadata(callOptions.metadata);
  metadata.set(internalAuthHeader, options.internalSecret);
  injectTraceContext(span.active, metadata);
  const wire: WireCall = {
    path: method.path,
    request: method.serializeRequest(request),
    metadata,
    deadline: deadline instanceof Date ? deadline.getTime() : Date.now() + deadline,
    timeoutMs: deadline instanceof Date ? deadline.getTime() - Date.now() : deadline,
    signal,
    onHeader: callOptions.onHeader,
    onTrailer: callOptions.onTrailer,
    onEnd: (code, details) => span.end(code, details),
  };
  return callOverHttp2(channel, wire, decode);
}

function streamingCall(
  channel: InternalChannel,
  method: WireMethod,
  options: InternalClientOptions,
  request: unknown,
  callOptions: CallOptions & DeadlineOptions,
): AsyncGenerator<unknown, void, undefined> {
  return startCall(channel, method, options, request, callOptions, (bytes) => method.deserializeResponse(bytes));
}

async function unaryCall(
  channel: InternalChannel,
  method: WireMethod,
  options: InternalClientOptions,
  request: unknown,
  callOptions: CallOptions & DeadlineOptions,
): Promise<unknown> {
  let response: Buffer | undefined;
  for await (const message of startCall(channel, method, options, request, callOptions, (bytes) => bytes)) {
    if (response !== undefined) throw new ClientError(method.path, Status.INTERNAL, "a unary call received more than one response");
    response = message;
  }
  if (response === undefined) throw new ClientError(method.path, Status.INTERNAL, "a unary call ended without a response");
  return method.deserializeResponse(response);
}
