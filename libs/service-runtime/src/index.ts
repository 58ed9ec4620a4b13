export * from "./config";
export * from "./logger";
export * from "./metrics";
export * from "./tracing";
export * from "./client";
export * from "./service-host";
export * from "./run-service";
export { internalAuthHeader } from "./middleware/internal-auth";
export * from "./bootstrap";
