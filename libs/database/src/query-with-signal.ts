import { Client, DatabaseError, type Pool, type PoolClient, type QueryResult, type QueryResultRow } from "pg";
import { isEmbeddedPool } from "./embedded-pools";

/**
 * A connection taken from the pool for several statements (a transaction), tied to one AbortSignal.
 * When the signal aborts, pending and later statements reject with an AbortError and the connection
 * is dropped, which also rolls back an open transaction.
 */
export interface SignalledClient {
  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>;
  /** Returns the connection to the pool. Safe to call more than once, and after an abort. */
  release(): void;
}

/**
 * Runs one statement on a pooled connection and gives up when `signal` aborts, rejecting at once
 * with an error named `AbortError` (what `isAbortError` of abort-controller-x and the services' error
 * boundary recognise).
 *
 * pg cannot abort a query by itself, so on abort:
 * - against a PostgreSQL server, `pg_cancel_backend` is sent from a connection of its own (the pool
 *   may be exhausted, this very statement holding its last slot), then the connection is dropped;
 *   the server stops the statement and rolls back what it had done;
 * - against the embedded PGlite, the connection is dropped: PGlite has one backend, which runs a
 *   statement synchronously on its thread and ignores cancel requests, so a statement that already
 *   started runs to its end (and the next statement waits for it); one still queued behind another
 *   connection's transaction is discarded, and an open transaction is rolled back by the socket
 *   server.
 * A signal already aborted rejects before a connection is taken.
 */
export async function queryWithSignal<R extends QueryResultRow = QueryResultRow>(
  pool: Pool,
  text: string,
  values: readonly unknown[],
  signal: AbortSignal,
): Promise<QueryResult<R>> {
  const client = await connectWithSignal(pool, signal);
  try {
    return await client.query<R>(text, values);
  } finally {
    client.release();
  }
}

/**
 * Takes a connection from the pool for several statements, for instance a transaction. Waiting for a
 * free connection also ends when the signal aborts. The caller must `release()` it in a `finally`.
 */
export async function connectWithSignal(pool: Pool, signal: AbortSignal): Promise<SignalledClient> {
  if (signal.aborted) throw abortErrorFor(signal);
  const client = await untilAborted(pool.connect(), signal, (late) => late.release());
  return new SignalledPoolClient(pool, client, signal);
}

/** An error named AbortError whose cause is the signal's reason (a deadline, a cancelled call, shutdown). */
export function abortErrorFor(signal: AbortSignal): Error {
  const error = new Error("the database query was aborted", { cause: signal.reason });
  error.name = "AbortError";
  return error;
}

class SignalledPoolClient implements SignalledClient {
  private state: "open" | "released" | "aborted" = "open";
  private readonly pending = new Set<(error: Error) => void>();
  /** Set when the connection itself failed: it must not go back to the pool. */
  private broken: Error | undefined;

  constructor(
    private readonly pool: Pool,
    private readonly client: PoolClient,
    private readonly signal: AbortSignal,
  ) {
    // pg-pool listens for errors only on idle clients: an unhandled 'error' on a checked-out one
    // (the server restarting mid-statement) would crash the process.
    client.on("error", this.onConnectionError);
    signal.addEventListener("abort", this.onAbort, { once: true });
  }

  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>> {
    if (this.state === "aborted" || this.signal.aborted) return Promise.reject(abortErrorFor(this.signal));
    if (this.state === "released") return Promise.reject(new Error("the database connection was already released"));
    return new Promise<QueryResult<R>>((resolve, reject) => {
      this.pending.add(reject);
      this.client.query<R>(text, values === undefined ? undefined : [...values]).then(
        (result) => {
          this.pending.delete(reject);
          resolve(result);
        },
        (error: unknown) => {
          // After an abort the caller already has its AbortError; this is the cancel's echo.
          if (!this.pending.delete(reject)) return;
          if (!(error instanceof DatabaseError)) this.broken = error instanceof Error ? error : new Error(String(error));
          reject(error);
        },
      );
    });
  }

  release(): void {
    if (this.state !== "open") return;
    this.state = "released";
    this.signal.removeEventListener("abort", this.onAbort);
    this.client.removeListener("error", this.onConnectionError);
    // A connection left inside a transaction (a caller that forgot ROLLBACK) would hand that
    // transaction to the next borrower: drop it instead.
    const dirty = this.client.getTransactionStatus() !== "I";
    this.client.release(this.broken ?? (dirty ? new Error("released inside a transaction") : undefined));
  }

  private readonly onConnectionError = (error: Error): void => {
    this.broken = error;
  };

  private readonly onAbort = (): void => {
    if (this.state !== "open") return;
    this.state = "aborted";
    const error = abortErrorFor(this.signal);
    const statementRunning = this.pending.size > 0;
    for (const reject of this.pending) reject(error);
    this.pending.clear();
    void this.drop(statementRunning);
  };

  private async drop(statementRunning: boolean): Promise<void> {
    try {
      // Cancelling before dropping keeps the backend alive while its pid is used, so the cancel
      // cannot reach another session that reused the pid. Dropping alone would leave the statement
      // running: PostgreSQL notices a closed client only when it next reads from or writes to it.
      if (statementRunning && !isEmbeddedPool(this.pool)) await cancelBackend(this.pool, this.client);
    } finally {
      this.client.removeListener("error", this.onConnectionError);
      // Any errors from here on belong to a connection nobody uses any more.
      this.client.on("error", ignore);
      this.client.release(new Error("the database query was aborted"));
    }
  }
}

async function cancelBackend(pool: Pool, client: PoolClient): Promise<void> {
  // pg keeps the backend's pid from BackendKeyData but does not declare it in its types.
  const pid = (client as unknown as { processID?: number | null }).processID;
  if (typeof pid !== "number") return;
  const canceller = new Client({ ...pool.options, connectionTimeoutMillis: 5_000, statement_timeout: 5_000 });
  canceller.on("error", ignore);
  try {
    await canceller.connect();
    await canceller.query("SELECT pg_cancel_backend($1)", [pid]);
  } catch {
    // Best effort: the connection is dropped next either way, and statement_timeout bounds a
    // statement this cancel did not reach.
  } finally {
    await canceller.end().catch(ignore);
  }
}

/** Resolves as `promise` does unless `signal` aborts first; a value arriving after that goes to `onLate`. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal, onLate: (value: T) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let aborted = false;
    const onAbort = (): void => {
      aborted = true;
      reject(abortErrorFor(signal));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        if (aborted) onLate(value);
        else resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        if (!aborted) reject(error);
      },
    );
  });
}

function ignore(): void {}
