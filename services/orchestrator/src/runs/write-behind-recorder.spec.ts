import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { openTestDatabase, runMigrations, type Database } from "@vlinders/database";
import { AgentStatus } from "@vlinders/proto";
import { createLogger } from "@vlinders/service-runtime";
import { orchestratorMigrations, orchestratorMigrationScope } from "./migrations";
import { createPostgresRunStore, type PostgresRunStore } from "./postgres-run-store";
import type { ToolCallRecord } from "./run-records";
import { createWriteBehindRecorder } from "./write-behind-recorder";

const live = (): AbortSignal => AbortSignal.timeout(10_000);

/** Against the machine's PostgreSQL, through the real run store. */
describe("the write-behind run recorder", () => {
  let database: Database;
  let store: PostgresRunStore;
  const logLines: string[] = [];
  const logger = createLogger({
    service: "test",
    level: "info",
    destination: new Writable({
      write(chunk: Buffer, _encoding, done) {
        logLines.push(chunk.toString());
        done();
      },
    }),
  });

  beforeAll(async () => {
    database = await openTestDatabase({ logger: createLogger({ service: "test", level: "silent" }), service: "write-behind-test" });
    await runMigrations(database.pool, { scope: orchestratorMigrationScope, migrations: orchestratorMigrations });
    store = createPostgresRunStore({ pool: database.pool, owner: `write-behind-${process.pid}`, logger: createLogger({ service: "test", level: "silent" }) });
  });

  afterAll(async () => {
    await store.close();
    await database.close();
  });

  const call = (runId: string, index: number, overrides: Partial<ToolCallRecord> = {}): ToolCallRecord => ({
    id: `call-${String(index).padStart(2, "0")}`,
    runId,
    iteration: 1,
    toolName: "read_file",
    argumentsJson: JSON.stringify({ path: `file-${index}.txt` }),
    resultJson: "{}",
    success: true,
    durationMs: 1,
    startedAt: new Date(),
    finishedAt: new Date(),
    ...overrides,
  });
  const start = async (recorder: ReturnType<typeof createWriteBehindRecorder>) => {
    const runId = `run-${randomUUID()}`;
    await recorder.started({ runId, agentType: "explore", parentRunId: "", userId: "u", instruction: "x", model: "", workspaceId: "w", startedAt: new Date() }, live());
    return runId;
  };
  const finish = (recorder: ReturnType<typeof createWriteBehindRecorder>, runId: string) =>
    recorder.finished({ runId, status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", response: "done", iterations: 3, usage: undefined, error: "", finishedAt: new Date() }, live());

  it("has every tool call and the last progress on record once the finish is", async () => {
    const recorder = createWriteBehindRecorder(store, logger);
    const runId = await start(recorder);
    for (let index = 0; index < 20; index += 1) await recorder.toolCalled(call(runId, index), live());
    await recorder.progressed(runId, 3, undefined, live());
    await finish(recorder, runId);
    expect((await store.listToolCalls(runId, live())).map((record) => record.id)).toEqual(Array.from({ length: 20 }, (_, index) => `call-${String(index).padStart(2, "0")}`));
    expect(await store.get(runId, live())).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, iterations: 3 });
  });

  it("still records the finish when a write behind failed, and says so in the log", async () => {
    const recorder = createWriteBehindRecorder(store, logger);
    const runId = await start(recorder);
    await recorder.toolCalled(call(runId, 1), live());
    // PostgreSQL refuses an invalid timestamp: a real failed write in this run's queue.
    await recorder.toolCalled(call(runId, 2, { startedAt: new Date(Number.NaN) }), live());
    await recorder.toolCalled(call(runId, 3), live());
    await finish(recorder, runId);
    expect(await store.get(runId, live())).toMatchObject({ status: AgentStatus.AGENT_STATUS_SUCCEEDED });
    expect((await store.listToolCalls(runId, live())).map((record) => record.id)).toEqual(["call-01", "call-03"]);
    expect(logLines.join("")).toMatch(/run recorded with some of its progress or tool calls missing/);
  });
});
