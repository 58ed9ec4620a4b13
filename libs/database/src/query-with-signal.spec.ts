import { createLogger } from "@vlinders/service-runtime";
import { DatabaseError } from "pg";
import { openDatabase, type Database } from "./open-database";
import { connectWithSignal, queryWithSignal } from "./query-with-signal";
import { openTestDatabase } from "./test-database";

const logger = createLogger({ service: "test", level: "silent" });

async function rejectionOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error: unknown) {
    return error as Error;
  }
  throw new Error("expected a rejection");
}

function abortAfter(ms: number): AbortSignal {
  const controller = new AbortController();
  setTimeout(() => controller.abort(), ms);
  return controller.signal;
}

const never = new AbortController().signal;

describe("queryWithSignal on PostgreSQL", () => {
  let database: Database & { schema: string; url: string };
  let app: string;

  beforeAll(async () => {
    app = `signal-test-${process.pid}-${Date.now()}`;
    database = await openTestDatabase({ logger, service: app });
    await database.pool.query("CREATE TABLE counters (name text PRIMARY KEY, value int NOT NULL)");
  });
  afterAll(async () => {
    await database.close();
  });

  /** Statements of this test's pool that PostgreSQL is still running, other than this one. */
  async function running(pattern: string): Promise<number> {
    const { rows } = await database.pool.query<{ n: string }>(
      "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE $2 AND pid <> pg_backend_pid()",
      [app, pattern],
    );
    return Number(rows[0]?.n);
  }

  it("returns the result of the statement", async () => {
    const result = await queryWithSignal<{ sum: number }>(database.pool, "SELECT $1::int + $2::int AS sum", [40, 2], never);
    expect(result.rows).toEqual([{ sum: 42 }]);
  });

  it("passes SQL errors through and keeps serving", async () => {
    const error = await rejectionOf(queryWithSignal(database.pool, "SELECT * FROM no_such_table", [], never));
    expect(error).toBeInstanceOf(DatabaseError);
    expect((error as DatabaseError).code).toBe("42P01");
    const after = await queryWithSignal<{ one: number }>(database.pool, "SELECT 1 AS one", [], never);
    expect(after.rows).toEqual([{ one: 1 }]);
  });

  it("rejects at once, running nothing, when the signal is already aborted", async () => {
    const controller = new AbortController();
    controller.abort();
    const error = await rejectionOf(queryWithSignal(database.pool, "INSERT INTO counters VALUES ('pre-aborted', 1)", [], controller.signal));
    expect(error.name).toBe("AbortError");
    const { rows } = await database.pool.query("SELECT * FROM counters WHERE name = 'pre-aborted'");
    expect(rows).toEqual([]);
  });

  it("rejects with an AbortError soon after the abort, and the server stops the statement", async () => {
    const started = Date.now();
    const error = await rejectionOf(queryWithSignal(database.pool, "SELECT pg_sleep(20) AS slept_for_signal_test", [], abortAfter(100)));
    expect(error.name).toBe("AbortError");
    expect(error.message).toBe("the database query was aborted");
    expect(Date.now() - started).toBeLessThan(2_000);
    await waitFor(async () => (await running("%slept_for_signal_test%")) === 0);
  });

  it("cancels an update waiting on a lock, so that it never applies", async () => {
    await database.pool.query("INSERT INTO counters VALUES ('locked', 0)");
    const holder = await database.pool.connect();
    try {
      await holder.query("BEGIN");
      await holder.query("UPDATE counters SET value = 1 WHERE name = 'locked'");
      const error = await rejectionOf(queryWithSignal(database.pool, "UPDATE counters SET value = 99 WHERE name = 'locked'", [], abortAfter(100)));
      expect(error.name).toBe("AbortError");
      // Dropping the connection alone would leave the update waiting on the server, and it would
      // apply as soon as the holder commits.
      await waitFor(async () => (await running("UPDATE counters SET value = 99%")) === 0);
      await holder.query("COMMIT");
    } finally {
      holder.release();
    }
    const { rows } = await database.pool.query<{ value: number }>("SELECT value FROM counters WHERE name = 'locked'");
    expect(rows).toEqual([{ value: 1 }]);
  });

  it("gives up waiting for a free connection when aborted", async () => {
    const small = await openDatabase({ url: database.url, logger, service: app, schema: database.schema, poolSize: 1 });
    try {
      const busy = await connectWithSignal(small.pool, never);
      const error = await rejectionOf(queryWithSignal(small.pool, "SELECT 1", [], abortAfter(50)));
      expect(error.name).toBe("AbortError");
      busy.release();
      const after = await queryWithSignal<{ one: number }>(small.pool, "SELECT 1 AS one", [], never);
      expect(after.rows).toEqual([{ one: 1 }]);
    } finally {
      await small.close();
    }
  });

  it("rolls back a transaction whose signal aborts between statements", async () => {
    const controller = new AbortController();
    const client = await connectWithSignal(database.pool, controller.signal);
    try {
      await client.query("BEGIN");
      await client.query("INSERT INTO counters VALUES ('half-done', 1)");
      controller.abort();
      const error = await rejectionOf(client.query("COMMIT"));
      expect(error.name).toBe("AbortError");
    } finally {
      client.release();
    }
    // The COMMIT never reached the server, and the dropped connection took the transaction with it.
    const { rows } = await database.pool.query("SELECT 1 FROM counters WHERE name = 'half-done'");
    expect(rows).toEqual([]);
    await waitFor(async () => {
      const idle = await database.pool.query<{ n: string }>(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
        [app],
      );
      return idle.rows[0]?.n === "0";
    });
  });

  it("does not hand a connection left inside a transaction to the next borrower", async () => {
    const client = await connectWithSignal(database.pool, never);
    await client.query("BEGIN");
    await client.query("INSERT INTO counters VALUES ('forgotten', 1)");
    client.release();
    const all = await Promise.all([1, 2, 3, 4].map(() => queryWithSignal<{ status: string }>(database.pool, "SELECT count(*)::text AS status FROM counters WHERE name = 'forgotten'", [], never)));
    expect(all.map((result) => result.rows[0]?.status)).toEqual(["0", "0", "0", "0"]);
  });
});

describe("queryWithSignal on the embedded PGlite", () => {
  let database: Database;

  beforeAll(async () => {
    database = await openDatabase({ logger, service: "signal-test" });
    await database.pool.query("CREATE TABLE notes (body text)");
  }, 60_000);
  afterAll(async () => {
    await database.close();
  });

  it("returns the result of the statement", async () => {
    const result = await queryWithSignal<{ body: string }>(database.pool, "INSERT INTO notes VALUES ($1) RETURNING body", ["hello"], never);
    expect(result.rows).toEqual([{ body: "hello" }]);
  });

  it("rejects at once when the signal is already aborted", async () => {
    const controller = new AbortController();
    controller.abort();
    const error = await rejectionOf(queryWithSignal(database.pool, "INSERT INTO notes VALUES ('pre-aborted')", [], controller.signal));
    expect(error.name).toBe("AbortError");
    const { rows } = await database.pool.query("SELECT * FROM notes WHERE body = 'pre-aborted'");
    expect(rows).toEqual([]);
  });

  it("gives up waiting for its single connection when aborted", async () => {
    const busy = await connectWithSignal(database.pool, never);
    const error = await rejectionOf(queryWithSignal(database.pool, "SELECT 1", [], abortAfter(50)));
    expect(error.name).toBe("AbortError");
    busy.release();
    const after = await queryWithSignal<{ one: number }>(database.pool, "SELECT 1 AS one", [], never);
    expect(after.rows).toEqual([{ one: 1 }]);
  });

  it("drops the connection on abort, rolling back its transaction, and serves the next query on a new one", async () => {
    const controller = new AbortController();
    const client = await connectWithSignal(database.pool, controller.signal);
    try {
      await client.query("BEGIN");
      await client.query("INSERT INTO notes VALUES ('half-done')");
      controller.abort();
      expect((await rejectionOf(client.query("COMMIT"))).name).toBe("AbortError");
    } finally {
      client.release();
    }
    const { rows } = await queryWithSignal(database.pool, "SELECT * FROM notes WHERE body = 'half-done'", [], never);
    expect(rows).toEqual([]);
  });

  it("rejects a long statement with an AbortError without waiting for it", async () => {
    const started = Date.now();
    const error = await rejectionOf(queryWithSignal(database.pool, "SELECT pg_sleep(1)", [], abortAfter(50)));
    expect(error.name).toBe("AbortError");
    expect(Date.now() - started).toBeLessThan(900);
    // PGlite cannot interrupt it: the next statement runs once it is over.
    const after = await queryWithSignal<{ one: number }>(database.pool, "SELECT 1 AS one", [], never);
    expect(after.rows).toEqual([{ one: 1 }]);
  });
});

async function waitFor(condition: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
