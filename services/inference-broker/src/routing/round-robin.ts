import { ServerError, Status } from "nice-grpc-common";
import type { ModelEntry, WorkerEndpoint } from "../registry/model-registry";

/** Picks the worker for a request. */
export interface WorkerPicker {
  pick(model: ModelEntry): WorkerEndpoint;
}

/** Rotates through a model's workers, one counter per model. */
export function createRoundRobinPicker(): WorkerPicker {
  const counters = new Map<string, number>();
  return {
    pick(model) {
      const count = counters.get(model.id) ?? 0;
      counters.set(model.id, (count + 1) % Number.MAX_SAFE_INTEGER);
      const worker = model.workers[count % Math.max(1, model.workers.length)];
      if (!worker) throw new ServerError(Status.UNAVAILABLE, `model: "${model.id}" has no worker`);
      return worker;
    },
  };
}
