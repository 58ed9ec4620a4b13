import { isAbortError } from "abort-controller-x";
import { ClientError, ServerError, Status } from "nice-grpc-common";
import type { Logger } from "../logger";
import { ServiceShutdownError } from "../shutdown-error";

/**
 * The one place where whatever a handler throws becomes a gRPC status:
 * - a ServerError keeps its code and message;
 * - a ClientError from a downstream service keeps its code, so that NOT_FOUND from the broker
 *   reaches the caller as NOT_FOUND and not as UNKNOWN; except that a downstream refusal of this
 *   service's own credentials is this mesh's fault, not the caller's: INTERNAL, logged;
 * - an abort becomes CANCELLED, or UNAVAILABLE when it came from this server shutting down (a
 *   handler that rethrows its signal's reason throws the ServiceShutdownError itself);
 * - anything else becomes INTERNAL with a log line carrying the stack (its message is not leaked).
 */
export function createErrorMapper(options: { logger: Logger; shutdownSignal: AbortSignal }): (error: unknown, method: string) => ServerError {
  const { logger, shutdownSignal } = options;
  return function toServerError(error: unknown, method: string): ServerError {
    if (error instanceof ServerError) return error;
    if (error instanceof ClientError) {
      if (error.code === Status.UNAUTHENTICATED || error.code === Status.PERMISSION_DENIED) {
        logger.error({ downstream: error.path, code: Status[error.code], details: error.details, method }, "a downstream service refused this service's credentials");
        return new ServerError(Status.INTERNAL, "internal error: services of the mesh disagree on credentials; the server log has the details");
      }
      return new ServerError(error.code, error.details);
    }
    if (error instanceof ServiceShutdownError) return new ServerError(Status.UNAVAILABLE, "the server is shutting down; retry on another instance");
    if (isAbortError(error)) {
      return shutdownSignal.aborted
        ? new ServerError(Status.UNAVAILABLE, "the server is shutting down; retry on another instance")
        : new ServerError(Status.CANCELLED, "the call was cancelled");
    }
    logger.error({ err: error, method }, "unhandled error in handler");
    return new ServerError(Status.INTERNAL, "internal error; the server log has the details");
  };
}
