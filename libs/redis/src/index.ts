export * from "./redis-connection";
