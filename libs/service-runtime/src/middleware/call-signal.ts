import type { ServerMiddleware } from "nice-grpc-common";

/**
 * Gives each call one AbortSignal that fires on whichever comes first: the client cancels, the
 * call's deadline passes (grpc-js cancels the call), or the given server-wide signal (shutdown)
 * aborts. Handlers pass `context.signal` to every downstream call.
 */
export function createCallSignalMiddleware(serverSignal: AbortSignal): ServerMiddleware {
  return async function* callSignal(call, context) {
    const signal = AbortSignal.any([context.signal, serverSignal]);
    return yield* call.next(call.request, { ...context, signal });
  };
}
