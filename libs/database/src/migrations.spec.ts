import { randomBytes } from "node:crypto";
import { createLogger } from "@vlinders/service-runtime";
import type { Pool } from "pg";
import { MigrationConflictError, runMigrations, type Migration } from "./migrations";
import { openDatabase, type Database } from "./open-database";
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

/** A scope and table names of its own, so that tests sharing a database never meet. */
function freshScope(): { scope: string; table: (name: string) => string } {
  const suffix = randomBytes(4).toString("hex");
  return { scope: `scope-${suffix}`, table: (name) => `${name}_${suffix}` };
}

async function recorded(pool: Pool, scope: string): Promise<Array<{ version: number; name: string }>> {
  const exists = await pool.query<{ found: string | null }>("SELECT to_regclass('schema_migrations')::text AS found");
  if (exists.rows[0]?.found === null) return [];
  const { rows } = await pool.query<{ version: number; name: string; applied_at: Date }>(
    "SELECT version, name, applied_at FROM schema_migrations WHERE scope = $1 ORDER BY version",
    [scope],
  );
  for (const row of rows) expect(row.applied_at).toBeInstanceOf(Date);
  return rows.map(({ version, name }) => ({ version, name }));
}

const backends: Array<[string, () => Promise<Database>]> = [
  ["PostgreSQL", () => openTestDatabase({ logger })],
  ["the embedded PGlite", () => openDatabase({ logger, service: "migrations-test" })],
];

describe.each(backends)("runMigrations on %s", (_name, open) => {
  let database: Database;
  beforeAll(async () => {
    database = await open();
  }, 60_000);
  afterAll(async () => {
    await database.close();
  });

  it("applies the migrations in version order, each recorded, and reports them", async () => {
    const { scope, table } = freshScope();
    const migrations: Migration[] = [
      { version: 2, name: "add notes.body", sql: `ALTER TABLE ${table("notes")} ADD COLUMN body text NOT NULL DEFAULT ''` },
      { version: 1, name: "create notes", sql: `CREATE TABLE ${table("notes")} (id serial PRIMARY KEY); CREATE INDEX ON ${table("notes")} (id)` },
    ];
    const result = await runMigrations(database.pool, { scope, migrations });
    expect(result).toEqual({ applied: [1, 2], version: 2 });
    expect(await recorded(database.pool, scope)).toEqual([
      { version: 1, name: "create notes" },
      { version: 2, name: "add notes.body" },
    ]);
    const { rows } = await database.pool.query<{ id: number; body: string }>(`INSERT INTO ${table("notes")} DEFAULT VALUES RETURNING id, body`);
    expect(rows).toEqual([{ id: 1, body: "" }]);
  });

  it("applies nothing the second time, and only what is new after a release adds a migration", async () => {
    const { scope, table } = freshScope();
    const first: Migration[] = [{ version: 1, name: "create items", sql: `CREATE TABLE ${table("items")} (id int)` }];
    await runMigrations(database.pool, { scope, migrations: first });
    expect(await runMigrations(database.pool, { scope, migrations: first })).toEqual({ applied: [], version: 1 });
    const second = [...first, { version: 2, name: "add items.name", sql: `ALTER TABLE ${table("items")} ADD COLUMN name text` }];
    expect(await runMigrations(database.pool, { scope, migrations: second })).toEqual({ applied: [2], version: 2 });
  });

  it("keeps each scope's versions apart", async () => {
    const a = freshScope();
    const b = freshScope();
    await runMigrations(database.pool, { scope: a.scope, migrations: [{ version: 1, name: "a", sql: `CREATE TABLE ${a.table("t")} (x int)` }] });
    const result = await runMigrations(database.pool, { scope: b.scope, migrations: [{ version: 1, name: "b", sql: `CREATE TABLE ${b.table("t")} (x int)` }] });
    expect(result).toEqual({ applied: [1], version: 1 });
  });

  it("rolls back a failing migration with its record, keeping the ones before it", async () => {
    const { scope, table } = freshScope();
    const good: Migration = { version: 1, name: "create things", sql: `CREATE TABLE ${table("things")} (id int)` };
    const bad: Migration = {
      version: 2,
      name: "half of it works",
      sql: `CREATE TABLE ${table("half")} (id int); INSERT INTO ${table("things")} VALUES (1); SELECT * FROM ${table("missing")}`,
    };
    const error = await rejectionOf(runMigrations(database.pool, { scope, migrations: [good, bad] }));
    expect(error.message).toBe(`relation "${table("missing")}" does not exist`);
    expect(await recorded(database.pool, scope)).toEqual([{ version: 1, name: "create things" }]);
    const half = await database.pool.query<{ found: string | null }>("SELECT to_regclass($1)::text AS found", [table("half")]);
    expect(half.rows).toEqual([{ found: null }]);
    expect((await database.pool.query(`SELECT * FROM ${table("things")}`)).rows).toEqual([]);

    const fixed = { ...bad, sql: `CREATE TABLE ${table("half")} (id int)` };
    expect(await runMigrations(database.pool, { scope, migrations: [good, fixed] })).toEqual({ applied: [2], version: 2 });
  });

  it("refuses, applying nothing, when the database is at a version newer than the code knows", async () => {
    const { scope, table } = freshScope();
    const migrations: Migration[] = [
      { version: 1, name: "one", sql: `CREATE TABLE ${table("a")} (x int)` },
      { version: 2, name: "two", sql: `CREATE TABLE ${table("b")} (x int)` },
      { version: 3, name: "three", sql: `CREATE TABLE ${table("c")} (x int)` },
    ];
    await runMigrations(database.pool, { scope, migrations });
    const older = [migrations[0], migrations[1]].filter((migration) => migration !== undefined);
    const error = await rejectionOf(runMigrations(database.pool, { scope, migrations: older }));
    expect(error).toBeInstanceOf(MigrationConflictError);
    expect(error.message).toBe(
      `the database schema of "${scope}" is at version 3 ("three"), newer than the latest this code knows (2); run a release that knows it, or restore a database that matches this one`,
    );
    expect(await recorded(database.pool, scope)).toHaveLength(3);
  });

  it("refuses a migration inserted before one already applied", async () => {
    const { scope, table } = freshScope();
    await runMigrations(database.pool, { scope, migrations: [{ version: 2, name: "two", sql: `CREATE TABLE ${table("b")} (x int)` }] });
    const error = await rejectionOf(
      runMigrations(database.pool, {
        scope,
        migrations: [
          { version: 1, name: "one", sql: `CREATE TABLE ${table("a")} (x int)` },
          { version: 2, name: "two", sql: `CREATE TABLE ${table("b")} (x int)` },
        ],
      }),
    );
    expect(error).toBeInstanceOf(MigrationConflictError);
    expect(error.message).toBe(
      `migration 1 ("one") of "${scope}" was never applied, but the later 2 was; add new migrations after the last released one instead of before it`,
    );
    const created = await database.pool.query<{ found: string | null }>("SELECT to_regclass($1)::text AS found", [table("a")]);
    expect(created.rows).toEqual([{ found: null }]);
  });

  it("refuses duplicate or invalid versions before touching the database", async () => {
    const { scope } = freshScope();
    const duplicate = await rejectionOf(
      runMigrations(database.pool, {
        scope,
        migrations: [
          { version: 1, name: "a", sql: "SELECT 1" },
          { version: 1, name: "b", sql: "SELECT 1" },
        ],
      }),
    );
    expect(duplicate.message).toBe(`runMigrations: "${scope}" has two migrations with version 1`);
    const zero = await rejectionOf(runMigrations(database.pool, { scope, migrations: [{ version: 0, name: "zero", sql: "SELECT 1" }] }));
    expect(zero.message).toBe(`runMigrations: "${scope}" migration "zero": version must be a positive 32-bit integer (got 0)`);
    expect(await recorded(database.pool, scope)).toEqual([]);
  });

  it("holds the advisory lock while a migration runs", async () => {
    const { scope, table } = freshScope();
    // A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low 32 bits).
    const sql = `CREATE TABLE ${table("seen")} AS SELECT count(*) AS held FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = 7243001 AND granted`;
    await runMigrations(database.pool, { scope, migrations: [{ version: 1, name: "look at the locks", sql }] });
    const { rows } = await database.pool.query<{ held: string }>(`SELECT held FROM ${table("seen")}`);
    expect(rows).toEqual([{ held: "1" }]);
  });

  it("applies each migration once when replicas run them together", async () => {
    const { scope, table } = freshScope();
    // CREATE TABLE without IF NOT EXISTS fails if it runs twice.
    const migrations: Migration[] = [
      { version: 1, name: "one", sql: `CREATE TABLE ${table("a")} (x int)` },
      { version: 2, name: "two", sql: `CREATE TABLE ${table("b")} (x int)` },
      { version: 3, name: "three", sql: `CREATE TABLE ${table("c")} (x int)` },
    ];
    const results = await Promise.all([1, 2, 3, 4, 5].map(() => runMigrations(database.pool, { scope, migrations })));
    expect(results.flatMap((result) => result.applied).sort()).toEqual([1, 2, 3]);
    expect(results.every((result) => result.version === 3)).toBe(true);
    expect(await recorded(database.pool, scope)).toHaveLength(3);
  });
});

describe("runMigrations on PostgreSQL, across connections", () => {
  let database: Database & { url: string; schema: string };
  beforeAll(async () => {
    database = await openTestDatabase({ logger });
  });
  afterAll(async () => {
    await database.close();
  });

  it("waits while another replica holds the migration lock", async () => {
    const { scope, table } = freshScope();
    const other = await database.pool.connect();
    let finished = false;
    try {
      await other.query("BEGIN");
      await other.query("SELECT pg_advisory_xact_lock(7243001)");
      const run = runMigrations(database.pool, { scope, migrations: [{ version: 1, name: "one", sql: `CREATE TABLE ${table("a")} (x int)` }] }).then((result) => {
        finished = true;
        return result;
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(finished).toBe(false);
      await other.query("COMMIT");
      expect(await run).toEqual({ applied: [1], version: 1 });
    } finally {
      other.release();
    }
  });

  it("stops a running migration when the signal aborts, recording nothing", async () => {
    const { scope, table } = freshScope();
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    const started = Date.now();
    const error = await rejectionOf(
      runMigrations(database.pool, {
        scope,
        signal: controller.signal,
        migrations: [{ version: 1, name: "slow", sql: `CREATE TABLE ${table("slow")} (x int); SELECT pg_sleep(20)` }],
      }),
    );
    expect(error.name).toBe("AbortError");
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(await recorded(database.pool, scope)).toEqual([]);
    const created = await database.pool.query<{ found: string | null }>("SELECT to_regclass($1)::text AS found", [table("slow")]);
    expect(created.rows).toEqual([{ found: null }]);
  });
});
