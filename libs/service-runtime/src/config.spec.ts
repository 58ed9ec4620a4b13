import { z } from "zod";
import {
  addressVariable,
  commonConfigSchema,
  ConfigError,
  developmentInternalSecret,
  loadConfig,
  millisecondsVariable,
  optionalAddressVariable,
  portVariable,
  resolveInternalSecret,
} from "./config";

// What a service's config.ts builds: the common variables plus its own.
const serviceSchema = commonConfigSchema.extend({
  GRPC_PORT: portVariable(50051),
  INFERENCE_ADDRESS: addressVariable("127.0.0.1:50052"),
  WORKER_IDLE_TIMEOUT_MS: millisecondsVariable(30_000),
});

function configError(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error: unknown) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error("expected a ConfigError");
}

describe("loadConfig", () => {
  it("leaves an optional address undefined when unset or empty, and checks it when set", () => {
    const schema = z.object({ CONTEXT_ADDRESS: optionalAddressVariable() });
    expect(loadConfig(schema, {}).CONTEXT_ADDRESS).toBeUndefined();
    expect(loadConfig(schema, { CONTEXT_ADDRESS: "" }).CONTEXT_ADDRESS).toBeUndefined();
    expect(loadConfig(schema, { CONTEXT_ADDRESS: "dns:///context:50055" }).CONTEXT_ADDRESS).toBe("dns:///context:50055");
    expect(configError(() => loadConfig(schema, { CONTEXT_ADDRESS: "context" })).message).toContain("CONTEXT_ADDRESS: must be host:port");
  });

  it("gives the defaults for an empty environment", () => {
    expect(loadConfig(serviceSchema, {})).toMatchObject({
      VLINDERS_ENV: "development",
      LOG_LEVEL: "info",
      GRPC_HOST: "0.0.0.0",
      METRICS_PORT: 0,
      SHUTDOWN_GRACE_MS: 10_000,
      GRPC_PORT: 50051,
      INFERENCE_ADDRESS: "127.0.0.1:50052",
      WORKER_IDLE_TIMEOUT_MS: 30_000,
    });
    expect(loadConfig(serviceSchema, {}).INTERNAL_SECRET).toBeUndefined();
  });

  it("reads numbers from their strings and ignores variables it does not know", () => {
    const config = loadConfig(serviceSchema, {
      GRPC_PORT: "0",
      METRICS_PORT: "9464",
      WORKER_IDLE_TIMEOUT_MS: "1500",
      VLINDERS_ENV: "production",
      INTERNAL_SECRET: "0123456789abcdef",
      PATH: "/usr/bin",
    });
    expect(config).toMatchObject({ GRPC_PORT: 0, METRICS_PORT: 9464, WORKER_IDLE_TIMEOUT_MS: 1500, VLINDERS_ENV: "production" });
    expect(config).not.toHaveProperty("PATH");
  });

  it.each(["abc", "70000", "-1", "80.5"])("rejects GRPC_PORT=%s, naming the variable and showing the value", (value) => {
    const error = configError(() => loadConfig(serviceSchema, { GRPC_PORT: value }));
    expect(error.name).toBe("ConfigError");
    expect(error.message).toMatch(new RegExp(`^invalid configuration: GRPC_PORT: .* \\(got "${value.replace(".", "\\.")}"\\)$`));
  });

  it("treats an empty variable as unset", () => {
    const config = loadConfig(serviceSchema, { GRPC_PORT: "", VLINDERS_ENV: "", INTERNAL_SECRET: "", LOG_LEVEL: "" });
    expect(config.GRPC_PORT).toBe(50051);
    expect(config.VLINDERS_ENV).toBe("development");
    expect(config.LOG_LEVEL).toBe("info");
    expect(config.INTERNAL_SECRET).toBeUndefined();
  });

  it("names every offending variable in one message", () => {
    const error = configError(() =>
      loadConfig(serviceSchema, { LOG_LEVEL: "verbose", INFERENCE_ADDRESS: "http://broker:50052", SHUTDOWN_GRACE_MS: "0" }),
    );
    expect(error.message).toContain("LOG_LEVEL: ");
    expect(error.message).toContain('(got "verbose")');
    expect(error.message).toContain('INFERENCE_ADDRESS: must be host:port, [ipv6]:port or dns:///host:port (got "http://broker:50052")');
    expect(error.message).toContain("SHUTDOWN_GRACE_MS: ");
    expect(error.message.split("; ")).toHaveLength(3);
  });

  it("rejects an unknown VLINDERS_ENV", () => {
    const error = configError(() => loadConfig(serviceSchema, { VLINDERS_ENV: "staging" }));
    expect(error.message).toMatch(/^invalid configuration: VLINDERS_ENV: .*\(got "staging"\)$/);
  });

  it("rejects an INTERNAL_SECRET shorter than 16 characters without showing it", () => {
    const error = configError(() => loadConfig(serviceSchema, { INTERNAL_SECRET: "hunter2-prod" }));
    expect(error.message).toBe("invalid configuration: INTERNAL_SECRET: must be at least 16 characters (value hidden)");
    // The message is logged; a rejected secret may still be (a typo of) the real one.
    expect(error.message).not.toContain("hunter2");
  });

  it("hides the value of any variable named like a secret, and shows the others", () => {
    const schema = z.object({
      UPSTREAM_API_KEY: z.string().min(32),
      DB_PASSWORD: z.string().min(12),
      WORKER_FIRST_TOKEN_TIMEOUT_MS: millisecondsVariable(1),
    });
    const error = configError(() =>
      loadConfig(schema, { UPSTREAM_API_KEY: "sk-short", DB_PASSWORD: "pw", WORKER_FIRST_TOKEN_TIMEOUT_MS: "soon" }),
    );
    expect(error.message).not.toContain("sk-short");
    expect(error.message).not.toContain('"pw"');
    expect(error.message).toContain("UPSTREAM_API_KEY: ");
    expect(error.message).toContain("DB_PASSWORD: ");
    expect(error.message).toContain('(got "soon")');
  });

  it("reads process.env when no environment is given", () => {
    const schema = z.object({ VLINDERS_TEST_ONLY_VARIABLE: z.string().default("unset") });
    process.env.VLINDERS_TEST_ONLY_VARIABLE = "from process.env";
    try {
      expect(loadConfig(schema).VLINDERS_TEST_ONLY_VARIABLE).toBe("from process.env");
    } finally {
      delete process.env.VLINDERS_TEST_ONLY_VARIABLE;
    }
  });
});

describe("resolveInternalSecret", () => {
  it("refuses to run in production without INTERNAL_SECRET, naming the variable", () => {
    const config = loadConfig(commonConfigSchema, { VLINDERS_ENV: "production" });
    const error = configError(() => resolveInternalSecret(config));
    expect(error.message).toBe("invalid configuration: INTERNAL_SECRET: required when VLINDERS_ENV=production");
  });

  it("counts an empty INTERNAL_SECRET as missing in production", () => {
    const config = loadConfig(commonConfigSchema, { VLINDERS_ENV: "production", INTERNAL_SECRET: "" });
    expect(configError(() => resolveInternalSecret(config)).message).toContain("INTERNAL_SECRET");
  });

  it.each(["development", "test"] as const)("falls back to the development secret in %s and says so", (environment) => {
    expect(resolveInternalSecret(loadConfig(commonConfigSchema, { VLINDERS_ENV: environment }))).toEqual({
      secret: developmentInternalSecret,
      isDevelopmentDefault: true,
    });
  });

  it("uses the configured secret in any environment", () => {
    const secret = "s3cret-s3cret-s3cret";
    for (const environment of ["development", "production"]) {
      expect(resolveInternalSecret(loadConfig(commonConfigSchema, { VLINDERS_ENV: environment, INTERNAL_SECRET: secret }))).toEqual({
        secret,
        isDevelopmentDefault: false,
      });
    }
  });
});
