export * from "./config";
export * from "./tool-runner";
export * from "./sandbox/sandbox";
export { createCommandSandbox } from "./sandbox/create-command-sandbox";
export { DockerSandbox } from "./sandbox/docker-sandbox";
