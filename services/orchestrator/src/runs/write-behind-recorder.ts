import type { Logger } from "@vlinders/service-runtime";
import type { RunRecorder } from "./run-records";

/**
 * A RunRecorder that lets a run go on while its progress and tool calls are written, in order, and
 * waits for all of them before it writes how the run finished. A run's start and finish stay
 * awaited: GetAgent finds a run as soon as its caller has its id, and a run whose caller heard it
 * end is on record. What is written behind is the middle — one write per iteration and per tool
 * call — which otherwise holds every run up on the database's round trips (with 100 runs at once,
 * on a queue of them).
 *
 * A write behind that fails is logged, and the finish is still written: a run left `running`
 * because one tool call could not be recorded would lose more than that row.
 */
export function createWriteBehindRecorder(store: RunRecorder, logger: Logger): RunRecorder {
  const behind = new Map<string, { tail: Promise<void>; failures: number }>();

  function enqueue(runId: string, write: () => Promise<void>): Promise<void> {
    const queue = behind.get(runId) ?? { tail: Promise.resolve(), failures: 0 };
    behind.set(runId, queue);
    queue.tail = queue.tail.then(write).catch((error: unknown) => {
      queue.failures += 1;
      logger.error({ err: error, runId }, "a run's progress or tool call could not be recorded");
    });
    return Promise.resolve();
  }

  return {
    started: (run, signal) => store.started(run, signal),
    // The caller's deadline signal is for an awaited write: a write behind gets its own when it runs.
    progressed: (runId, iterations, usage) => enqueue(runId, () => store.progressed(runId, iterations, usage)),
    toolCalled: (call) => enqueue(call.runId, () => store.toolCalled(call)),
    async finished(run, signal) {
      const queue = behind.get(run.runId);
      behind.delete(run.runId);
      if (queue) await queue.tail;
      await store.finished(run, signal);
      if (queue && queue.failures > 0) logger.error({ runId: run.runId, missing: queue.failures }, "run recorded with some of its progress or tool calls missing");
    },
  };
}
