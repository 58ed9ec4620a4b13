export { VllmSimulator, deterministicEmbedding } from "./simulator";
export type { SimulatorStats } from "./simulator";
export { defaultSimulatorOptions, simulatedFailureKinds, toolCallStyles } from "./options";
export type { SimulatedModel, VllmSimulatorOptions, SimulatorFaults, SimulatedFailureKind, ToolCallStyle } from "./options";
export { splitIntoTokens, countTokens } from "./tokens";
