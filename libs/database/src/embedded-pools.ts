import type { Pool } from "pg";

// Pools served by the in-process PGlite. Cancelling works differently there (see query-with-signal.ts),
// and a WeakSet lets the query helpers tell without widening the pg.Pool type every caller passes.
const embeddedPools = new WeakSet<Pool>();

export function markEmbedded(pool: Pool): void {
  embeddedPools.add(pool);
}

/** Whether the pool talks to the in-process PGlite of `openDatabase` rather than to a PostgreSQL server. */
export function isEmbeddedPool(pool: Pool): boolean {
  return embeddedPools.has(pool);
}
