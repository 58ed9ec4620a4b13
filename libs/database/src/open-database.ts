import { ConfigError, millisecondsVariable, type Logger } from "@vlinders/service-runtime";
import { DatabaseError, Pool } from "pg";
import { z } from "zod";
import { markEmbedded } from "./embedded-pools";
import { startEmbeddedPostgres } from "./embedded-postgres";

/**
 * The variables a service that keeps data in PostgreSQL reads; spread into its config schema.
 * DATABASE_URL is not checked here: a rejected value would be echoed in the error, and it holds a
 * password. `openDatabase` checks it without showing it.
 */
export const databaseConfigShape = {
  /** postgres://user:password@host:5432/database; unset: an in-process PGlite (development only). */
  DATABASE_URL: z.string().optional(),
  /** Without DATABASE_URL: a directory where PGlite keeps its data; unset: in memory, lost at exit. */
  PGLITE_DATA_DIR: z.string().optional(),
  /** Connections per replica to a PostgreSQL server (the embedded PGlite always has one). */
  DATABASE_POOL_SIZE: z.coerce.number().int().min(1).max(1000).default(10),
  /** The longest a statement may run on the server before PostgreSQL stops it. */
  DATABASE_STATEMENT_TIMEOUT_MS: millisecondsVariable(30_000),
};

/** The database variables of a service's configuration, as read through databaseConfigShape. */
export type DatabaseConfig = z.infer<z.ZodObject<typeof databaseConfigShape>>;

/** openDatabase's options from those variables; the caller adds its logger and service name. */
export function databaseOptionsFrom(config: DatabaseConfig): Pick<OpenDatabaseOptions, "url" | "poolSize" | "pgliteDataDir" | "statementTimeoutMs"> {
  return {
    url: config.DATABASE_URL,
    poolSize: config.DATABASE_POOL_SIZE,
    pgliteDataDir: config.PGLITE_DATA_DIR,
    statementTimeoutMs: config.DATABASE_STATEMENT_TIMEOUT_MS,
  };
}

/** A pool of connections and what it takes to close it. */
export interface Database {
  /** Against PGlite this pool has a single connection: a long transaction makes others wait. */
  pool: Pool;
  /** True when the data lives in the in-process PGlite rather than in a PostgreSQL server. */
  embedded: boolean;
  /** Ends the pool (waiting for connections in use to come back), then stops PGlite if embedded. Idempotent. */
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** DATABASE_URL. Unset or empty: the in-process PGlite. */
  url?: string | undefined;
  logger: Logger;
  /** Sent as application_name, so that pg_stat_activity tells which service holds a connection. */
  service: string;
  /** Connections to a PostgreSQL server (default 10). Ignored by the embedded PGlite, which serves one. */
  poolSize?: number | undefined;
  /** Without `url`: where PGlite keeps its data (one process per directory); unset: in memory. */
  pgliteDataDir?: string | undefined;
  /**
   * With `url`: a schema to create if missing and to put first on every connection's search_path,
   * so that several services or test runs can share one database. The embedded PGlite ignores it.
   */
  schema?: string | undefined;
  /** statement_timeout of every connection to a PostgreSQL server (default 30000). */
  statementTimeoutMs?: number | undefined;
  /** How long to wait for a connection, from the pool or from the server (default 10000). */
  connectionTimeoutMs?: number | undefined;
}

/** Thrown by `openDatabase` when PostgreSQL at DATABASE_URL cannot be reached or refuses the connection. */
export class DatabaseUnavailableError extends Error {
  override name = "DatabaseUnavailableError";
}

/**
 * Opens the service's database: a pg Pool against DATABASE_URL, checked with one query so that a
 * wrong URL fails the start; or, without a URL, PGlite in a worker thread of this process, served
 * over the PostgreSQL wire protocol on 127.0.0.1 (an ephemeral port, no password: any local process
 * may connect while it runs), so that every query path is the same pg code in development and in
 * production.
 */
export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  if (options.url === undefined || options.url === "") return openEmbedded(options);
  return openServer(options.url, options);
}

const schemaName = /^[a-z_][a-z0-9_]{0,62}$/;

async function openServer(url: string, options: OpenDatabaseOptions): Promise<Database> {
  const { logger, schema } = options;
  const where = describeUrl(url);
  if (schema !== undefined && !schemaName.test(schema)) {
    throw new Error(`schema: must be a lower-case SQL identifier (got ${JSON.stringify(schema)})`);
  }
  const pool = new Pool({
    connectionString: url,
    max: options.poolSize ?? 10,
    application_name: options.service,
    statement_timeout: options.statementTimeoutMs ?? 30_000,
    // A replica that dies inside a transaction must not hold its locks until TCP gives up.
    idle_in_transaction_session_timeout: 60_000,
    connectionTimeoutMillis: options.connectionTimeoutMs ?? 10_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    ...(schema === undefined ? {} : { options: `-c search_path=${schema}` }),
  });
  // An idle connection whose server went away (restart, failover) emits 'error' on the pool; without
  // a listener that would crash the process. The pool drops it and opens another when needed.
  pool.on("error", (error) => logger.error({ err: error, database: where }, "an idle PostgreSQL connection failed; the pool replaces it"));
  try {
    await pool.query("SELECT 1");
    if (schema !== undefined) await createSchema(pool, schema);
  } catch (error: unknown) {
    await pool.end().catch(() => undefined);
    const reason = error instanceof Error ? error.message : String(error);
    throw new DatabaseUnavailableError(`cannot use PostgreSQL at ${where} (DATABASE_URL): ${reason}`, { cause: error });
  }
  logger.info({ database: where, pool_size: options.poolSize ?? 10, ...(schema === undefined ? {} : { schema }) }, "connected to PostgreSQL");
  return { pool, embedded: false, close: once(() => pool.end()) };
}

async function createSchema(pool: Pool, schema: string): Promise<void> {
  try {
    await pool.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
  } catch (error: unknown) {
    // IF NOT EXISTS still races when replicas start together: the loser sees the winner's schema.
    const raced = error instanceof DatabaseError && (error.code === "23505" || error.code === "42P06");
    if (!raced) throw error;
  }
}

/** host:port/database of a connection URL, never its user or password. */
function describeUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError("invalid configuration: DATABASE_URL: must be a URL like postgres://user:password@host:5432/database (value hidden)");
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new ConfigError(`invalid configuration: DATABASE_URL: must start with postgres:// or postgresql:// (got ${parsed.protocol}//…)`);
  }
  return `${parsed.hostname || "localhost"}:${parsed.port || "5432"}${parsed.pathname}`;
}

async function openEmbedded(options: OpenDatabaseOptions): Promise<Database> {
  const { logger, pgliteDataDir } = options;
  const inMemory = pgliteDataDir === undefined || pgliteDataDir === "";
  // pg's pool holds one connection; the extra slots let a dropped connection (an aborted query)
  // finish closing while its replacement opens, instead of the replacement being turned away.
  // The socket server runs one statement at a time and keeps a transaction's statements together.
  const postgres = await startEmbeddedPostgres({ dataDir: inMemory ? undefined : pgliteDataDir, maxConnections: 4, logger });
  const pool = new Pool({
    host: "127.0.0.1",
    port: postgres.port,
    user: "postgres",
    database: "postgres",
    max: 1,
    // 0 keeps the one connection open for good: reconnecting buys nothing in-process.
    idleTimeoutMillis: 0,
    connectionTimeoutMillis: options.connectionTimeoutMs ?? 10_000,
  });
  markEmbedded(pool);
  pool.on("error", (error) => logger.error({ err: error }, "the connection to the embedded PGlite failed; the pool replaces it"));
  if (inMemory) {
    logger.warn(
      { database: "pglite (in memory)" },
      "DATABASE_URL is unset: using an in-process PGlite database held in memory; its data is lost when the process exits (set DATABASE_URL for PostgreSQL, or PGLITE_DATA_DIR to keep the data in a directory)",
    );
  } else {
    logger.warn(
      { database: `pglite (${pgliteDataDir})`, pglite_data_dir: pgliteDataDir },
      "DATABASE_URL is unset: using an in-process PGlite database kept in PGLITE_DATA_DIR; one connection and one process at a time, for development only",
    );
  }
  return {
    pool,
    embedded: true,
    close: once(async () => {
      await pool.end();
      await postgres.stop();
    }),
  };
}

function once(run: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  return () => (running ??= run());
}
