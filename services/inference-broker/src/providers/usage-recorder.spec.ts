import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { openDatabase, openTestDatabase, runMigrations, type Database } from "@vlinders/database";
import { createLogger, type Logger } from "@vlinders/service-runtime";
import { Pool } from "pg";
import { brokerMigrations, brokerMigrationScope } from "./migrations";
import { createUsageRecorder, type UsageRecorder } from "./usage-recorder";

const never = new AbortController().signal;
const hour = 3_600_000;

function capturingLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({ service: "test", level: "debug", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
  return { logger, lines };
}

/** A provider name of its own, so that tests sharing the table never count each other's usage. */
function freshProvider(): string {
  return `provider-${randomBytes(4).toString("hex")}`;
}

async function rejectionOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error: unknown) {
    return error as Error;
  }
  throw new Error("expected a rejection");
}

async function waitFor(condition: () => Promise<boolean> | boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A pool towards a port on which nothing listens: every query fails to connect. */
async function unreachablePool(): Promise<Pool> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return new Pool({ host: "127.0.0.1", port, user: "postgres", database: "test", connectionTimeoutMillis: 1_000 });
}

describe("createUsageRecorder on PostgreSQL", () => {
  const { logger, lines } = capturingLogger();
  let database: Database;
  const recorders: UsageRecorder[] = [];

  function recorder(options: { flushIntervalMs?: number; maxBatch?: number; maxPendingRows?: number; pool?: Pool } = {}): UsageRecorder {
    const created = createUsageRecorder({ pool: options.pool ?? database.pool, logger, flushIntervalMs: options.flushIntervalMs ?? hour, maxBatch: options.maxBatch, maxPendingRows: options.maxPendingRows });
    recorders.push(created);
    return created;
  }

  async function rowsOf(provider: string): Promise<Array<{ model: string; requests: number; prompt_tokens: string; completion_tokens: string }>> {
    const { rows } = await database.pool.query(
      "SELECT model, requests, prompt_tokens, completion_tokens FROM provider_usage WHERE provider = $1 ORDER BY model, id",
      [provider],
    );
    return rows as Array<{ model: string; requests: number; prompt_tokens: string; completion_tokens: string }>;
  }

  beforeAll(async () => {
    database = await openTestDatabase({ logger, service: "usage-recorder-test" });
    await runMigrations(database.pool, { scope: brokerMigrationScope, migrations: brokerMigrations });
  });
  afterAll(async () => {
    await Promise.all(recorders.map((created) => created.close()));
    await database.close();
  });

  it("aggregates samples per provider and model into one row each, written by one flush", async () => {
    const provider = freshProvider();
    const usage = recorder();
    usage.record({ provider, model: "gpt-a", promptTokens: 10, completionTokens: 5 });
    usage.record({ provider, model: "gpt-a", promptTokens: 20, completionTokens: 7 });
    usage.record({ provider, model: "gpt-b", promptTokens: 1, completionTokens: 1 });
    expect(usage.stats()).toEqual({ pendingRows: 2, droppedRows: 0, failedFlushes: 0 });
    expect(await rowsOf(provider)).toEqual([]);

    await usage.flush(never);
    expect(await rowsOf(provider)).toEqual([
      { model: "gpt-a", requests: 2, prompt_tokens: "30", completion_tokens: "12" },
      { model: "gpt-b", requests: 1, prompt_tokens: "1", completion_tokens: "1" },
    ]);
    expect(usage.stats().pendingRows).toBe(0);
  });

  it("reports sums per provider and model across flushes, filtered by provider, model and time", async () => {
    const provider = freshProvider();
    const other = freshProvider();
    const usage = recorder();
    usage.record({ provider, model: "m1", promptTokens: 100, completionTokens: 10 });
    usage.record({ provider: other, model: "m1", promptTokens: 5, completionTokens: 5 });
    await usage.flush(never);
    // Apart by a few milliseconds on both sides: Date has millisecond resolution.
    await new Promise((resolve) => setTimeout(resolve, 5));
    const between = new Date();
    await new Promise((resolve) => setTimeout(resolve, 5));
    usage.record({ provider, model: "m1", promptTokens: 50, completionTokens: 20 });
    usage.record({ provider, model: "m2", promptTokens: 7, completionTokens: 3 });
    await usage.flush(never);

    expect(await usage.report({ provider }, never)).toEqual([
      { provider, model: "m1", requests: 2, promptTokens: 150, completionTokens: 30 },
      { provider, model: "m2", requests: 1, promptTokens: 7, completionTokens: 3 },
    ]);
    expect(await usage.report({ provider, model: "m2" }, never)).toEqual([{ provider, model: "m2", requests: 1, promptTokens: 7, completionTokens: 3 }]);
    expect(await usage.report({ provider, since: between }, never)).toEqual([
      { provider, model: "m1", requests: 1, promptTokens: 50, completionTokens: 20 },
      { provider, model: "m2", requests: 1, promptTokens: 7, completionTokens: 3 },
    ]);
    const everyone = await usage.report({}, never);
    const expected = [
      { provider, model: "m1", requests: 2, promptTokens: 150, completionTokens: 30 },
      { provider, model: "m2", requests: 1, promptTokens: 7, completionTokens: 3 },
      { provider: other, model: "m1", requests: 1, promptTokens: 5, completionTokens: 5 },
    ].sort((a, b) => (a.provider === b.provider ? a.model.localeCompare(b.model) : a.provider < b.provider ? -1 : 1));
    expect(everyone.filter((row) => row.provider === provider || row.provider === other)).toEqual(expected);
  });

  it("flushes on its own every flushIntervalMs", async () => {
    const provider = freshProvider();
    const usage = recorder({ flushIntervalMs: 50 });
    usage.record({ provider, model: "timed", promptTokens: 3, completionTokens: 4 });
    await waitFor(async () => (await rowsOf(provider)).length === 1);
    expect(await rowsOf(provider)).toEqual([{ model: "timed", requests: 1, prompt_tokens: "3", completion_tokens: "4" }]);
  });

  it("writes at most maxBatch rows per INSERT, and flushes early once a buffer reaches maxBatch", async () => {
    const provider = freshProvider();
    const usage = recorder({ maxBatch: 2 });
    const spy = jest.spyOn(database.pool, "connect");
    try {
      for (const model of ["a", "b"]) usage.record({ provider, model, promptTokens: 1, completionTokens: 1 });
      // Two rows reach maxBatch: written without waiting for the hour-long interval.
      await waitFor(async () => (await rowsOf(provider)).length === 2);
      spy.mockClear();
      for (const model of ["c", "d", "e"]) usage.record({ provider, model, promptTokens: 1, completionTokens: 1 });
      await usage.flush(never);
      // Three rows, two INSERTs: c and d together, then e. (The early flush this scheduled finds
      // nothing left to write.)
      const inserts = spy.mock.calls.length;
      expect((await rowsOf(provider)).map((row) => row.model)).toEqual(["a", "b", "c", "d", "e"]);
      expect(inserts).toBe(2);
    } finally {
      spy.mockRestore();
    }
  });

  it("never throws from record, counting missing, negative or fractional tokens as what they can be", async () => {
    const usage = recorder();
    const provider = freshProvider();
    expect(() => usage.record({ provider, model: "odd", promptTokens: Number.NaN, completionTokens: -3 })).not.toThrow();
    expect(() => usage.record({ provider, model: "odd", promptTokens: 2.7, completionTokens: Infinity })).not.toThrow();
    expect(() => usage.record(null as unknown as Parameters<UsageRecorder["record"]>[0])).not.toThrow();
    await usage.flush(never);
    expect(await rowsOf(provider)).toEqual([{ model: "odd", requests: 2, prompt_tokens: "2", completion_tokens: "0" }]);
  });

  it("keeps the rows of a failed flush and writes them once the database can take them", async () => {
    // A schema without the broker's tables: the INSERT fails until the migrations run.
    const bare = await openTestDatabase({ logger, service: "usage-recorder-test" });
    try {
      const provider = freshProvider();
      const usage = createUsageRecorder({ pool: bare.pool, logger, flushIntervalMs: hour });
      usage.record({ provider, model: "kept", promptTokens: 11, completionTokens: 1 });
      const error = await rejectionOf(usage.flush(never));
      expect(error.message).toBe('relation "provider_usage" does not exist');
      expect(usage.stats()).toEqual({ pendingRows: 1, droppedRows: 0, failedFlushes: 0 });

      usage.record({ provider, model: "kept", promptTokens: 9, completionTokens: 1 });
      await runMigrations(bare.pool, { scope: brokerMigrationScope, migrations: brokerMigrations });
      await usage.flush(never);
      expect(usage.stats().pendingRows).toBe(0);
      // Two rows, one per interval: the retried one keeps its own time.
      expect(await usage.report({ provider }, never)).toEqual([{ provider, model: "kept", requests: 2, promptTokens: 20, completionTokens: 2 }]);
      const { rows } = await bare.pool.query<{ n: string }>("SELECT count(*) AS n FROM provider_usage WHERE provider = $1", [provider]);
      expect(rows).toEqual([{ n: "2" }]);
      await usage.close();
    } finally {
      await bare.close();
    }
  });

  it("keeps rows while the database is unreachable, dropping the oldest past maxPendingRows with a warning", async () => {
    const pool = await unreachablePool();
    pool.on("error", () => undefined);
    const usage = createUsageRecorder({ pool, logger, flushIntervalMs: hour, maxPendingRows: 3 });
    try {
      usage.record({ provider: "p", model: "first", promptTokens: 1, completionTokens: 1 });
      usage.record({ provider: "p", model: "second", promptTokens: 1, completionTokens: 1 });
      expect((await rejectionOf(usage.flush(never))).message).toContain("ECONNREFUSED");
      expect(usage.stats()).toEqual({ pendingRows: 2, droppedRows: 0, failedFlushes: 0 });

      usage.record({ provider: "p", model: "third", promptTokens: 1, completionTokens: 1 });
      usage.record({ provider: "p", model: "fourth", promptTokens: 1, completionTokens: 1 });
      usage.record({ provider: "p", model: "fourth", promptTokens: 1, completionTokens: 1 });
      expect(usage.stats()).toEqual({ pendingRows: 3, droppedRows: 1, failedFlushes: 0 });
      await rejectionOf(usage.flush(never));
      expect(lines.filter((line) => line["msg"] === "usage buffer full: dropped the oldest unwritten usage rows").at(-1)).toMatchObject({
        level: "warn",
        dropped_rows: 1,
        dropped_rows_total: 1,
        pending_rows: 3,
      });
    } finally {
      await usage.close(AbortSignal.timeout(2_000));
      await pool.end();
    }
  });

  it("counts and logs a failed background flush, keeping its rows", async () => {
    const { logger, lines } = capturingLogger();
    const pool = await unreachablePool();
    pool.on("error", () => undefined);
    const usage = createUsageRecorder({ pool, logger, flushIntervalMs: 30 });
    try {
      usage.record({ provider: "p", model: "m", promptTokens: 1, completionTokens: 1 });
      await waitFor(() => usage.stats().failedFlushes >= 1);
      expect(usage.stats().pendingRows).toBe(1);
      expect(lines.find((line) => line["msg"] === "could not write usage rows; keeping them to retry")).toMatchObject({ level: "warn", pending_rows: 1 });
    } finally {
      await usage.close(AbortSignal.timeout(2_000));
      await pool.end();
    }
  });

  it("writes what remains on close, and takes no more afterwards", async () => {
    const provider = freshProvider();
    const usage = createUsageRecorder({ pool: database.pool, logger, flushIntervalMs: hour });
    usage.record({ provider, model: "last", promptTokens: 8, completionTokens: 2 });
    await Promise.all([usage.close(), usage.close()]);
    expect(await rowsOf(provider)).toEqual([{ model: "last", requests: 1, prompt_tokens: "8", completion_tokens: "2" }]);
    usage.record({ provider, model: "late", promptTokens: 1, completionTokens: 1 });
    expect(usage.stats()).toEqual({ pendingRows: 0, droppedRows: 1, failedFlushes: 0 });
    await usage.flush(never);
    expect(await rowsOf(provider)).toHaveLength(1);
  });

  it("logs the rows it could not write at close instead of throwing", async () => {
    const { logger, lines } = capturingLogger();
    const pool = await unreachablePool();
    pool.on("error", () => undefined);
    const usage = createUsageRecorder({ pool, logger, flushIntervalMs: hour });
    usage.record({ provider: "p", model: "lost", promptTokens: 1, completionTokens: 1 });
    await expect(usage.close(AbortSignal.timeout(2_000))).resolves.toBeUndefined();
    await pool.end();
    expect(lines.find((line) => line["msg"] === "could not write the last usage rows at shutdown; they are lost")).toMatchObject({ level: "error", lost_rows: 1 });
  });

  it("writes each row once when flushes overlap", async () => {
    const provider = freshProvider();
    const usage = recorder();
    for (let index = 0; index < 10; index += 1) usage.record({ provider, model: `m${index}`, promptTokens: 1, completionTokens: 1 });
    await Promise.all([usage.flush(never), usage.flush(never), usage.flush(never)]);
    expect(await rowsOf(provider)).toHaveLength(10);
  });
});

describe("createUsageRecorder on the embedded PGlite", () => {
  let database: Database;
  beforeAll(async () => {
    database = await openDatabase({ logger: createLogger({ service: "test", level: "silent" }), service: "usage-recorder-test" });
    await runMigrations(database.pool, { scope: brokerMigrationScope, migrations: brokerMigrations });
  }, 60_000);
  afterAll(async () => {
    await database.close();
  });

  it("records, flushes and reports through the same SQL", async () => {
    const usage = createUsageRecorder({ pool: database.pool, logger: createLogger({ service: "test", level: "silent" }), flushIntervalMs: hour });
    usage.record({ provider: "local", model: "sim", promptTokens: 4, completionTokens: 6 });
    usage.record({ provider: "local", model: "sim", promptTokens: 4, completionTokens: 6 });
    await usage.close();
    expect(await usage.report({ provider: "local", since: new Date(Date.now() - hour) }, never)).toEqual([
      { provider: "local", model: "sim", requests: 2, promptTokens: 8, completionTokens: 12 },
    ]);
  });
});
