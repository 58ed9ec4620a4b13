import {
  createChannel,
  createClientFactory,
  type Channel,
  type Client,
  type CompatServiceDefinition,
} from "nice-grpc";
import { deadlineMiddleware, type DeadlineOptions } from "nice-grpc-client-middleware-deadline";
import type { ClientMiddleware } from "nice-grpc-common";
import { createInternalAuthClientMiddleware } from "./middleware/internal-auth";
import { createTracingClientMiddleware } from "./middleware/tracing";

export type { DeadlineOptions } from "nice-grpc-client-middleware-deadline";

export interface InternalClientOptions {
  /** The mesh's shared secret, sent as x-internal-auth. */
  internalSecret: string;
  /** Deadline of a call that sets none; no call of the mesh runs without one. */
  defaultDeadlineMs: number;
}

/** Gives every call a deadline, the configured default unless the caller set one. */
function defaultDeadline(ms: number): ClientMiddleware<DeadlineOptions, DeadlineOptions> {
  return async function* withDefaultDeadline(call, options) {
    return yield* call.next(call.request, { ...options, deadline: options.deadline ?? ms });
  };
}

/** One channel per downstream address, dialled once in the composition root. */
export function createInternalChannel(address: string): Channel {
  return createChannel(address, undefined, {
    // Keep idle connections alive through proxies and detect dead peers on long streams.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    // Spread calls over every address the name resolves to (all pods behind a headless Service),
    // instead of grpc-js's default of pinning one connection.
    "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
  });
}

/**
 * A client for another service of the mesh: it propagates the trace context, sends the shared
 * secret and always has a deadline. Pass the handler's `signal` with each call so that a cancelled
 * call upstream cancels this one.
 */
export function createInternalClient<Definition extends CompatServiceDefinition>(
  definition: Definition,
  channel: Channel,
  options: InternalClientOptions,
): Client<Definition, DeadlineOptions> {
  // A client factory's last middleware runs first: tracing wraps everything, the deadline is
  // decided before the deadline middleware enforces it.
  return createClientFactory()
    .use(deadlineMiddleware)
    .use(defaultDeadline(options.defaultDeadlineMs))
    .use(createInternalAuthClientMiddleware(options.internalSecret))
    .use(createTracingClientMiddleware())
    .create(definition, channel);
}
