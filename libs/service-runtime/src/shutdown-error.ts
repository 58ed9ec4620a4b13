/**
 * The reason of the signal of every call still running when a service's grace period ends: work
 * cut off by a shutdown can tell itself from work its caller cancelled (an agent run records the
 * first as interrupted, the second as cancelled). Named AbortError, so that whatever handles an
 * abort (isAbortError) handles this one the same way; `instanceof` tells it apart.
 */
export class ServiceShutdownError extends Error {
  override name = "AbortError";
  constructor() {
    super("the service shut down before the call ended");
  }
}
