export { createOrchestrator } from "./orchestrator";
export { orchestratorConfigSchema, type OrchestratorConfig } from "./config";
