import { isAbortError } from "abort-controller-x";
import { ServerError, Status } from "nice-grpc-common";

export interface FailureVerdict {
  /** May the request be tried on another worker (if nothing reached the client yet)? */
  retryable: boolean;
  /** Does the failure count against the worker's health (passive ejection)? */
  blameWorker: boolean;
  /** Short label for metrics. */
  reason: string;
}

/**
 * Decides what a failed attempt means. A caller's own cancel or deadline is neither retried nor
 * the worker's fault; a bad request would fail anywhere; an unreachable, failing or silent worker
 * is retried elsewhere and counted against it; a busy one (HTTP 429) is retried but not blamed; a
 * refused or missing provider key is the operator's to fix, and neither retried nor blamed.
 */
export function classifyFailure(error: unknown, callerSignal: AbortSignal, workerRemoved: AbortSignal): FailureVerdict {
  if (callerSignal.aborted) return { retryable: false, blameWorker: false, reason: "cancelled" };
  if (workerRemoved.aborted) return { retryable: true, blameWorker: false, reason: "worker_removed" };
  if (isAbortError(error)) return { retryable: false, blameWorker: false, reason: "aborted" };
  if (!(error instanceof ServerError)) return { retryable: true, blameWorker: true, reason: "unknown" };
  switch (error.code) {
    case Status.UNAVAILABLE:
      return { retryable: true, blameWorker: true, reason: "unavailable" };
    case Status.INTERNAL:
      return { retryable: true, blameWorker: true, reason: "worker_error" };
    case Status.RESOURCE_EXHAUSTED:
      return { retryable: true, blameWorker: false, reason: "worker_busy" };
    case Status.FAILED_PRECONDITION:
      // The provider refused the API key (HTTP 401/403) or no key is stored: the worker itself is
      // fine, and ejecting it would turn a key problem into a capacity problem. Another worker might
      // belong to another provider with a good key, yet this is not retried: when the failover runs
      // out of workers the dispatcher answers UNAVAILABLE (which callers retry) instead of this
      // error, so a model served through one provider, the usual case, would hide the operator's
      // problem behind a retryable status.
      return { retryable: false, blameWorker: false, reason: "failed_precondition" };
    case Status.NOT_FOUND:
      // The catalog said this worker serves the model; it does not (any more). Another may.
      return { retryable: true, blameWorker: true, reason: "model_missing_on_worker" };
    default:
      return { retryable: false, blameWorker: false, reason: Status[error.code].toLowerCase() };
  }
}
