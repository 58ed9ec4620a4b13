import { commonConfigShape, millisecondsVariable, portVariable } from "@vlinders/service-runtime";
import { z } from "zod";

const positiveInteger = (defaultValue: number) => z.coerce.number().int().positive().default(defaultValue);

export const toolRunnerConfigSchema = z.object({
  ...commonConfigShape,
  GRPC_PORT: portVariable(50054),
  /** Workspaces are the directories `$WORKSPACE_ROOT/<workspace_id>`; relative paths are from the working directory. */
  WORKSPACE_ROOT: z.string().default(".vlinders/workspaces"),
  TOOLS_CONFIG: z.string().default("configs/tools.yaml"),
  AGENTS_CONFIG: z.string().default("configs/agents.yaml"),
  /** Results of read-only tools are cached here; unset keeps an in-process cache. */
  REDIS_URL: z.string().url().optional(),
  /** Put before every Redis key, to separate environments that share one Redis. */
  REDIS_KEY_PREFIX: z.string().default(""),
  TOOL_CACHE_TTL_S: positiveInteger(300),
  /** Timeout of a tool call that names none; a caller's timeout_ms is capped at TOOL_MAX_TIMEOUT_MS. */
  TOOL_DEFAULT_TIMEOUT_MS: millisecondsVariable(30_000),
  TOOL_MAX_TIMEOUT_MS: millisecondsVariable(600_000),
  /** Bytes of a tool's text output returned; the rest is cut from the middle (head and tail kept). */
  TOOL_OUTPUT_LIMIT_BYTES: positiveInteger(64 * 1024),
  /** A command that writes more than this is killed: reading gigabytes only to drop them wastes the host. */
  COMMAND_OUTPUT_KILL_BYTES: positiveInteger(16 * 1024 * 1024),
  /** When set, run_test runs this; otherwise the command is detected from the workspace's files. */
  RUN_TEST_COMMAND: z.string().optional(),
  /** An endpoint answering `GET ?q=<query>` with JSON results; web_search is off without it. */
  WEB_SEARCH_URL: z.string().url().optional(),

  /**
   * Where commands run. auto: Docker when its daemon answers, else bubblewrap when installed, else
   * none (commands refused). unsafe-host runs commands on the host with no isolation and is refused
   * in production.
   */
  SANDBOX_BACKEND: z.enum(["auto", "docker", "bubblewrap", "unsafe-host", "none"]).default("auto"),
  /** Image of the sandbox containers; built locally from this machine's files when missing and SANDBOX_BUILD_IMAGE allows. */
  SANDBOX_IMAGE: z.string().default("vlinders-sandbox:local"),
  SANDBOX_BUILD_IMAGE: z.enum(["true", "false"]).default("true").transform((value) => value === "true"),
  /** Started containers kept ready so that a session never waits for one to start. */
  SANDBOX_POOL_SIZE: z.coerce.number().int().min(0).default(4),
  SANDBOX_MEMORY_MB: positiveInteger(512),
  SANDBOX_CPUS: z.coerce.number().positive().default(1),
  SANDBOX_PIDS_LIMIT: positiveInteger(256),
  SANDBOX_TMPFS_MB: positiveInteger(256),
  /** Container starts under way at once at most (cold sessions and pool refills): a batch over many workspaces must not start dozens together. */
  SANDBOX_MAX_CONCURRENT_STARTS: positiveInteger(4),
  /** A workspace session's container is recycled after this long without a command. */
  SANDBOX_IDLE_MS: millisecondsVariable(60_000),
  /** Host directory for the sandbox's mount points (workspaces are bound into warm containers here). */
  SANDBOX_STATE_DIR: z.string().default(".vlinders/sandbox"),
  /** Labels this replica's containers so that it removes its own leftovers after a crash, not another replica's. */
  SANDBOX_RUNNER_ID: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/, "must be 1-63 letters, digits, '.', '_' or '-'").optional(),
});

export type ToolRunnerConfig = z.infer<typeof toolRunnerConfigSchema>;
