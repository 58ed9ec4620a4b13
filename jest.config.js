// One jest run for the whole workspace: unit tests beside the code (src/**/*.spec.ts), cross-service
// integration and end-to-end tests in test/. Workspace packages resolve to their TypeScript sources,
// so a test never runs against a stale build; the end-to-end test runs the built processes.
/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: "node",
  roots: ["<rootDir>/libs", "<rootDir>/services", "<rootDir>/test"],
  testMatch: ["**/src/**/*.spec.ts", "<rootDir>/test/**/*.spec.ts"],
  testPathIgnorePatterns: ["/node_modules/", "/dist/"],
  transform: {
    "^.+\\.ts$": [
      "@swc/jest",
      { jsc: { target: "es2022", parser: { syntax: "typescript" } }, module: { type: "commonjs" }, sourceMaps: "inline" },
    ],
  },
  moduleNameMapper: {
    "^@vlinders/(.*)$": ["<rootDir>/libs/$1/src", "<rootDir>/services/$1/src"],
  },
  testTimeout: 30000,
  // Cross-service tests start real servers and processes; two cores do not run many of them at once.
  maxWorkers: 2,
};
