/** An error named AbortError (what the services' error boundary turns into CANCELLED), caused by the signal's reason. */
export function abortError(signal: AbortSignal, what: string): Error {
  const error = new Error(`${what} was aborted`, { cause: signal.reason });
  error.name = "AbortError";
  return error;
}

/** Resolves or rejects as `promise` does, unless `signal` aborts first. */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  if (signal.aborted) return Promise.reject(abortError(signal, what));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal, what));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
