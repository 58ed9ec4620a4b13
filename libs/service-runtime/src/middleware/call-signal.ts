import type { ServerMiddleware } from "nice-grpc-common";
import { linkSignals } from "../linked-signal";

/**
 * Gives each call one AbortSignal that fires on whichever comes first: the client cancels, the
 * call's deadline passes (grpc-js cancels the call), or the given server-wide signal (shutdown)
 * aborts. Handlers pass `context.signal` to every downstream call.
 */
export function createCallSignalMiddleware(serverSignal: AbortSignal): ServerMiddleware {
  return async function* callSignal(call, context) {
    const linked = linkSignals(context.signal, serverSignal);
    try {
      return yield* call.next(call.request, { ...context, signal: linked.signal });
    } finally {
      linked.dispose();
    }
  };
}
