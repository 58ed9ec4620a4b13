import {
  createChannel,
  createClientFactory,
  type Channel,
  type Client,
  type CompatServiceDefinition,
} from "nice-grpc";
import { createInternalClientPipeline, type DeadlineOptions } from "./middleware/client-pipeline";

export type { DeadlineOptions } from "./middleware/client-pipeline";

export interface InternalClientOptions {
  /** The mesh's shared secret, sent as x-internal-auth. */
  internalSecret: string;
  /** Deadline of a call that sets none; no call of the mesh runs without one. */
  defaultDeadlineMs: number;
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
  return createClientFactory().use(createInternalClientPipeline(options)).create(definition, channel);
}
