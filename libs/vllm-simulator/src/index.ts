export { VllmSimulator, defaultSimulatorOptions, deterministicEmbedding } from "./simulator";
export type { SimulatedModel, VllmSimulatorOptions, SimulatorFaults, SimulatorStats } from "./simulator";
export { splitIntoTokens, countTokens } from "./tokens";
