export { openDatabase, databaseConfigShape, databaseOptionsFrom, type DatabaseConfig, DatabaseUnavailableError, type Database, type OpenDatabaseOptions } from "./open-database";
export { runMigrations, MigrationConflictError, type Migration, type MigrationsResult, type RunMigrationsOptions } from "./migrations";
export { queryWithSignal, connectWithSignal, abortErrorFor, type SignalledClient } from "./query-with-signal";
export { isEmbeddedPool } from "./embedded-pools";
export { openTestDatabase, defaultTestDatabaseUrl } from "./test-database";
