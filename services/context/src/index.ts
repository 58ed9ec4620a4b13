export { contextConfigSchema, type ContextConfig } from "./config";
export { createContextServer } from "./context-server";
export { createContextService, type ContextServiceDependencies } from "./context-service";
export { compactionStages, type CompactionStage } from "./compaction/compactor";
export { estimateMessageTokens, estimateTextTokens, modelFamilyOf, effectiveBudget, type ModelFamily } from "./tokens/token-estimator";
