export { createInferenceBroker } from "./inference-broker";
export { brokerConfigSchema, type BrokerConfig } from "./config";
