export { createOrchestrator } from "./orchestrator";
export { orchestratorConfigSchema, type OrchestratorConfig } from "./config";
export type { OrchestratorPluginApi, OrchestratorPluginModule } from "./plugins/plugin-modules";
export type { HookDecision, HookFunction, HookPayload } from "./hooks/hook-types";
export type { PluginToolContext, PluginToolOutcome } from "./plugins/plugin-tools";
export type { AgentTypeDefinition } from "./agents/agent-types";
