import { randomBytes } from "node:crypto";
import type { Logger } from "@vlinders/service-runtime";
import { Client } from "pg";
import { openDatabase, type Database } from "./open-database";

/** Where tests find PostgreSQL unless TEST_DATABASE_URL says otherwise. */
export const defaultTestDatabaseUrl = "postgres://postgres@127.0.0.1:5432/test";

/**
 * For tests: a Database on a real PostgreSQL (TEST_DATABASE_URL, or the local `test` database) in a
 * schema of its own, so that test files running in parallel, and runs that crashed before cleaning
 * up, never see each other's tables. `close()` drops the schema.
 */
export async function openTestDatabase(options: { logger: Logger; service?: string; url?: string }): Promise<Database & { schema: string; url: string }> {
  const url = options.url ?? process.env["TEST_DATABASE_URL"] ?? defaultTestDatabaseUrl;
  const schema = `test_${process.pid}_${randomBytes(4).toString("hex")}`;
  const database = await openDatabase({ url, logger: options.logger, service: options.service ?? "test", schema, poolSize: 4 });
  return {
    ...database,
    schema,
    url,
    close: async () => {
      await database.close();
      // From a connection of its own: the pool is gone, and the schema outlives it otherwise.
      const admin = new Client({ connectionString: url });
      await admin.connect();
      try {
        await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await admin.end();
      }
    },
  };
}
