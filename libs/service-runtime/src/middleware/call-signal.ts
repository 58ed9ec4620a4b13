import { linkSignals } from "../linked-signal";
import type { CallInterceptor } from "../transport/grpc-server";

/**
 * Links each call's AbortSignal to a server-wide one as well: used for endless streams (health
 * Watch) that must end the moment the server starts draining.
 */
export function createCallSignalInterceptor(serverSignal: AbortSignal): CallInterceptor {
  return async function callSignal(_call, context, invoke) {
    const linked = linkSignals(context.signal, serverSignal);
    try {
      await invoke({ ...context, signal: linked.signal });
    } finally {
      linked.dispose();
    }
  };
}
