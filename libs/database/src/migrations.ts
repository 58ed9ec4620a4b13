import type { Logger } from "@vlinders/service-runtime";
import type { Pool } from "pg";
import { connectWithSignal, type SignalledClient } from "./query-with-signal";

/** One step of a schema's history. Released migrations are never edited; new ones are appended. */
export interface Migration {
  /** A positive integer, unique within the scope; migrations run in increasing order. */
  version: number;
  /** A short description, recorded beside the version. */
  name: string;
  /** One or more statements, run in one transaction (so no BEGIN or COMMIT of its own). */
  sql: string;
}

export interface RunMigrationsOptions {
  /** Whose schema this is (a service name): each scope has its own versions. */
  scope: string;
  migrations: readonly Migration[];
  /** Stops between statements, and cancels the one running, when aborted. */
  signal?: AbortSignal | undefined;
  /** Told about each migration applied. */
  logger?: Logger | undefined;
}

export interface MigrationsResult {
  /** The versions this call applied, in order; empty when the schema was up to date. */
  applied: number[];
  /** The scope's highest version in the database afterwards (0 when it has none). */
  version: number;
}

/**
 * The database holds something these migrations cannot bring it to: a version newer than the code
 * knows (a rollback to older code), or a known migration that was never applied although a later
 * one was (a migration inserted into released history). Nothing is applied when this is thrown.
 */
export class MigrationConflictError extends Error {
  override name = "MigrationConflictError";
}

// One key for every scope: migrations are rare and short, and serialising all of them also keeps
// two services from creating schema_migrations at the same moment, which IF NOT EXISTS does not.
const migrationLockKey = 7_243_001;

/**
 * Brings the scope's schema up to date: applies, in order, each migration not yet recorded in
 * `schema_migrations`, each in its own transaction with its record, so that a failure leaves the
 * schema at the last good version. Replicas starting together take turns through a transaction-level
 * advisory lock; a replica that waited finds the work done and applies nothing. Idempotent.
 */
export async function runMigrations(pool: Pool, options: RunMigrationsOptions): Promise<MigrationsResult> {
  const { scope, logger } = options;
  const migrations = checkedMigrations(scope, options.migrations);
  const signal = options.signal ?? new AbortController().signal;
  const latestKnown = migrations.at(-1)?.version ?? 0;
  const applied: number[] = [];
  // The record is read again under the lock before each migration: another replica may have
  // applied it while this one waited.
  for (;;) {
    const step = await inLockedTransaction(pool, signal, async (client): Promise<{ applied: Migration } | { upToDate: number }> => {
      await client.query(
        `CREATE TABLE IF NOT EXISTS schema_migrations (
           scope text NOT NULL,
           version integer NOT NULL,
           name text NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now(),
           PRIMARY KEY (scope, version)
         )`,
      );
      const recorded = await client.query<{ version: number; name: string }>(
        "SELECT version, name FROM schema_migrations WHERE scope = $1 ORDER BY version",
        [scope],
      );
      const done = new Set(recorded.rows.map((row) => row.version));
      const newest = recorded.rows.at(-1);
      if (newest !== undefined && newest.version > latestKnown) {
        throw new MigrationConflictError(
          `the database schema of "${scope}" is at version ${newest.version} ("${newest.name}"), newer than the latest this code knows (${latestKnown}); run a release that knows it, or restore a database that matches this one`,
        );
      }
      const pending = migrations.find((migration) => !done.has(migration.version));
      if (pending === undefined) return { upToDate: newest?.version ?? 0 };
      if (newest !== undefined && pending.version < newest.version) {
        throw new MigrationConflictError(
          `migration ${pending.version} ("${pending.name}") of "${scope}" was never applied, but the later ${newest.version} was; add new migrations after the last released one instead of before it`,
        );
      }
      // No parameters: pg then uses the simple protocol, which runs several statements at once.
      await client.query(pending.sql);
      await client.query("INSERT INTO schema_migrations (scope, version, name) VALUES ($1, $2, $3)", [scope, pending.version, pending.name]);
      return { applied: pending };
    });
    if ("upToDate" in step) return { applied, version: step.upToDate };
    applied.push(step.applied.version);
    logger?.info({ scope, version: step.applied.version, migration: step.applied.name }, "applied database migration");
  }
}

async function inLockedTransaction<T>(pool: Pool, signal: AbortSignal, work: (client: SignalledClient) => Promise<T>): Promise<T> {
  const client = await connectWithSignal(pool, signal);
  try {
    await client.query("BEGIN");
    // A migration (an index build) may outlast the pool's statement_timeout, and so may the wait of
    // a replica behind it; the caller's signal still stops both.
    await client.query("SET LOCAL statement_timeout = 0");
    // Held until COMMIT or ROLLBACK, and released by the server if this connection dies.
    await client.query("SELECT pg_advisory_xact_lock($1)", [migrationLockKey]);
    let result: T;
    try {
      result = await work(client);
    } catch (error: unknown) {
      // After an abort the connection is already gone, and with it the transaction.
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    }
    await client.query("COMMIT");
    return result;
  } finally {
    client.release();
  }
}

function checkedMigrations(scope: string, migrations: readonly Migration[]): Migration[] {
  if (scope.trim() === "") throw new Error("runMigrations: scope must not be empty");
  const sorted = [...migrations].sort((a, b) => a.version - b.version);
  sorted.forEach((migration, index) => {
    if (!Number.isSafeInteger(migration.version) || migration.version <= 0 || migration.version > 2_147_483_647) {
      throw new Error(`runMigrations: "${scope}" migration "${migration.name}": version must be a positive 32-bit integer (got ${migration.version})`);
    }
    if (index > 0 && sorted[index - 1]?.version === migration.version) {
      throw new Error(`runMigrations: "${scope}" has two migrations with version ${migration.version}`);
    }
    if (migration.name.trim() === "") throw new Error(`runMigrations: "${scope}" migration ${migration.version} has no name`);
  });
  return sorted;
}
