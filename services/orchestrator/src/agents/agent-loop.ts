import { randomUUID } from "node:crypto";
import { validateMessages, validateSampling, validateTools } from "@vlinders/chat-validation";
import {
  AgentEvent,
  AgentStatus,
  ChatEvent,
  modelAgentEventEncoder,
  FinishReason,
  ToolResult,
  type ChatMessage,
  type ContextServiceClient,
  type RunAgentRequest,
  type RunAgentResponse,
  type ToolCall,
  type ToolDefinition,
  type ToolServiceClient,
  type Usage,
} from "@vlinders/proto";
import { CallDeadlineError, deadlineOf, linkSignals, ServiceShutdownError, startSignalSpan, unbindDeadline, type DeadlineOptions, type Logger, type SignalSpan } from "@vlinders/service-runtime";
import type { Client } from "nice-grpc";
import { ClientError, ServerError, Status } from "nice-grpc-common";
import type { HookRunner } from "../hooks/hook-runner";
import type { HookPayload } from "../hooks/hook-types";
import type { PluginToolRegistry } from "../plugins/plugin-tools";
import type { ActiveRuns } from "../runs/active-runs";
import { interruptedStopReason, type RunFinishedRecord, type RunRecorder, type ToolCallRecord } from "../runs/run-records";
import { spawnSubagentsToolName, type AgentType, type AgentTypeCatalog, type ModelPrice } from "./agent-types";
import type { RelayInferenceServiceDefinition } from "./chat-agent";
import { untilAborted } from "./abortable";
import { createRunBudget, type RunBudget } from "./run-budget";
import { createContextConversation, createLocalConversation, type RunConversation } from "./run-conversation";
import { callSignature, createStuckDetector } from "./stuck-detector";

/** Limits of the runner as a whole (the per-type ones are in agents.yaml). */
export interface AgentRunnerLimits {
  /** Deepest nesting of sub-agents: a top-level run is depth 0, its sub-agents depth 1. Default 2. */
  readonly maxSubagentDepth: number;
  /** Most tasks one spawn_subagents call may start. Default 8. */
  readonly maxSubagentTasks: number;
  /** Deadline of a ListTools call to the tool-runner. Default 10 s. */
  readonly listToolsDeadlineMs: number;
  /** Deadline of each write to the RunRecorder. Default 10 s. */
  readonly recordDeadlineMs: number;
  /** timeout_ms of each tool call sent to the tool-runner; 0 uses the tool's default. */
  readonly toolTimeoutMs: number;
  /** Deadline of each call to the context service. Default 30 s (an append may wait for a summary). */
  readonly contextDeadlineMs: number;
  /** Least time between two warnings that the context service failed (one per run would flood the log in an outage). Default 30 s. */
  readonly contextWarningIntervalMs: number;
  /** A run's conversation goes to the context service once it passes this share of its budget. Default 0.5; 0: from the start. */
  readonly contextEngageAtShare: number;
}

export const defaultAgentRunnerLimits: AgentRunnerLimits = {
  maxSubagentDepth: 2,
  maxSubagentTasks: 8,
  listToolsDeadlineMs: 10_000,
  recordDeadlineMs: 10_000,
  toolTimeoutMs: 0,
  contextDeadlineMs: 30_000,
  contextWarningIntervalMs: 30_000,
  contextEngageAtShare: 0.5,
};

export interface AgentRunnerDependencies {
  /** The broker, with Chat events left encoded: the model's events are relayed as they came. */
  readonly inference: Client<typeof RelayInferenceServiceDefinition>;
  /** The tool-runner. */
  readonly tools: ToolServiceClient;
  readonly catalog: AgentTypeCatalog;
  readonly hooks: HookRunner;
  /** Tools the orchestrator runs itself; none when unset. */
  readonly pluginTools?: PluginToolRegistry;
  readonly recorder: RunRecorder;
  readonly logger: Logger;
  /**
   * Where sub-agents are registered while they run, so that CancelAgent reaches a child by its own
   * run id (a parent's own run is registered by whoever started it). Unset: children can be
   * cancelled only with their parent.
   */
  readonly activeRuns?: Pick<ActiveRuns, "register">;
  /**
   * The context service (CONTEXT_ADDRESS): each run's conversation is kept and compacted there.
   * Unset: each run keeps its whole conversation itself.
   */
  readonly context?: ContextServiceClient<DeadlineOptions>;
  readonly limits?: Partial<AgentRunnerLimits>;
}

export interface RunOptions {
  readonly runId: string;
  /** Empty for a top-level run. */
  readonly parentRunId: string;
  /** 0 for a top-level run. */
  readonly depth: number;
  /** The caller's cancel (and the server's shutdown): aborts the model call and running tools. */
  readonly signal: AbortSignal;
  /**
   * Receives each encoded AgentEvent, in order. Awaited: a slow consumer slows the run down rather
   * than piling events up. The model's events are the broker's bytes framed, never re-encoded.
   * `signal` aborts when the run is cancelled or times out: a waiting emit should stop waiting then.
   * The run stops waiting for it then either way, so that a consumer that stopped reading cannot
   * keep a run (and its admission slot) past its cancel or deadline.
   */
  emit(event: Uint8Array, signal: AbortSignal): void | Promise<void>;
  /**
   * False when nobody reads the model's tokens (RunAgent): model calls are then one Complete each
   * and no model_event is emitted; the other events still are. Default true.
   */
  readonly streamModelEvents?: boolean;
}

/** How a run ended: RunAgent's answer, plus why it failed when it did. */
export interface RunOutcome extends RunAgentResponse {
  /** Empty unless the run failed; never contains secrets. */
  readonly error: string;
}

export interface AgentRunner {
  /**
   * Runs an agent to the end. Throws ServerError INVALID_ARGUMENT (field named) for a bad request,
   * before anything is recorded. Cancellation ends it with status CANCELLED ("cancelled"), its
   * deadline with FAILED ("timeout"): both resolve. A failure of the model call, the tool-runner or
   * the recorder is recorded (FAILED, "error"), emitted as run_finished and then thrown, so that a
   * stream ends with the downstream status (e.g. the broker's INVALID_ARGUMENT for a long prompt).
   */
  run(request: RunAgentRequest, options: RunOptions): Promise<RunOutcome>;
  /** The names of the tools an agent type may call (the tool-runner's and the plugins'), for ListAgentTypes. */
  allowedToolNames(agentTypeName: string, signal: AbortSignal): Promise<string[]>;
}

/** What the loop needs beyond RunOptions; children get their parent's budget and event sink. */
interface InternalRunOptions {
  readonly runId: string;
  readonly parentRunId: string;
  readonly depth: number;
  readonly signal: AbortSignal;
  /** Hands an event over; rejects with the signal's reason when `signal` aborts before the consumer took it. */
  readonly send: (event: Uint8Array, isModelEvent: boolean, signal: AbortSignal) => Promise<void>;
  readonly budget: RunBudget | undefined;
  /** False: nobody reads the model's tokens, so each model call is one Complete instead of a stream. */
  readonly streamModelEvents: boolean;
}

/** A run as its loop sees it; `messages` are its first ones (system prompt, history, instruction). */
interface LoopRun {
  readonly request: RunAgentRequest;
  readonly options: InternalRunOptions;
  readonly agentType: AgentType;
  readonly messages: readonly ChatMessage[];
  readonly maxIterations: number;
  readonly budget: RunBudget;
  readonly signal: AbortSignal;
  readonly tools: ToolDefinition[];
}

/** What the model said in one call. */
interface ModelTurn {
  /** The model that answered, as the broker resolved it (an alias or "" becomes its id). */
  model: string;
  content: string;
  toolCalls: ToolCall[];
  finishReason: FinishReason;
  usage: Usage | undefined;
}

/** Why the loop stopped; status and stop reason as recorded. */
interface Stop {
  readonly status: AgentStatus;
  readonly stopReason: string;
  readonly error: string;
}

const finishStops: Record<FinishReason, Stop> = {
  [FinishReason.FINISH_REASON_UNSPECIFIED]: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", error: "" },
  [FinishReason.FINISH_REASON_STOP]: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", error: "" },
  // A cut answer is still the answer (as the chat agent has always said); the stop reason tells.
  [FinishReason.FINISH_REASON_LENGTH]: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "max_tokens", error: "" },
  [FinishReason.FINISH_REASON_TOOL_CALLS]: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "tool_calls", error: "" },
  [FinishReason.FINISH_REASON_ABORT]: { status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "aborted_by_worker", error: "the worker aborted the model call" },
  [FinishReason.FINISH_REASON_CONTENT_FILTER]: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "content_filter", error: "" },
  [FinishReason.UNRECOGNIZED]: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", error: "" },
};

/** Attempts at writing a run's finished record before giving up on it. */
const finishedRecordAttempts = 3;

const emptyUsage = (): Usage => ({ promptTokens: 0, completionTokens: 0, totalTokens: 0, cachedPromptTokens: 0 });

/** Builds the agent loop over the broker, the tool-runner, the agent types, hooks and the recorder. */
export function createAgentRunner(deps: AgentRunnerDependencies): AgentRunner {
  const limits: AgentRunnerLimits = { ...defaultAgentRunnerLimits, ...deps.limits };
  const { logger, recorder } = deps;
  const recordSignal = () => AbortSignal.timeout(limits.recordDeadlineMs);

  /**
   * Writes a run's finished record, retried a few times: without it the run stays `running` until
   * the sweeper finds it. Throws the last error when every attempt failed (after logging it); the
   * run's outcome stands either way, only its record is missing.
   */
  async function recordFinished(record: RunFinishedRecord): Promise<void> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await recorder.finished(record, recordSignal());
        return;
      } catch (error: unknown) {
        if (attempt >= finishedRecordAttempts) {
          logger.error({ err: error, runId: record.runId, attempts: attempt }, "could not record the finished run");
          throw error;
        }
        logger.warn({ err: error, runId: record.runId, attempt }, "recording the finished run failed; trying again");
        await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
      }
    }
  }

  // In an outage of the context service every run falls back at once: one warning per interval says so.
  let lastContextWarningAt = Number.NEGATIVE_INFINITY;
  let contextWarningsSuppressed = 0;
  function warnContextFallback(error: unknown, runId: string, agentType: string): void {
    const now = performance.now();
    if (now - lastContextWarningAt < limits.contextWarningIntervalMs) {
      contextWarningsSuppressed += 1;
      return;
    }
    logger.warn(
      { err: error, runId, agentType, similarWarningsSuppressed: contextWarningsSuppressed },
      "the context service failed: the run goes on with its own messages, uncompacted",
    );
    lastContextWarningAt = now;
    contextWarningsSuppressed = 0;
  }

  /** Where a run keeps its conversation: the context service when there is one, else the run itself. */
  function conversationOf(run: { runId: string; agentType: AgentType; model: string; messages: readonly ChatMessage[]; send: (event: AgentEvent["event"]) => Promise<void> }): RunConversation {
    if (!deps.context) return createLocalConversation(run.messages);
    return createContextConversation(run.messages, {
      client: deps.context,
      conversationId: run.runId,
      model: run.model,
      budgetTokens: run.agentType.contextBudgetTokens,
      deadlineMs: limits.contextDeadlineMs,
      engageAtShare: limits.contextEngageAtShare,
      onCompaction: (compaction) =>
        run.send({ $case: "contextCompacted", value: { tokensBefore: compaction.tokensBefore, tokensAfter: compaction.tokensAfter, stage: compaction.stage } }),
      onFallback: (error) => warnContextFallback(error, run.runId, run.agentType.name),
    });
  }

  // ListTools per tool-runner agent type, dropped whenever the catalog changes (a reload may change
  // what a type may call). A failed listing is not kept: the next run asks again.
  let toolCacheVersion = -1;
  const toolCache = new Map<string, Promise<ToolDefinition[]>>();

  function runnerTools(agentType: AgentType, signal: AbortSignal): Promise<ToolDefinition[]> {
    if (Array.isArray(agentType.tools) && agentType.tools.length === 0) return Promise.resolve([]);
    if (toolCacheVersion !== deps.catalog.version) {
      toolCache.clear();
      toolCacheVersion = deps.catalog.version;
    }
    const key = agentType.toolAgentType;
    let listing = toolCache.get(key);
    if (!listing) {
      // A caller cancelled already starts nothing (its signal's trace context would come aborted).
      if (signal.aborted) return Promise.reject(signal.reason);
      // Shared by every run that asks while it is in flight, so only its own deadline may end it:
      // with the first caller's signal, that caller's cancel would fail all the others. A link to
      // the caller's signal disposed at once keeps its trace context (the call stays in the first
      // caller's trace) and drops its cancel, and its deadline.
      const traced = linkSignals(signal);
      traced.dispose();
      unbindDeadline(traced.signal);
      const { signal: callSignal, dispose } = linkSignals(traced.signal, AbortSignal.timeout(limits.listToolsDeadlineMs));
      listing = deps.tools
        .listTools({ agentType: agentType.toolAgentType }, { signal: callSignal })
        .then((response) => response.tools.map((tool) => ({ name: tool.name, description: tool.description, parametersJsonSchema: tool.parametersJsonSchema })))
        .finally(dispose);
      toolCache.set(key, listing);
      listing.catch(() => toolCache.delete(key));
    }
    // A type registered in code may narrow the list of the type it borrows its permissions from.
    const narrowTo = agentType.tools === "*" ? undefined : new Set(agentType.tools);
    // Each caller stops waiting on its own cancel; the shared listing goes on for the others.
    return untilAborted(listing, signal).then((tools) => (narrowTo ? tools.filter((tool) => narrowTo.has(tool.name)) : tools));
  }

  function pluginToolsOf(agentType: AgentType): ToolDefinition[] {
    // A tool registered for every type goes to those that may use any tool, or name it in their
    // tools list: a read-only type listing its tools must not get a plugin that writes. A tool
    // registered for named types goes to those, as its author decided.
    const { tools } = agentType;
    return (deps.pluginTools?.forAgentType(agentType.name) ?? [])
      .filter((tool) => tool.agentTypes !== "*" || tools === "*" || tools.includes(tool.definition.name))
      .map((tool) => tool.definition);
  }

  function spawnToolDefinition(agentType: AgentType): ToolDefinition {
    return {
      name: spawnSubagentsToolName,
      description:
        "Starts sub-agents that work in parallel, each on its own task in the same workspace, and returns their answers " +
        "(or errors) in the order of the tasks. Give each a complete, self-contained instruction.",
      parametersJsonSchema: JSON.stringify({
        type: "object",
        properties: {
          tasks: {
            type: "array",
            minItems: 1,
            maxItems: limits.maxSubagentTasks,
            items: {
              type: "object",
              properties: { agent_type: { type: "string", enum: agentType.subagents }, instruction: { type: "string" } },
              required: ["agent_type", "instruction"],
            },
          },
        },
        required: ["tasks"],
      }),
    };
  }

  async function runInternal(request: RunAgentRequest, options: InternalRunOptions): Promise<RunOutcome> {
    const agentType = deps.catalog.require(request.agentType);
    validateMessages(request.history, "history");
    validateTools(request.tools);
    validateSampling(request.sampling);
    const overrides = request.overrides;
    const systemPrompt = overrides?.systemPrompt ? overrides.systemPrompt : agentType.systemPrompt;
    const messages: ChatMessage[] = [];
    if (systemPrompt !== "") messages.push(message("system", systemPrompt));
    messages.push(...request.history);
    if (request.instruction !== "") messages.push(message("user", request.instruction));
    if (request.history.length === 0 && request.instruction === "") {
      throw new ServerError(Status.INVALID_ARGUMENT, "instruction: is required when history is empty");
    }
    // Overrides may only lower the agent type's limits: one above the configured value is capped to
    // it, so a caller cannot buy a run more iterations, tokens or time than agents.yaml allows.
    const maxIterations = capped(overrides?.maxIterations, agentType.maxIterations);
    // Sub-agents draw from their parent's pool; a top-level run opens one, with the overrides.
    const budget =
      options.budget ??
      createRunBudget({
        maxTokens: capped(overrides?.maxTokens, agentType.budgets.maxTokens),
        timeoutMs: capped(overrides?.timeoutMs, agentType.budgets.timeoutMs),
        maxToolCalls: agentType.budgets.maxToolCalls,
        maxCostUsd: agentType.budgets.maxCostUsd,
      });
    // The run's span; every call of the run is made with (a signal linked from) its signal, so one trace holds them.
    const runSpan = startSignalSpan("run_agent", options.signal, { agent_type: agentType.name, run_id: options.runId, parent_run_id: options.parentRunId, depth: options.depth });
    const { signal, dispose } = linkSignals(runSpan.signal, budget.deadline);
    try {
      const ownTools = [
        ...(await runnerTools(agentType, signal)),
        ...pluginToolsOf(agentType),
        ...(agentType.subagents.length > 0 ? [spawnToolDefinition(agentType)] : []),
      ];
      const ownNames = new Set(ownTools.map((tool) => tool.name));
      request.tools.forEach((tool, index) => {
        if (ownNames.has(tool.name)) {
          throw new ServerError(Status.INVALID_ARGUMENT, `tools[${index}].name: "${tool.name}" is a tool of agent type "${agentType.name}" already`);
        }
      });
      if (ownTools.length > 0 && request.workspaceId === "") {
        throw new ServerError(Status.INVALID_ARGUMENT, `workspace_id: is required for agent type "${agentType.name}" (its tools act on a workspace)`);
      }
      const outcome = await loop({ request, options, agentType, messages, maxIterations, budget, signal, tools: [...ownTools, ...request.tools] });
      runSpan.span.setAttributes({ status: statusNames[outcome.status] ?? "failed", stop_reason: outcome.stopReason, iterations: outcome.iterations });
      runSpan.end(outcome.error === "" ? undefined : outcome.error);
      return outcome;
    } catch (error: unknown) {
      runSpan.end(error);
      throw error;
    } finally {
      dispose();
    }
  }

  /** The iterations of a run, in a tool_calling_loop span whose signal they use. */
  async function loop(run: LoopRun): Promise<RunOutcome> {
    const loopSpan = startSignalSpan("tool_calling_loop", run.signal, { run_id: run.options.runId, max_iterations: run.maxIterations });
    try {
      const outcome = await iterate({ ...run, signal: loopSpan.signal });
      loopSpan.span.setAttribute("iterations", outcome.iterations);
      loopSpan.end();
      return outcome;
    } catch (error: unknown) {
      loopSpan.end(error);
      throw error;
    }
  }

  async function iterate(run: LoopRun): Promise<RunOutcome> {
    const { request, options, agentType, budget, signal } = run;
    const { runId } = options;
    const model = request.model || agentType.model;
    const callerTools = new Set(request.tools.map((tool) => tool.name));
    const offeredTools = new Set(run.tools.map((tool) => tool.name));
    const usage = emptyUsage();
    const toolCalls: ToolCall[] = [];
    const stuck = createStuckDetector();
    let iterations = 0;
    let response = "";
    const send = (event: AgentEvent["event"]) => options.send(AgentEvent.encode({ runId, event }).finish(), false, signal);
    // Tool-call ids as recorded: unique within the run (the store keys them by run and id), see recordId.
    const recordedCallIds = new Set<string>();
    const conversation = conversationOf({ runId, agentType, model, messages: run.messages, send });
    const hookPayload = (event: HookPayload["event"], extra: Partial<HookPayload> = {}): HookPayload => ({
      event,
      runId,
      parentRunId: options.parentRunId,
      agentType: agentType.name,
      iteration: iterations,
      ...extra,
    });

    await recorder.started(
      {
        runId,
        agentType: agentType.name,
        parentRunId: options.parentRunId,
        userId: request.userId,
        instruction: request.instruction,
        model,
        workspaceId: request.workspaceId,
        startedAt: new Date(),
      },
      recordSignal(),
    );

    // Set once finish has decided the run's outcome: from then on a failure (of the record, of the
    // last event) is that step's, not the run's, so it must not reclassify the run or run on_finish again.
    let finishing = false;
    const finish = async (stop: Stop): Promise<RunOutcome> => {
      if (finishing) throw new Error(`run ${runId} finished twice`);
      // The last turn reaches the context service too, so that the stored conversation is whole.
      if (!signal.aborted) await conversation.flush(signal);
      finishing = true;
      const outcome: RunOutcome = { runId, status: stop.status, stopReason: stop.stopReason, response, toolCalls, iterations, usage, error: stop.error };
      await deps.hooks.notify(
        agentType.hooks.on_finish,
        hookPayload("on_finish", { finish: { status: AgentStatus[stop.status], stopReason: stop.stopReason, response } }),
        // Its own deadline: the run's signal may be the reason the run is finishing.
        AbortSignal.timeout(limits.recordDeadlineMs),
      );
      await recordFinished({ runId, status: stop.status, stopReason: stop.stopReason, response, iterations, usage, error: stop.error, finishedAt: new Date() });
      try {
        await send({ $case: "runFinished", value: { status: stop.status, stopReason: stop.stopReason, response, iterations, usage } });
      } catch (error: unknown) {
        // The caller is gone (a cancelled stream); the run is recorded, which is what matters now.
        if (!signal.aborted) throw error;
      }
      return outcome;
    };

    try {
      await send({ $case: "runStarted", value: { agentType: agentType.name, model, parentRunId: options.parentRunId } });
      const encodeModelEvent = modelAgentEventEncoder(runId);
      for (;;) {
        if (iterations >= run.maxIterations) return await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "max_iterations", error: `stopped after ${run.maxIterations} iterations` });
        signal.throwIfAborted();
        iterations += 1;
        const window = await conversation.window(signal);
        const inference = startSignalSpan("vllm_inference", signal, { model, iteration: iterations, run_id: runId });
        let turn: ModelTurn;
        try {
          turn = options.streamModelEvents
            ? await callModel(request, model, window, run.tools, inference.signal, (encoded) => options.send(encodeModelEvent(encoded), true, inference.signal))
            : await completeModel(request, model, window, run.tools, inference.signal);
        } catch (error: unknown) {
          inference.end(error);
          throw error;
        }
        inference.span.setAttributes({
          finish_reason: FinishReason[turn.finishReason] ?? "unknown",
          prompt_tokens: turn.usage?.promptTokens ?? 0,
          completion_tokens: turn.usage?.completionTokens ?? 0,
          tool_calls: turn.toolCalls.length,
        });
        inference.end();
        addUsage(usage, turn.usage);
        budget.addTokens(turn.usage ? turn.usage.totalTokens || turn.usage.promptTokens + turn.usage.completionTokens : 0);
        budget.addCost(costOf(deps.catalog.priceOf(turn.model || model), turn.usage));
        response = turn.content;
        turn.toolCalls.forEach((call, index) => {
          // Some models send no id; the tool message must still answer one.
          if (call.id === "") call.id = `call_${iterations}_${index}`;
        });
        conversation.add({ role: "assistant", content: turn.content, toolCalls: turn.toolCalls, toolCallId: "", name: "" });

        if (turn.toolCalls.length === 0) {
          await recorder.progressed(runId, iterations, usage, recordSignal());
          await deps.hooks.notify(agentType.hooks.on_iteration, hookPayload("on_iteration"), signal);
          return await finish(finishStops[turn.finishReason]);
        }

        const results = await executeToolCalls({ ...run, iteration: iterations, calls: turn.toolCalls, callerTools, offeredTools, recordedCallIds, send, hookPayload });
        toolCalls.push(...turn.toolCalls);
        for (const { call, result } of results) {
          if (result) conversation.add({ role: "tool", content: toolMessageContent(result), toolCalls: [], toolCallId: call.id, name: "" });
        }
        await recorder.progressed(runId, iterations, usage, recordSignal());
        await deps.hooks.notify(agentType.hooks.on_iteration, hookPayload("on_iteration"), signal);

        if (results.some(({ result }) => result === undefined)) {
          // The model called the caller's own functions: the caller runs them and continues the conversation.
          return await finish({ status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "tool_calls", error: "" });
        }
        if (budget.tokensExhausted()) {
          return await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "budget", error: `the run used ${budget.tokensUsed} of its ${budget.limits.maxTokens} tokens` });
        }
        if (budget.costExhausted()) {
          return await finish({
            status: AgentStatus.AGENT_STATUS_FAILED,
            stopReason: "budget",
            error: `the run spent $${budget.costUsd.toFixed(6)} of its $${String(budget.limits.maxCostUsd)} cost budget`,
          });
        }
        if (results.some(({ refusedByBudget }) => refusedByBudget)) {
          return await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "budget", error: `the run used all of its ${budget.limits.maxToolCalls} tool calls` });
        }
        const verdict = stuck.observe({
          signatures: turn.toolCalls.map((call) => callSignature(call.name, call.argumentsJson)),
          allFailed: results.every(({ result }) => result?.success === false),
        });
        if (verdict.kind === "stop") return await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "stuck", error: `the agent was stuck: ${verdict.why}, after being told so` });
        if (verdict.kind === "redirect") {
          logger.info({ runId, agentType: agentType.name, why: verdict.why }, "agent is repeating itself; telling it so");
          // A system note rather than a user message: nobody said it, and the instruction stays the last user turn.
          conversation.add(
            message(
              "system",
              `Note from the agent runner: you are repeating yourself (${verdict.why}). Repeating the same calls will not give ` +
                "a different result. Change your approach, or answer now with what you have found.",
            ),
          );
        }
      }
    } catch (error: unknown) {
      // finish failed after deciding the outcome (e.g. the finished record could not be written): its error is thrown as is.
      if (finishing) throw error;
      if (budget.deadline.aborted) {
        return await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout", error: `the run reached its timeout of ${budget.limits.timeoutMs} ms` });
      }
      // The caller's deadline, inherited by the run's calls: a model or tool call whose own timer
      // fired first fails with DEADLINE_EXCEEDED just before the run's signal aborts. Still a timeout.
      const callerDeadline = deadlineOf(options.signal);
      if (error instanceof ClientError && error.code === Status.DEADLINE_EXCEEDED && callerDeadline !== undefined && Date.now() >= callerDeadline - 50) {
        return await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout", error: "the caller's deadline passed" });
      }
      if (signal.aborted) {
        // Cut off by this orchestrator's shutdown, not cancelled by anyone: what a restart's recovery
        // would record for it, had the process died instead.
        if (signal.reason instanceof ServiceShutdownError) {
          return await finish({ status: AgentStatus.AGENT_STATUS_INTERRUPTED, stopReason: interruptedStopReason, error: "" });
        }
        // The caller's gRPC deadline passed: the run ran out of time, nobody cancelled it.
        if (signal.reason instanceof CallDeadlineError) {
          return await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "timeout", error: signal.reason.message });
        }
        return await finish({ status: AgentStatus.AGENT_STATUS_CANCELLED, stopReason: "cancelled", error: "" });
      }
      const reason = error instanceof Error ? ((error as { details?: string }).details ?? error.message) : String(error);
      logger.warn({ err: error, runId, agentType: agentType.name }, "agent run failed");
      try {
        await finish({ status: AgentStatus.AGENT_STATUS_FAILED, stopReason: "error", error: reason });
      } catch (recordError: unknown) {
        logger.error({ err: recordError, runId }, "could not record the failed run");
      }
      throw error;
    }
  }

  async function callModel(
    request: RunAgentRequest,
    model: string,
    messages: readonly ChatMessage[],
    tools: ToolDefinition[],
    signal: AbortSignal,
    relay: (encoded: Uint8Array) => Promise<void>,
  ): Promise<ModelTurn> {
    const turn: ModelTurn = { model: "", content: "", toolCalls: [], finishReason: FinishReason.FINISH_REASON_UNSPECIFIED, usage: undefined };
    const calls = new Map<number, ToolCall>();
    const events = deps.inference.chat(
      { model, messages: [...messages], tools, sampling: request.sampling, userId: request.userId, sessionId: request.sessionId, bypassCache: request.bypassCache },
      { signal },
    );
    for await (const encoded of events) {
      // Decoded for the loop's own use; relayed as the broker's bytes.
      const event = ChatEvent.decode(encoded);
      if (event.model !== "") turn.model = event.model;
      switch (event.event?.$case) {
        case "contentDelta":
          turn.content += event.event.value;
          break;
        case "toolCallDelta": {
          const delta = event.event.value;
          const call = calls.get(delta.index) ?? { id: "", name: "", argumentsJson: "" };
          calls.set(delta.index, call);
          if (delta.id !== "") call.id = delta.id;
          if (delta.name !== "") call.name = delta.name;
          call.argumentsJson += delta.argumentsJsonDelta;
          break;
        }
        case "finishReason":
          turn.finishReason = event.event.value;
          break;
        case "usage":
          turn.usage = event.event.value;
          break;
        default:
          break;
      }
      await relay(encoded);
    }
    turn.toolCalls = [...calls.entries()].sort(([a], [b]) => a - b).map(([, call]) => call);
    return turn;
  }

  /**
   * A model call whose tokens nobody reads (RunAgent, sub-agents): one answer instead of a message
   * per token, which spares the broker and this process most of their work per token. The worker
   * still generates token by token; the run waits for the whole turn either way.
   */
  async function completeModel(
    request: RunAgentRequest,
    model: string,
    messages: readonly ChatMessage[],
    tools: ToolDefinition[],
    signal: AbortSignal,
  ): Promise<ModelTurn> {
    const response = await deps.inference.complete(
      { model, messages: [...messages], tools, sampling: request.sampling, userId: request.userId, sessionId: request.sessionId, bypassCache: request.bypassCache },
      { signal },
    );
    return {
      model: response.model,
      content: response.message?.content ?? "",
      toolCalls: response.message?.toolCalls ?? [],
      finishReason: response.finishReason,
      usage: response.usage,
    };
  }

  /** One iteration's tool calls and what running them needs. */
  interface ToolStep {
    request: RunAgentRequest;
    options: InternalRunOptions;
    agentType: AgentType;
    budget: RunBudget;
    signal: AbortSignal;
    iteration: number;
    calls: readonly ToolCall[];
    callerTools: ReadonlySet<string>;
    /** Every tool the model was offered this run (the type's, the plugins', spawn_subagents, the caller's). */
    offeredTools: ReadonlySet<string>;
    /** Ids the run's tool calls were recorded under so far. */
    recordedCallIds: Set<string>;
    send: (event: AgentEvent["event"]) => Promise<void>;
    hookPayload: (event: HookPayload["event"], extra?: Partial<HookPayload>) => HookPayload;
  }

  /** One call's way through the iteration: undefined result for a caller's function (not run here). */
  interface CallOutcome {
    readonly call: ToolCall;
    readonly result: ToolResult | undefined;
    readonly refusedByBudget: boolean;
  }

  /**
   * Runs one iteration's tool calls, each in an `execute_tool <name>` span (OpenTelemetry's GenAI
   * naming) that its hooks, plugin or sub-agents run under. A caller's own functions get none: they
   * are not run here.
   */
  async function executeToolCalls(step: ToolStep): Promise<CallOutcome[]> {
    const spans = step.calls.map((call): SignalSpan | undefined =>
      step.callerTools.has(call.name)
        ? undefined
        : startSignalSpan(`execute_tool ${call.name}`, step.signal, {
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            run_id: step.options.runId,
            iteration: step.iteration,
          }),
    );
    try {
      return await runToolCalls(step, spans);
    } catch (error: unknown) {
      for (const span of spans) span?.end(error);
      throw error;
    } finally {
      // Idempotent: the spans of calls that finished were ended with their results.
      for (const span of spans) span?.end();
    }
  }

  async function runToolCalls(step: ToolStep, spans: ReadonlyArray<SignalSpan | undefined>): Promise<CallOutcome[]> {
    const { agentType, signal, iteration, send, request, options } = step;
    const signalOf = (index: number) => spans[index]?.signal ?? signal;
    for (const call of step.calls) await send({ $case: "toolCallRequested", value: { iteration, call } });

    // 1. Arguments and pre_tool_use hooks, every call at once.
    type Prepared =
      | { kind: "caller" }
      | { kind: "done"; result: ToolResult; refusedByBudget: boolean }
      | { kind: "run"; argumentsJson: string; args: Record<string, unknown> };
    const prepared = await Promise.all(
      step.calls.map(async (call, index): Promise<Prepared> => {
        if (step.callerTools.has(call.name)) return { kind: "caller" };
        // The model may name any tool; only those offered to this agent type are run. Anything else
        // would reach ExecuteBatch under toolAgentType, with permissions this type was not given.
        if (!step.offeredTools.has(call.name)) {
          return { kind: "done", refusedByBudget: false, result: failed(call, `tool ${call.name} is not available to agent type ${agentType.name}`) };
        }
        const parsed = parseArguments(call.argumentsJson);
        if ("error" in parsed) {
          return { kind: "done", refusedByBudget: false, result: failed(call, `arguments_json: ${parsed.error}; call ${call.name} again with a JSON object as its arguments`) };
        }
        const decision = await deps.hooks.preToolUse(agentType.hooks.pre_tool_use, step.hookPayload("pre_tool_use", { toolCall: call }), signalOf(index));
        if (!decision.allowed) return { kind: "done", refusedByBudget: false, result: failed(call, decision.reason) };
        if (decision.argumentsJson === call.argumentsJson) return { kind: "run", argumentsJson: call.argumentsJson, args: parsed.args };
        const rewritten = parseArguments(decision.argumentsJson);
        if ("error" in rewritten) return { kind: "done", refusedByBudget: false, result: failed(call, `a pre_tool_use hook rewrote the arguments into invalid JSON (denied): ${rewritten.error}`) };
        return { kind: "run", argumentsJson: decision.argumentsJson, args: rewritten.args };
      }),
    );

    // 2. The budget's tool calls, in the model's order: those past the pool are refused, not run.
    let granted = step.budget.takeToolCalls(prepared.filter((entry) => entry.kind === "run").length);
    const toRun = prepared.map((entry, index): Prepared => {
      if (entry.kind !== "run") return entry;
      if (granted > 0) {
        granted -= 1;
        return entry;
      }
      return { kind: "done", refusedByBudget: true, result: failed(step.calls[index]!, `budget: the run has used all of its ${step.budget.limits.maxToolCalls} tool calls`) };
    });

    // What ran: after a pre_tool_use rewrite, the post_tool_use hooks and the record see the
    // arguments the tool ran with, not the model's (an audit trail of what was really done).
    const ranCall = (index: number): ToolCall => {
      const call = step.calls[index]!;
      const entry = toRun[index];
      return entry?.kind === "run" && entry.argumentsJson !== call.argumentsJson ? { ...call, argumentsJson: entry.argumentsJson } : call;
    };

    // 3. Run them: the tool-runner's in one ExecuteBatch, plugins and sub-agents beside it.
    const startedAt = new Date();
    const runnerIndexes: number[] = [];
    const results: Array<Promise<ToolResult> | ToolResult | undefined> = toRun.map((entry, index) => {
      const call = step.calls[index]!;
      if (entry.kind === "caller") return undefined;
      if (entry.kind === "done") return entry.result;
      // The children's run_agent spans are children of this call's span.
      if (call.name === spawnSubagentsToolName && agentType.subagents.length > 0) return spawnSubagents({ ...step, signal: signalOf(index) }, call, entry.args);
      const plugin = deps.pluginTools?.get(call.name);
      if (plugin && deps.pluginTools?.forAgentType(agentType.name).includes(plugin)) {
        return runPluginTool(call, () => plugin.execute(entry.args, { runId: options.runId, agentType: agentType.name, workspaceId: request.workspaceId, signal: signalOf(index) }));
      }
      runnerIndexes.push(index);
      return undefined;
    });
    if (runnerIndexes.length > 0) {
      const batch = deps.tools
        .executeBatch(
          {
            calls: runnerIndexes.map((index) => {
              const call = step.calls[index]!;
              const entry = toRun[index] as { argumentsJson: string };
              return {
                toolName: call.name,
                argumentsJson: entry.argumentsJson,
                workspaceId: request.workspaceId,
                agentType: agentType.toolAgentType,
                timeoutMs: limits.toolTimeoutMs,
                callId: call.id,
              };
            }),
          },
          // One call for the whole batch: under the tool's span when it holds one tool, else under the loop's.
          { signal: runnerIndexes.length === 1 ? signalOf(runnerIndexes[0]!) : signal },
        )
        .then(
          (response) => response.results,
          (error: unknown) => {
            // The run's own cancel or deadline ends the run, and so does a failure that is the
            // mesh's (a refused secret, a bug). The tool-runner being down, overloaded or past its
            // deadline fails these calls only: the model gets the error as their results, as with
            // any failed tool, and what the other tools of the iteration returned is kept.
            if (signal.aborted || !(error instanceof ClientError) || !transientToolRunnerFailures.has(error.code)) throw error;
            const reason = `${Status[error.code]}: ${error.details}`;
            deps.logger.warn({ run_id: options.runId, err: error }, "the tool-runner failed a batch of tool calls; the model gets the error as their results");
            return runnerIndexes.map((index) => failed(step.calls[index]!, `the tool-runner could not run this call (${reason})`));
          },
        );
      runnerIndexes.forEach((index, position) => {
        results[index] = batch.then((batchResults) => batchResults[position] ?? failed(step.calls[index]!, "the tool-runner returned no result for this call"));
      });
    }
    // Settled, not raced: when one call fails (a cancel), the others are waited for, not left running unobserved.
    const settledAll = await Promise.allSettled(results);
    const rejected = settledAll.find((entry): entry is PromiseRejectedResult => entry.status === "rejected");
    if (rejected) {
      // The run ends here (cancelled, or past its deadline), but the calls that did finish ran
      // (an edit was made, a sub-agent answered): their records are kept.
      await Promise.all(
        settledAll.map(async (entry, index) => {
          const call = ranCall(index);
          if (entry.status !== "fulfilled" || entry.value === undefined || toRun[index]?.kind !== "run") return;
          // Through post_tool_use as on the way to the model: a hook that redacts a result must
          // redact what is stored too. The run's signal is spent; the record's deadline bounds it.
          const bounded = recordSignal();
          const result = await deps.hooks.postToolUse(agentType.hooks.post_tool_use, step.hookPayload("post_tool_use", { toolCall: call }), entry.value, bounded);
          await recorder.toolCalled(toolCallRecord(step, index, call, result, startedAt), bounded).catch(() => undefined);
        }),
      );
      throw rejected.reason;
    }
    const settled = settledAll.map((entry) => (entry as PromiseFulfilledResult<ToolResult | undefined>).value);

    // 4. post_tool_use hooks, events and records, in the model's order.
    const outcomes: CallOutcome[] = [];
    for (const [index, raw] of settled.entries()) {
      const call = step.calls[index]!;
      const entry = toRun[index]!;
      if (raw === undefined) {
        outcomes.push({ call, result: undefined, refusedByBudget: false });
        continue;
      }
      const result =
        entry.kind === "run"
          ? await deps.hooks.postToolUse(agentType.hooks.post_tool_use, step.hookPayload("post_tool_use", { toolCall: ranCall(index) }), raw, signalOf(index))
          : raw;
      await send({ $case: "toolResult", value: result });
      await recorder.toolCalled(toolCallRecord(step, index, ranCall(index), result, startedAt), recordSignal());
      outcomes.push({ call, result, refusedByBudget: entry.kind === "done" && entry.refusedByBudget });
      // A failed tool is the model's to handle, not an error of the run: an attribute, not the span's status.
      spans[index]?.span.setAttributes({ success: result.success, "tool.duration_ms": result.durationMs, ...(result.success ? {} : { "tool.error": result.error.slice(0, 200) }) });
      spans[index]?.end();
    }
    return outcomes;
  }

  async function runPluginTool(call: ToolCall, execute: () => Promise<{ success: boolean; output: string; error?: string; result?: unknown }>): Promise<ToolResult> {
    const startedAt = performance.now();
    try {
      const outcome = await execute();
      return {
        ...failed(call, outcome.error ?? ""),
        success: outcome.success,
        output: outcome.output,
        resultJson: outcome.result === undefined ? "" : JSON.stringify(outcome.result),
        durationMs: Math.round(performance.now() - startedAt),
      };
    } catch (error: unknown) {
      return { ...failed(call, `the tool failed: ${error instanceof Error ? error.message : String(error)}`), durationMs: Math.round(performance.now() - startedAt) };
    }
  }

  async function spawnSubagents(
    step: { options: InternalRunOptions; agentType: AgentType; budget: RunBudget; signal: AbortSignal; request: RunAgentRequest; send: (event: AgentEvent["event"]) => Promise<void> },
    call: ToolCall,
    args: Record<string, unknown>,
  ): Promise<ToolResult> {
    const startedAt = performance.now();
    const { agentType, options } = step;
    const tasks = args.tasks;
    const problem = (text: string): ToolResult => ({ ...failed(call, `${spawnSubagentsToolName}: ${text}`), durationMs: Math.round(performance.now() - startedAt) });
    if (options.depth + 1 > limits.maxSubagentDepth) {
      return problem(`sub-agents may be nested at most ${limits.maxSubagentDepth} deep, and this agent is at depth ${options.depth}; do the task yourself`);
    }
    if (!Array.isArray(tasks) || tasks.length < 1 || tasks.length > limits.maxSubagentTasks) {
      return problem(`tasks: must be an array of 1 to ${limits.maxSubagentTasks} tasks`);
    }
    const checked: Array<{ agentType: string; instruction: string }> = [];
    for (const [index, task] of (tasks as unknown[]).entries()) {
      const value = (typeof task === "object" && task !== null ? task : {}) as Record<string, unknown>;
      if (typeof value.agent_type !== "string" || !agentType.subagents.includes(value.agent_type)) {
        return problem(`tasks[${index}].agent_type: must be one of ${agentType.subagents.join(", ")} (got ${JSON.stringify(value.agent_type)})`);
      }
      if (typeof value.instruction !== "string" || value.instruction.trim() === "") return problem(`tasks[${index}].instruction: must be a non-empty string`);
      checked.push({ agentType: value.agent_type, instruction: value.instruction });
    }

    const entries = await Promise.all(
      checked.map(async (task) => {
        const childRunId = randomUUID();
        // Cancelling the child stops it alone: the parent gets its result as cancelled and goes on.
        // Registered before its id is announced, so that a CancelAgent as quick as can be finds it.
        const cancel = new AbortController();
        const unregister = deps.activeRuns?.register(childRunId, cancel);
        const childSignal = linkSignals(step.signal, cancel.signal);
        let outcome: RunOutcome | undefined;
        let error = "";
        try {
          await step.send({ $case: "subagentStarted", value: { childRunId, agentType: task.agentType, instruction: task.instruction } });
          outcome = await runInternal(
            {
              agentType: task.agentType,
              instruction: task.instruction,
              workspaceId: step.request.workspaceId,
              model: "",
              history: [],
              tools: [],
              sampling: step.request.sampling,
              userId: step.request.userId,
              sessionId: step.request.sessionId,
              overrides: undefined,
              // A child answers from the worker as its parent does.
              bypassCache: step.request.bypassCache,
            },
            // A child's model deltas stay out of its parent's stream: interleaved with the parent's
            // they would garble a consumer that concatenates model events; its other events go through.
            {
              runId: childRunId,
              parentRunId: options.runId,
              depth: options.depth + 1,
              signal: childSignal.signal,
              send: (event, isModelEvent, signal) => (isModelEvent ? Promise.resolve() : options.send(event, false, signal)),
              budget: step.budget,
              streamModelEvents: false,
            },
          );
          error = outcome.error || (outcome.status === AgentStatus.AGENT_STATUS_SUCCEEDED ? "" : `stopped: ${outcome.stopReason}`);
        } catch (caught: unknown) {
          error = caught instanceof Error ? ((caught as { details?: string }).details ?? caught.message) : String(caught);
        } finally {
          // After the child's end is recorded: a CancelAgent waiting for it reads the final status.
          childSignal.dispose();
          unregister?.();
        }
        const status = outcome?.status ?? AgentStatus.AGENT_STATUS_FAILED;
        await step.send({ $case: "subagentFinished", value: { childRunId, status, response: outcome?.response ?? "", error } });
        const statusName = statusNames[status] ?? "failed";
        return status === AgentStatus.AGENT_STATUS_SUCCEEDED
          ? { agent_type: task.agentType, status: statusName, response: outcome?.response ?? "" }
          : { agent_type: task.agentType, status: statusName, error };
      }),
    );
    const anySucceeded = entries.some((entry) => entry.status === "succeeded");
    return {
      ...failed(call, anySucceeded ? "" : "every sub-agent failed"),
      success: anySucceeded,
      output: JSON.stringify(entries),
      durationMs: Math.round(performance.now() - startedAt),
    };
  }

  return {
    async run(request, options) {
      // Events are handed over one at a time, in order, even when parallel tools or sub-agents emit together.
      let tail: Promise<void> = Promise.resolve();
      const send = (event: Uint8Array, _isModelEvent: boolean, signal: AbortSignal) => {
        const delivered = tail.then(() => options.emit(event, signal));
        // The next event waits for this one, but not for its failure.
        tail = delivered.catch(() => undefined);
        // An emit that ignores the signal must not hold the run past its cancel or deadline either.
        return untilAborted(delivered, signal);
      };
      return runInternal(request, {
        runId: options.runId,
        parentRunId: options.parentRunId,
        depth: options.depth,
        signal: options.signal,
        send,
        budget: undefined,
        streamModelEvents: options.streamModelEvents ?? true,
      });
    },
    async allowedToolNames(agentTypeName, signal) {
      const agentType = deps.catalog.require(agentTypeName);
      const tools = [...(await runnerTools(agentType, signal)), ...pluginToolsOf(agentType)];
      return tools.map((tool) => tool.name);
    },
  };
}

/** How a failed ExecuteBatch may end that fails its calls but not the run. */
const transientToolRunnerFailures = new Set([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.RESOURCE_EXHAUSTED]);

const statusNames: Partial<Record<AgentStatus, string>> = {
  [AgentStatus.AGENT_STATUS_SUCCEEDED]: "succeeded",
  [AgentStatus.AGENT_STATUS_FAILED]: "failed",
  [AgentStatus.AGENT_STATUS_CANCELLED]: "cancelled",
  [AgentStatus.AGENT_STATUS_INTERRUPTED]: "interrupted",
};

/** What a model call cost in US dollars; nothing without a price (no cost budget can be set then). */
function costOf(price: ModelPrice | undefined, usage: Usage | undefined): number {
  if (!price || !usage) return 0;
  return (usage.promptTokens * price.promptUsdPerMillionTokens + usage.completionTokens * price.completionUsdPerMillionTokens) / 1_000_000;
}

/** A caller's override of a limit: unset (0) keeps the configured value, a larger one is capped to it. */
function capped(override: number | undefined, configured: number): number {
  return override ? Math.min(override, configured) : configured;
}

/**
 * The id a tool call is recorded under. The store keys calls by (run, id) and drops duplicates, and
 * a model may reuse an id in a later iteration (some number them per turn): such a call is recorded
 * as `${iteration}:${id}` (plus its index if even that is taken). The model's own id stays in the
 * tool message and the events, where it must match the assistant's call.
 */
function recordId(used: Set<string>, iteration: number, index: number, id: string): string {
  let recorded = id;
  if (used.has(recorded)) recorded = `${iteration}:${id}`;
  if (used.has(recorded)) recorded = `${iteration}:${index}:${id}`;
  used.add(recorded);
  return recorded;
}

/** What the run store keeps of one tool call of an iteration. */
function toolCallRecord(step: { options: { runId: string }; iteration: number; recordedCallIds: Set<string> }, index: number, call: ToolCall, result: ToolResult, startedAt: Date): ToolCallRecord {
  return {
    id: recordId(step.recordedCallIds, step.iteration, index, call.id),
    runId: step.options.runId,
    iteration: step.iteration,
    toolName: call.name,
    argumentsJson: call.argumentsJson,
    resultJson: JSON.stringify(ToolResult.toJSON(result)),
    success: result.success,
    durationMs: result.durationMs,
    startedAt,
    finishedAt: new Date(),
  };
}

function message(role: string, content: string): ChatMessage {
  return { role, content, toolCalls: [], toolCallId: "", name: "" };
}

function failed(call: ToolCall, error: string): ToolResult {
  return { callId: call.id, toolName: call.name, success: false, output: "", resultJson: "", error, exitCode: undefined, durationMs: 0, truncated: false };
}

function parseArguments(json: string): { args: Record<string, unknown> } | { error: string } {
  let value: unknown;
  try {
    value = JSON.parse(json.trim() === "" ? "{}" : json);
  } catch (error: unknown) {
    return { error: `not valid JSON (${error instanceof Error ? error.message : String(error)})` };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { error: "must be a JSON object" };
  return { args: value as Record<string, unknown> };
}

/** What the model reads of a result: the output (or structured result), and for a failure the error first. */
function toolMessageContent(result: ToolResult): string {
  const body = result.output !== "" ? result.output : result.resultJson;
  if (result.success) return body;
  return body === "" ? `error: ${result.error}` : `error: ${result.error}\n${body}`;
}

function addUsage(total: Usage, usage: Usage | undefined): void {
  if (!usage) return;
  total.promptTokens += usage.promptTokens;
  total.completionTokens += usage.completionTokens;
  total.totalTokens += usage.totalTokens;
  total.cachedPromptTokens += usage.cachedPromptTokens;
}
