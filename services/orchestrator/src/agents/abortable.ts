/**
 * Settles as `promise` does, or rejects with the signal's reason as soon as `signal` aborts,
 * whichever comes first. The promise itself goes on (nothing here can stop it): this only stops the
 * caller from waiting on something the signal has made pointless, e.g. a consumer that stopped
 * reading or a fetch shared with other callers.
 */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    // Observed: a later rejection of the abandoned promise is not reported as unhandled.
    promise.catch(() => undefined);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      promise.catch(() => undefined);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}
