import { randomUUID } from "node:crypto";
import { AgentEvent, AgentServiceDefinition, AgentStatus, withEncodedResponses, type RunAgentRequest } from "@vlinders/proto";
import { linkSignals } from "@vlinders/service-runtime";
import type { ServiceImplementation } from "nice-grpc";
import { ClientError, ServerError, Status } from "nice-grpc-common";
import type { AdmissionController } from "./admission/admission-controller";
import type { AgentRunner, RunOutcome } from "./agents/agent-loop";
import { agentTypeInfo, type AgentTypeCatalog } from "./agents/agent-types";
import { runChatAgent, type ChatAgentDependencies } from "./agents/chat-agent";
import { streamRun } from "./agents/event-stream";
import type { ActiveRuns, RunCanceller } from "./runs/active-runs";
import type { RunStore } from "./runs/run-records";

export interface AgentServiceDependencies extends ChatAgentDependencies {
  runner: AgentRunner;
  catalog: AgentTypeCatalog;
  store: RunStore;
  activeRuns: ActiveRuns;
  canceller: RunCanceller;
  admission: AdmissionController;
}

/** AgentService with StreamAgent's events yielded encoded (same wire format). */
export const OrchestratorAgentServiceDefinition = withEncodedResponses(AgentServiceDefinition, "streamAgent");

const runIdPattern = /^[0-9a-f-]{36}$/;

/** How a call to the tool-runner fails when it is down or overloaded. */
const toolRunnerOutages = new Set([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED]);

function requireRunId(runId: string): void {
  if (runId === "") throw new ServerError(Status.INVALID_ARGUMENT, "run_id: is required");
  if (!runIdPattern.test(runId)) throw new ServerError(Status.INVALID_ARGUMENT, `run_id: ${JSON.stringify(runId.slice(0, 80))} is not a run id`);
}

/**
 * AgentService. `chat` is a relay of one model call (the public Chat's path): it is neither queued
 * nor recorded, so that a chat pays no database round trip before its first token. Every other
 * agent type is admitted (fair queue), registered for CancelAgent, run by the agent loop and
 * recorded in PostgreSQL.
 */
export function createAgentService(deps: AgentServiceDependencies): ServiceImplementation<typeof OrchestratorAgentServiceDefinition> {
  /** Runs of this replica waiting for a slot, by id (their agent type): GetAgent reports them queued. */
  const queuedRunTypes = new Map<string, string>();

  /**
   * Starts an admitted, registered run: a slot from admission (checked first: a bad request must
   * not wait for a slot to be told so), a run id CancelAgent can reach, and one signal from the call
   * (cancel, deadline, shutdown) and CancelAgent. `end` gives all of it back.
   */
  async function startRun(
    request: RunAgentRequest,
    callSignal: AbortSignal,
    onQueued?: (runId: string, queuedRuns: number) => void,
  ): Promise<{ runId: string; signal: AbortSignal; end(): void }> {
    deps.catalog.require(request.agentType);
    // Registered before it is admitted: a run waiting in the queue can be cancelled by its id too.
    const runId = randomUUID();
    const cancel = new AbortController();
    const unregister = deps.activeRuns.register(runId, cancel);
    const { signal, dispose } = linkSignals(callSignal, cancel.signal);
    let ticket;
    try {
      ticket = await deps.admission.admit(request.userId, signal, (queuedRuns) => {
        queuedRunTypes.set(runId, request.agentType);
        onQueued?.(runId, queuedRuns);
      });
    } catch (error: unknown) {
      dispose();
      unregister();
      throw error;
    } finally {
      queuedRunTypes.delete(runId);
    }
    return {
      runId,
      signal,
      end() {
        dispose();
        unregister();
        ticket.release();
      },
    };
  }

  return {
    async *streamAgent(request, context) {
      if (request.agentType === "") throw new ServerError(Status.INVALID_ARGUMENT, 'agent_type: is required (e.g. "chat", "explore")');
      if (request.agentType === "chat") {
        yield* runChatAgent(request, randomUUID(), deps, context.signal, deps.catalog.require("chat"));
        return;
      }
      // Called within startRun's first step when the run has to wait: told before the wait begins.
      let queuedEvent: Uint8Array | undefined;
      const starting = startRun(request, context.signal, (runId, queuedRuns) => {
        queuedEvent = AgentEvent.encode({ runId, event: { $case: "runQueued", value: { agentType: request.agentType, queuedRuns } } }).finish();
      });
      let run: Awaited<typeof starting> | undefined;
      try {
        if (queuedEvent) yield queuedEvent;
        run = await starting;
      } finally {
        // The consumer left while the run waited: its slot and registration are given back once
        // admission settles (a rejection is nobody's to report then).
        if (run === undefined) void starting.then((started) => started.end(), () => undefined);
      }
      try {
        yield* streamRun((emit) => deps.runner.run(request, { runId: run.runId, parentRunId: "", depth: 0, signal: run.signal, emit }));
      } finally {
        run.end();
      }
    },

    async runAgent(request, context) {
      if (request.agentType === "") throw new ServerError(Status.INVALID_ARGUMENT, 'agent_type: is required (e.g. "chat", "explore")');
      const run = await startRun(request, context.signal);
      try {
        const { error: _error, ...response }: RunOutcome = await deps.runner.run(request, {
          runId: run.runId,
          parentRunId: "",
          depth: 0,
          signal: run.signal,
          emit: () => {},
          streamModelEvents: false,
        });
        return response;
      } finally {
        run.end();
      }
    },

    async getAgent(request, context) {
      requireRunId(request.runId);
      const run = await deps.store.get(request.runId, context.signal);
      if (run) return run;
      // Not started yet: it is recorded once it has a slot.
      const queuedType = queuedRunTypes.get(request.runId);
      if (queuedType !== undefined) {
        return { runId: request.runId, agentType: queuedType, status: AgentStatus.AGENT_STATUS_QUEUED, stopReason: "", iterations: 0, response: "", usage: undefined, parentRunId: "", createdAt: undefined, finishedAt: undefined };
      }
      throw new ServerError(Status.NOT_FOUND, `run_id: no run ${request.runId}`);
    },

    async cancelAgent(request, context) {
      requireRunId(request.runId);
      const status = await deps.canceller.cancel(request.runId, request.reason || "cancelled by CancelAgent", context.signal);
      return { status };
    },

    async listAgentTypes(_request, context) {
      const agentTypes = await Promise.all(
        deps.catalog.list().map(async (agentType) => {
          try {
            return agentTypeInfo(agentType, await deps.runner.allowedToolNames(agentType.name, context.signal));
          } catch (error: unknown) {
            // Without the tool-runner the types are still listed, with the tools agents.yaml names
            // ("*" for every tool): what a caller needs to pick one does not depend on it.
            // Down (a status), or hung: the shared listing is bounded by its own timeout, an abort.
            const outage = error instanceof ClientError ? toolRunnerOutages.has(error.code) : (error as { name?: unknown } | null)?.name === "AbortError";
            if (context.signal.aborted || !outage) throw error;
            return agentTypeInfo(agentType, agentType.tools === "*" ? ["*"] : agentType.tools);
          }
        }),
      );
      return { agentTypes };
    },

    async getAgentStats(request, context) {
      if (request.agentType !== "") deps.catalog.require(request.agentType);
      const stats = await deps.store.stats(request.agentType === "" ? undefined : request.agentType, context.signal);
      const admission = deps.admission.stats();
      return {
        stats,
        admission: {
          activeRuns: admission.active,
          queuedRuns: admission.queued,
          maxConcurrentRuns: admission.maxConcurrentRuns,
          maxQueuedRuns: admission.maxQueuedRuns,
        },
      };
    },
  };
}
