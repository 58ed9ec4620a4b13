import type { ToolServiceClient, ToolServiceImplementation } from "@vlinders/proto";

export interface GatewayToolDependencies {
  tools: ToolServiceClient;
}

/**
 * The public ToolService: each call goes to the tool-runner with the caller's signal, so a cancel
 * or a deadline at the door stops the command in its sandbox. The tool-runner checks the requests
 * itself (it owns the tools' schemas and permissions); checking them here too would only let the
 * two copies drift apart.
 */
export function createGatewayToolService(deps: GatewayToolDependencies): ToolServiceImplementation {
  return {
    listTools: (request, context) => deps.tools.listTools(request, { signal: context.signal }),
    executeTool: (request, context) => deps.tools.executeTool(request, { signal: context.signal }),
    executeBatch: (request, context) => deps.tools.executeBatch(request, { signal: context.signal }),
  };
}
