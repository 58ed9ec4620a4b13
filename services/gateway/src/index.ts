export { createGateway } from "./gateway";
export { gatewayConfigSchema, type GatewayConfig } from "./config";
