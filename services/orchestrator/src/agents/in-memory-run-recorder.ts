import type { Usage } from "@vlinders/proto";
import type { RunFinishedRecord, RunRecorder, RunStartedRecord, ToolCallRecord } from "../runs/run-records";

/** A run as the in-memory recorder keeps it. */
export interface RecordedRun {
  started: RunStartedRecord;
  iterations: number;
  usage: Usage | undefined;
  toolCalls: ToolCallRecord[];
  finished: RunFinishedRecord | undefined;
}

/** A RunRecorder that keeps runs in a Map: for tests and tools, not for the service (nothing survives a restart). */
export interface InMemoryRunRecorder extends RunRecorder {
  readonly runs: ReadonlyMap<string, RecordedRun>;
  /** Runs whose parent is `runId`, in the order they started. */
  children(runId: string): RecordedRun[];
}

export function createInMemoryRunRecorder(): InMemoryRunRecorder {
  const runs = new Map<string, RecordedRun>();
  const find = (runId: string): RecordedRun => {
    const run = runs.get(runId);
    if (!run) throw new Error(`run ${runId} was never started`);
    return run;
  };
  return {
    runs,
    children: (runId) => [...runs.values()].filter((run) => run.started.parentRunId === runId),
    async started(run) {
      if (runs.has(run.runId)) throw new Error(`run ${run.runId} was started twice`);
      runs.set(run.runId, { started: run, iterations: 0, usage: undefined, toolCalls: [], finished: undefined });
    },
    async progressed(runId, iterations, usage) {
      Object.assign(find(runId), { iterations, usage });
    },
    async toolCalled(call) {
      find(call.runId).toolCalls.push(call);
    },
    async finished(run) {
      Object.assign(find(run.runId), { finished: run, iterations: run.iterations, usage: run.usage });
    },
  };
}
