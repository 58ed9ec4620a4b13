import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, createLogger, type Logger } from "@vlinders/service-runtime";
import { Client } from "pg";
import { DatabaseUnavailableError, openDatabase, type Database } from "./open-database";
import { defaultTestDatabaseUrl, openTestDatabase } from "./test-database";

// Starting PGlite (compiling its WebAssembly) takes seconds, and more while other test files run.
const pgliteStartMs = 60_000;
const testUrl = process.env["TEST_DATABASE_URL"] ?? defaultTestDatabaseUrl;

function capturingLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({ service: "test", level: "debug", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
  return { logger, lines };
}

/** A port on which nothing listens. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function rejectionOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error: unknown) {
    return error as Error;
  }
  throw new Error("expected a rejection");
}

describe("openDatabase without DATABASE_URL (embedded PGlite)", () => {
  const { logger, lines } = capturingLogger();
  let database: Database;

  beforeAll(async () => {
    database = await openDatabase({ logger, service: "embedded-test" });
  }, pgliteStartMs);
  afterAll(async () => {
    await database.close();
  });

  it("warns that the data lives in memory and is lost at exit", () => {
    const warning = lines.find((line) => line["level"] === "warn");
    expect(warning?.["msg"]).toBe(
      "DATABASE_URL is unset: using an in-process PGlite database held in memory; its data is lost when the process exits (set DATABASE_URL for PostgreSQL, or PGLITE_DATA_DIR to keep the data in a directory)",
    );
  });

  it("serves PostgreSQL through a pg Pool of one connection", async () => {
    expect(database.embedded).toBe(true);
    expect(database.pool.options.max).toBe(1);
    const { rows } = await database.pool.query<{ version: string; bytes: Buffer; doubled: number }>(
      "SELECT version() AS version, $1::bytea AS bytes, $2::int * 2 AS doubled",
      [Buffer.from([0, 1, 255]), 21],
    );
    expect(rows[0]?.version).toMatch(/^PostgreSQL .*PGlite/);
    expect(rows[0]?.bytes).toEqual(Buffer.from([0, 1, 255]));
    expect(rows[0]?.doubled).toBe(42);
  });

  it("runs queries issued together one after another on its single connection", async () => {
    await database.pool.query("CREATE TABLE together (n int)");
    await Promise.all([1, 2, 3, 4, 5].map((n) => database.pool.query("INSERT INTO together VALUES ($1)", [n])));
    const { rows } = await database.pool.query<{ total: string }>("SELECT sum(n) AS total FROM together");
    expect(rows[0]?.total).toBe("15");
  });
});

describe("openDatabase with PGLITE_DATA_DIR", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "vlinders-pglite-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the data in the directory across a restart", async () => {
    const { logger, lines } = capturingLogger();
    const first = await openDatabase({ logger, service: "test", pgliteDataDir: dir });
    await first.pool.query("CREATE TABLE kept (note text)");
    await first.pool.query("INSERT INTO kept VALUES ('still here')");
    await first.close();
    expect(lines.find((line) => line["level"] === "warn")?.["msg"]).toContain("kept in PGLITE_DATA_DIR");

    const second = await openDatabase({ logger, service: "test", pgliteDataDir: dir });
    try {
      const { rows } = await second.pool.query<{ note: string }>("SELECT note FROM kept");
      expect(rows).toEqual([{ note: "still here" }]);
    } finally {
      await second.close();
    }
  }, 2 * pgliteStartMs);
});

describe("openDatabase with DATABASE_URL (PostgreSQL)", () => {
  const { logger, lines } = capturingLogger();
  let database: Database & { schema: string };

  beforeAll(async () => {
    database = await openTestDatabase({ logger, service: "open-database-test" });
  });
  afterAll(async () => {
    await database.close();
  });

  it("connects with the service's application_name, a statement_timeout and the schema first on search_path", async () => {
    expect(database.embedded).toBe(false);
    const { rows } = await database.pool.query<{ app: string; timeout: string; schema: string }>(
      "SELECT current_setting('application_name') AS app, current_setting('statement_timeout') AS timeout, current_schema() AS schema",
    );
    expect(rows[0]).toEqual({ app: "open-database-test", timeout: "30s", schema: database.schema });
    expect(lines.find((line) => line["msg"] === "connected to PostgreSQL")?.["database"]).toBe("127.0.0.1:5432/test");
  });

  it("stops a statement that outlasts statementTimeoutMs", async () => {
    const short = await openDatabase({ url: testUrl, logger, service: "test", statementTimeoutMs: 200 });
    try {
      const error = await rejectionOf(short.pool.query("SELECT pg_sleep(5)"));
      expect(error.message).toBe("canceling statement due to statement timeout");
    } finally {
      await short.close();
    }
  });

  it("logs an idle connection that the server closed, and keeps serving", async () => {
    await database.pool.query("SELECT 1");
    const { rows } = await database.pool.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
    const pid = rows[0]?.pid;
    const admin = new Client({ connectionString: testUrl });
    await admin.connect();
    try {
      await admin.query("SELECT pg_terminate_backend($1)", [pid]);
    } finally {
      await admin.end();
    }
    await waitFor(() => lines.some((line) => line["msg"] === "an idle PostgreSQL connection failed; the pool replaces it"));
    const after = await database.pool.query<{ one: number }>("SELECT 1 AS one");
    expect(after.rows).toEqual([{ one: 1 }]);
  });

  it("fails to open naming DATABASE_URL and the server, never the password, when nothing listens", async () => {
    const port = await closedPort();
    const error = await rejectionOf(openDatabase({ url: `postgres://postgres:hunter2@127.0.0.1:${port}/test`, logger, service: "test", connectionTimeoutMs: 2_000 }));
    expect(error).toBeInstanceOf(DatabaseUnavailableError);
    expect(error.message).toMatch(new RegExp(`^cannot use PostgreSQL at 127\\.0\\.0\\.1:${port}/test \\(DATABASE_URL\\): .*ECONNREFUSED`));
    expect(error.message).not.toContain("hunter2");
  });

  it("refuses a DATABASE_URL that is not a postgres URL without echoing it", async () => {
    const notUrl = await rejectionOf(openDatabase({ url: "host=db password=hunter2", logger, service: "test" }));
    expect(notUrl).toBeInstanceOf(ConfigError);
    expect(notUrl.message).toBe("invalid configuration: DATABASE_URL: must be a URL like postgres://user:password@host:5432/database (value hidden)");
    const mysql = await rejectionOf(openDatabase({ url: "mysql://root:hunter2@db/app", logger, service: "test" }));
    expect(mysql).toBeInstanceOf(ConfigError);
    expect(mysql.message).toBe("invalid configuration: DATABASE_URL: must start with postgres:// or postgresql:// (got mysql://…)");
  });

  it("closes idempotently, after which the pool refuses queries", async () => {
    const other = await openDatabase({ url: testUrl, logger, service: "test" });
    await Promise.all([other.close(), other.close()]);
    await expect(other.pool.query("SELECT 1")).rejects.toThrow("Cannot use a pool after calling end on the pool");
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
