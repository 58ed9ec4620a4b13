import { z } from "zod";

/** Thrown when the environment does not hold a valid configuration; the message names each variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Variables whose values are never echoed in error messages. */
const secretVariableName = /(^|_)(SECRET|PASSWORD|TOKEN|KEY)$/;

/**
 * Reads and validates a service's configuration from environment variables, failing fast with a
 * message that names every offending variable. Keys of the schema are the variable names.
 */
export function loadConfig<Shape extends z.ZodRawShape>(
  schema: z.ZodObject<Shape>,
  env: NodeJS.ProcessEnv = process.env,
): z.infer<z.ZodObject<Shape>> {
  // An empty variable means "unset", as it does for most tools that read the environment.
  const present = Object.fromEntries(Object.entries(env).filter(([, value]) => value !== undefined && value !== ""));
  const result = schema.safeParse(present);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const variable = issue.path.join(".") || "(environment)";
      const name = issue.path[0];
      const value = typeof name === "string" ? present[name] : undefined;
      // Config errors end up in logs: a rejected secret (a short real one, a typo of one) must not.
      const hidden = typeof name === "string" && secretVariableName.test(name);
      const shown = value === undefined ? "" : hidden ? " (value hidden)" : ` (got ${JSON.stringify(value)})`;
      return `${variable}: ${issue.message}${shown}`;
    });
    throw new ConfigError(`invalid configuration: ${problems.join("; ")}`);
  }
  return result.data;
}

/** A TCP port number from an environment variable; 0 asks the OS for a free port. */
export const portVariable = (defaultPort: number) => z.coerce.number().int().min(0).max(65535).default(defaultPort);

/** A duration in milliseconds from an environment variable. */
export const millisecondsVariable = (defaultMs: number) => z.coerce.number().int().positive().default(defaultMs);

const address = () =>
  z.string().regex(/^(?:(?:dns|ipv4|ipv6):\/{0,3})?(?:\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):\d{1,5}$/, "must be host:port, [ipv6]:port or dns:///host:port");

/**
 * Where another service of the mesh listens: host:port, [ipv6]:port, or a gRPC target such as
 * dns:///orchestrator.vlinders.svc:50052 (with a headless Kubernetes Service, every pod is used).
 */
export const addressVariable = (defaultAddress: string) => address().default(defaultAddress);

/** An address (as addressVariable) of a service the caller can do without: undefined when unset. */
export const optionalAddressVariable = () => address().optional();

/** The variables every service reads. */
export const commonConfigShape = {
  VLINDERS_ENV: z.enum(["development", "test", "production"]).default("development"),
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  /** The shared secret every caller sends as x-internal-auth. */
  INTERNAL_SECRET: z.string().min(16, "must be at least 16 characters").optional(),
  GRPC_HOST: z.string().default("0.0.0.0"),
  METRICS_PORT: portVariable(0),
  /** How long in-flight calls may run on after shutdown begins before they are aborted. */
  SHUTDOWN_GRACE_MS: millisecondsVariable(10_000),
  /**
   * How long a stopping server reports NOT_SERVING while still taking calls, so that load
   * balancers and Kubernetes endpoints stop sending traffic before it refuses any.
   */
  SHUTDOWN_DRAIN_DELAY_MS: z.coerce.number().int().min(0).default(0),
};

export const commonConfigSchema = z.object(commonConfigShape);
export type CommonConfig = z.infer<typeof commonConfigSchema>;

/** Used outside production when INTERNAL_SECRET is unset, so that `npm start` works out of the box. */
export const developmentInternalSecret = "vlinders-dev-secret-change-me";

/**
 * The shared secret to require and send. Production refuses to start without one; elsewhere the
 * development default is used and the caller is told to warn about it.
 */
export function resolveInternalSecret(config: Pick<CommonConfig, "VLINDERS_ENV" | "INTERNAL_SECRET">): {
  secret: string;
  isDevelopmentDefault: boolean;
} {
  if (config.INTERNAL_SECRET !== undefined) return { secret: config.INTERNAL_SECRET, isDevelopmentDefault: false };
  if (config.VLINDERS_ENV === "production") {
    throw new ConfigError("invalid configuration: INTERNAL_SECRET: required when VLINDERS_ENV=production");
  }
  return { secret: developmentInternalSecret, isDevelopmentDefault: true };
}
