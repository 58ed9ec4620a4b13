import { Worker } from "node:worker_threads";
import type { Logger } from "@vlinders/service-runtime";

/** PGlite answering the PostgreSQL wire protocol on 127.0.0.1, from a worker thread of this process. */
export interface EmbeddedPostgres {
  port: number;
  /** Stops the socket server and closes PGlite (flushing PGLITE_DATA_DIR), then ends the thread. */
  stop(): Promise<void>;
}

// Plain JavaScript, run with `eval`: the same code whether this package runs from its sources (jest)
// or from dist. It loads PGlite by absolute path, so it does not depend on the working directory.
const workerSource = `
const { parentPort, workerData } = require("node:worker_threads");
const { PGlite } = require(workerData.pglitePath);
const { PGLiteSocketServer } = require(workerData.pgliteSocketPath);
(async () => {
  const db = workerData.dataDir ? await PGlite.create({ dataDir: workerData.dataDir }) : await PGlite.create();
  const server = new PGLiteSocketServer({ db, host: "127.0.0.1", port: 0, maxConnections: workerData.maxConnections });
  await server.start();
  parentPort.on("message", (message) => {
    if (message !== "stop") return;
    server.stop().then(() => db.close()).then(
      () => parentPort.postMessage({ stopped: true }),
      (error) => parentPort.postMessage({ stopped: true, error: String((error && error.stack) || error) }),
    );
  });
  parentPort.postMessage({ listening: server.getServerConn() });
})().catch((error) => parentPort.postMessage({ failed: String((error && error.stack) || error) }));
`;

type WorkerMessage = { listening: string } | { failed: string } | { stopped: true; error?: string };

/**
 * Starts PGlite with pglite-socket in a worker thread. PGlite runs each statement synchronously;
 * on a thread of its own, a long statement does not freeze this thread's event loop (gRPC calls,
 * health checks, aborts). It also keeps PGlite's dynamic `import()`s out of module loaders that do
 * not support them, such as jest's.
 */
export async function startEmbeddedPostgres(options: { dataDir?: string | undefined; maxConnections: number; logger: Logger }): Promise<EmbeddedPostgres> {
  const worker = new Worker(workerSource, {
    eval: true,
    workerData: {
      pglitePath: require.resolve("@electric-sql/pglite"),
      pgliteSocketPath: require.resolve("@electric-sql/pglite-socket"),
      dataDir: options.dataDir,
      maxConnections: options.maxConnections,
    },
  });
  let stopping = false;
  worker.on("error", (error) => options.logger.error({ err: error }, "the embedded PGlite thread failed"));
  worker.on("exit", (code) => {
    if (!stopping) options.logger.error({ exit_code: code }, "the embedded PGlite thread exited; queries will fail until the service restarts");
  });

  const first = await nextMessage(worker);
  if (!("listening" in first)) {
    stopping = true;
    await worker.terminate();
    throw new Error(`the embedded PGlite did not start: ${"failed" in first ? first.failed : "it stopped at once"}`);
  }
  const port = Number(first.listening.slice(first.listening.lastIndexOf(":") + 1));

  let stopped: Promise<void> | undefined;
  return {
    port,
    stop: () =>
      (stopped ??= (async () => {
        stopping = true;
        const done = nextMessage(worker);
        worker.postMessage("stop");
        const answer = await done;
        await worker.terminate();
        if ("error" in answer && answer.error !== undefined) throw new Error(`the embedded PGlite did not close cleanly: ${answer.error}`);
      })()),
  };
}

function nextMessage(worker: Worker): Promise<WorkerMessage> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: WorkerMessage): void => {
      cleanup();
      resolve(message);
    };
    const onError = (error: Error): void => {
      cleanup();
      reject(error);
    };
    const onExit = (code: number): void => {
      cleanup();
      reject(new Error(`the embedded PGlite thread exited with code ${code}`));
    };
    const cleanup = (): void => {
      worker.off("message", onMessage);
      worker.off("error", onError);
      worker.off("exit", onExit);
    };
    worker.on("message", onMessage);
    worker.on("error", onError);
    worker.on("exit", onExit);
  });
}
