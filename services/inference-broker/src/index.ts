export { createInferenceBroker, type InferenceBroker } from "./inference-broker";
export { brokerConfigSchema, type BrokerConfig } from "./config";
