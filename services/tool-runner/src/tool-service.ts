import {
  ToolServiceDefinition,
  type ExecuteToolRequest,
  type ToolResult,
  type ToolServiceImplementation,
} from "@vlinders/proto";
import { linkSignals, type Logger } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import type { ToolResultCache } from "./cache/tool-result-cache";
import { PermissionDeniedError, UnknownAgentTypeError, type ToolPermissions } from "./permissions/tool-permissions";
import type { CommandSandbox } from "./sandbox/sandbox";
import type { ToolMetrics } from "./tool-metrics";
import { parseAndValidateArguments } from "./tools/argument-validation";
import { ToolArgumentError, type ToolDefinition, type ToolOutcome } from "./tools/tool";
import type { ToolRegistry } from "./tools/tool-registry";
import type { Workspace } from "./workspace/workspace";
import { validateWorkspaceId, WorkspaceNotFoundError, type Workspaces } from "./workspace/workspaces";

export { ToolServiceDefinition };

export interface ToolCallLimits {
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  outputLimitBytes: number;
}

export interface ToolServiceDependencies {
  registry: ToolRegistry;
  workspaces: Workspaces;
  permissions: ToolPermissions;
  cache: ToolResultCache;
  sandbox: CommandSandbox;
  limits: ToolCallLimits;
  metrics: ToolMetrics;
  logger: Logger;
}

/** A batch larger than this is refused: each call may start a command, and the host has few cores. */
export const maxBatchSize = 64;

/**
 * ToolService. A mistake in the request (unknown tool, arguments that break the tool's schema, a
 * path outside the workspace, a tool the agent type may not use) is a gRPC error with the field
 * named; a tool that ran and could not do its job (no such file, a command that exited 1) is a
 * result with `success: false`, because that is information for the model, not a broken call.
 * In a batch, each call's request mistake becomes that call's failed result instead.
 */
export function createToolService(deps: ToolServiceDependencies): ToolServiceImplementation {
  const executeOne = createToolCallExecutor(deps);
  return {
    async listTools(request) {
      const tools = deps.registry.list();
      const allowed = request.agentType === "" ? undefined : deps.permissions.allowedTools(request.agentType);
      if (request.agentType !== "" && allowed === undefined) {
        const known = deps.permissions.agentTypes().join(", ");
        throw new ServerError(Status.INVALID_ARGUMENT, `agent_type: unknown agent type "${request.agentType}" (known: ${known})`);
      }
      return {
        tools: tools
          .filter((tool) => allowed === undefined || allowed.has(tool.name))
          .map((tool) => ({
            name: tool.name,
            description: tool.description,
            parametersJsonSchema: JSON.stringify(tool.parameters),
            readOnly: tool.readOnly,
          })),
      };
    },

    async executeTool(request, context) {
      return executeOne(request, context.signal);
    },

    async executeBatch(request, context) {
      if (request.calls.length > maxBatchSize) {
        throw new ServerError(Status.INVALID_ARGUMENT, `calls: at most ${maxBatchSize} calls per batch (got ${request.calls.length})`);
      }
      const results = await Promise.all(
        request.calls.map((call, index) =>
          executeOne(call, context.signal).catch((error: unknown): ToolResult => {
            const status = error instanceof ServerError ? error : new ServerError(Status.INTERNAL, "internal error; the server log has the details");
            if (!(error instanceof ServerError)) deps.logger.error({ err: error, index, tool: call.toolName }, "tool call in a batch failed unexpectedly");
            return failedResult(call, `${Status[status.code]}: calls[${index}].${status.details}`, 0);
          }),
        ),
      );
      return { results };
    },
  };
}

function failedResult(call: ExecuteToolRequest, error: string, durationMs: number): ToolResult {
  return {
    callId: call.callId,
    toolName: call.toolName,
    success: false,
    output: "",
    resultJson: "",
    error,
    exitCode: undefined,
    durationMs,
    truncated: false,
  };
}

function resultOf(call: ExecuteToolRequest, outcome: ToolOutcome, durationMs: number): ToolResult {
  return {
    callId: call.callId,
    toolName: call.toolName,
    success: outcome.success,
    output: outcome.output,
    resultJson: outcome.result === undefined ? "" : JSON.stringify(outcome.result),
    error: outcome.error ?? "",
    exitCode: outcome.exitCode,
    durationMs,
    truncated: outcome.truncated,
  };
}

/** Translates the tool layer's errors into statuses that name the field; anything else goes on to the error boundary. */
function toStatusError(error: unknown): unknown {
  if (error instanceof ToolArgumentError || error instanceof UnknownAgentTypeError) return new ServerError(Status.INVALID_ARGUMENT, error.message);
  if (error instanceof WorkspaceNotFoundError) return new ServerError(Status.NOT_FOUND, error.message);
  if (error instanceof PermissionDeniedError) return new ServerError(Status.PERMISSION_DENIED, error.message);
  return error;
}

/**
 * The context's workspace for a tool that needs none (needsWorkspace: false): nothing is opened or
 * created. A workspace_id given anyway must still be a valid one; it keys the tool's cache entries.
 */
function detachedWorkspace(workspaceId: string): Workspace {
  if (workspaceId !== "") validateWorkspaceId(workspaceId);
  return {
    id: workspaceId,
    rootPath: "",
    resolve() {
      return Promise.reject(new Error("this tool declared needsWorkspace: false and has no workspace to resolve paths in"));
    },
  };
}

function createToolCallExecutor(deps: ToolServiceDependencies) {
  const { registry, workspaces, permissions, cache, sandbox, limits, metrics } = deps;

  function findTool(name: string): ToolDefinition {
    if (name === "") throw new ServerError(Status.INVALID_ARGUMENT, "tool_name: is required");
    const tool = registry.get(name);
    if (!tool) {
      const known = registry.list().map((candidate) => candidate.name).join(", ");
      throw new ServerError(Status.NOT_FOUND, `tool_name: unknown tool "${name}" (known: ${known})`);
    }
    return tool;
  }

  function timeoutOf(request: ExecuteToolRequest, tool: ToolDefinition): number {
    if (request.timeoutMs === 0) return permissions.toolSettings(tool.name).defaultTimeoutMs ?? limits.defaultTimeoutMs;
    if (request.timeoutMs > limits.maxTimeoutMs) {
      throw new ServerError(Status.INVALID_ARGUMENT, `timeout_ms: at most ${limits.maxTimeoutMs} (got ${request.timeoutMs})`);
    }
    return request.timeoutMs;
  }

  return async function executeToolCall(request: ExecuteToolRequest, callSignal: AbortSignal): Promise<ToolResult> {
    const startedAt = performance.now();
    const elapsedMs = () => Math.round(performance.now() - startedAt);
    let tool: ToolDefinition | undefined;
    try {
      tool = findTool(request.toolName);
      const needsWorkspace = tool.needsWorkspace !== false;
      if (request.workspaceId === "" && needsWorkspace) throw new ServerError(Status.INVALID_ARGUMENT, "workspace_id: is required");
      permissions.check(request.agentType, tool.name);
      const timeoutMs = timeoutOf(request, tool);
      const args = parseAndValidateArguments(tool, request.argumentsJson);
      const workspace = needsWorkspace ? await workspaces.open(request.workspaceId, { create: !tool.readOnly }) : detachedWorkspace(request.workspaceId);

      const cached = tool.readOnly ? await cache.get(tool.name, workspace, args, callSignal) : undefined;
      if (cached) {
        metrics.recordCall(tool.name, "cached", elapsedMs());
        return resultOf(request, cached, elapsedMs());
      }

      // The tool's own deadline: commands are killed by the sandbox at timeoutMs; the extra second
      // lets that happen (and be reported as a timeout) before this signal cuts the call short.
      const { signal, dispose } = linkSignals(callSignal, AbortSignal.timeout(timeoutMs + 1000));
      let outcome: ToolOutcome;
      try {
        outcome = await tool.execute(args, {
          workspace,
          agentType: request.agentType,
          mayWrite: permissions.mayWrite(request.agentType),
          timeoutMs,
          outputLimitBytes: permissions.toolSettings(tool.name).outputLimitBytes ?? limits.outputLimitBytes,
          sandbox,
          signal,
        });
      } catch (error: unknown) {
        if (!signal.aborted || callSignal.aborted) throw error;
        outcome = { success: false, output: "", error: `timed out after ${timeoutMs} ms`, truncated: false };
      } finally {
        dispose();
      }

      if (tool.readOnly) {
        if (outcome.success) await cache.set(tool.name, workspace, args, outcome, callSignal);
      } else {
        // A write, or a command that may have written: whatever was cached for this workspace is stale.
        await cache.invalidateWorkspace(workspace.id, callSignal);
      }
      metrics.recordCall(tool.name, outcome.success ? "success" : "failure", elapsedMs());
      return resultOf(request, outcome, elapsedMs());
    } catch (error: unknown) {
      metrics.recordCall(tool?.name ?? "unknown", "rejected", elapsedMs());
      // The caller went away: its abort is no server fault, to be logged or reported as INTERNAL.
      if (callSignal.aborted) throw new ServerError(Status.CANCELLED, "the call was cancelled");
      throw toStatusError(error);
    }
  };
}
