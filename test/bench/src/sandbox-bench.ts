#!/usr/bin/env node
/**
 * npm run bench:sandbox: what a command costs in the tool-runner's Docker sandbox, measured side by
 * side in one run on this machine: a cold container start, a hand-over from the warm pool (read-write
 * and read-only), a `run_command "true"` round trip through the ToolService (to the tool-runner, and
 * through the gateway), and 100 commands at once. See test/bench/README.md.
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { spawnService, type MeshProcess } from "@vlinders/mesh-launcher";
import { ToolServiceDefinition, type ToolServiceClient } from "@vlinders/proto";
import { createLogger, createMetricsRegistry, loadConfig } from "@vlinders/service-runtime";
import { createCommandSandbox, DockerSandbox, toolRunnerConfigSchema, type SandboxWorkspace } from "@vlinders/tool-runner";
import { createChannel, createClient, Metadata, type Channel } from "nice-grpc";
import { Samples, type Summary } from "./stats";

const rootDir = resolve(__dirname, "../../..");
const secret = "sandbox-bench-secret-0123456789";
const goal = { warmAcquireP50Ms: 5, coldStartP50Ms: 400, execRoundtripP50Ms: 30 };

interface Options {
  coldSamples: number;
  warmSamples: number;
  roundTrips: number;
  parallelRounds: number;
}

function parseOptions(argv: readonly string[]): Options {
  if (argv.includes("--help")) {
    process.stdout.write("usage: npm run bench:sandbox -- [--quick]\n  --quick  fewer samples (about 30 s instead of about 2 minutes)\n");
    process.exit(0);
  }
  const quick = argv.includes("--quick");
  return quick
    ? { coldSamples: 8, warmSamples: 15, roundTrips: 40, parallelRounds: 2 }
    : { coldSamples: 30, warmSamples: 60, roundTrips: 200, parallelRounds: 5 };
}

const note = (message: string) => process.stderr.write(`${message}\n`);
const fixed = (value: number) => (Number.isFinite(value) ? value.toFixed(1) : "-");

async function sandboxFor(stateDir: string, runnerId: string, poolSize: number): Promise<DockerSandbox> {
  const config = loadConfig(toolRunnerConfigSchema, {
    SANDBOX_BACKEND: "docker",
    SANDBOX_POOL_SIZE: String(poolSize),
    SANDBOX_STATE_DIR: stateDir,
    SANDBOX_RUNNER_ID: runnerId,
    LOG_LEVEL: "warn",
  });
  const sandbox = await createCommandSandbox({
    config,
    logger: createLogger({ service: "sandbox-bench", level: "warn" }),
    metrics: createMetricsRegistry("sandbox-bench"),
    signal: AbortSignal.timeout(180_000),
  });
  if (!(sandbox instanceof DockerSandbox)) throw new Error(`the sandbox is ${sandbox.backend}, not Docker: is the Docker engine running?`);
  return sandbox;
}

/** Cold start: a container created and started for a session, with no warm pool. */
async function measureColdStarts(workspaceRoot: string, stateDir: string, samples: number): Promise<Summary> {
  const sandbox = await sandboxFor(join(stateDir, "cold"), `bench-cold-${process.pid}`, 0);
  const durations = new Samples();
  try {
    for (let index = 0; index < samples; index += 1) {
      const workspace: SandboxWorkspace = { id: `cold-${index}`, hostPath: join(workspaceRoot, "bench"), writable: true };
      const acquisition = await sandbox.acquireSession(workspace);
      if (acquisition?.kind !== "cold") throw new Error(`expected a cold start, got ${acquisition?.kind ?? "an existing session"}`);
      durations.push(acquisition.durationMs);
      await sandbox.releaseSession(workspace);
    }
  } finally {
    await sandbox.close();
  }
  return durations.summarize();
}

/** Warm acquire: a started container handed over from the pool, the workspace bound into it. */
async function measureWarmAcquires(workspaceRoot: string, stateDir: string, samples: number): Promise<{ readWrite: Summary; readOnly: Summary; poolEnabled: boolean }> {
  const poolSize = 4;
  const sandbox = await sandboxFor(join(stateDir, "warm"), `bench-warm-${process.pid}`, poolSize);
  const readWrite = new Samples();
  const readOnly = new Samples();
  try {
    for (let index = 0; index < samples * 2; index += 1) {
      // The refill is not part of a hand-over: wait for it outside the measured span.
      await sandbox.waitForIdle(1, 30_000);
      const writable = index % 2 === 0;
      const workspace: SandboxWorkspace = { id: `warm-${index}`, hostPath: join(workspaceRoot, "bench"), writable };
      const acquisition = await sandbox.acquireSession(workspace);
      if (acquisition?.kind !== "warm") throw new Error(`expected a warm hand-over, got ${acquisition?.kind ?? "an existing session"}`);
      (writable ? readWrite : readOnly).push(acquisition.durationMs);
      await sandbox.releaseSession(workspace);
    }
    return { readWrite: readWrite.summarize(), readOnly: readOnly.summarize(), poolEnabled: sandbox.warmPoolEnabled };
  } finally {
    await sandbox.close();
  }
}

function runTrue(tools: ToolServiceClient, workspaceId: string, callId: string) {
  return tools.executeTool({
    toolName: "run_command",
    argumentsJson: '{"command":"true"}',
    workspaceId,
    agentType: "edit",
    timeoutMs: 30_000,
    callId,
  });
}

async function measureRoundTrips(tools: ToolServiceClient, count: number): Promise<Summary> {
  for (let index = 0; index < 5; index += 1) await runTrue(tools, "bench", "warm-up");
  const durations = new Samples();
  for (let index = 0; index < count; index += 1) {
    const startedAt = performance.now();
    const result = await runTrue(tools, "bench", `round-trip-${index}`);
    durations.push(performance.now() - startedAt);
    if (!result.success) throw new Error(`run_command "true" failed: ${result.error || result.output}`);
  }
  return durations.summarize();
}

interface ParallelRow {
  label: string;
  commands: number;
  wallMs: Summary;
  commandsPerS: number;
  failures: number;
}

async function measureParallel(tools: ToolServiceClient, label: string, workspaces: number, rounds: number): Promise<ParallelRow> {
  const commands = 100;
  const wall = new Samples();
  let failures = 0;
  let totalMs = 0;
  // One warm-up round so that every workspace has its session before the clock runs.
  await Promise.all(Array.from({ length: workspaces }, (_, index) => runTrue(tools, `parallel-${index}`, "warm-up")));
  for (let round = 0; round < rounds; round += 1) {
    const startedAt = performance.now();
    const results = await Promise.all(Array.from({ length: commands }, (_, index) => runTrue(tools, `parallel-${index % workspaces}`, `p-${round}-${index}`)));
    const elapsed = performance.now() - startedAt;
    wall.push(elapsed);
    totalMs += elapsed;
    failures += results.filter((result) => !result.success).length;
  }
  return { label, commands, wallMs: wall.summarize(), commandsPerS: (commands * rounds * 1000) / totalMs, failures };
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  note(`sandbox benchmark: ${cpus().length} CPUs, load ${loadavg().map((value) => value.toFixed(2)).join(" ")}`);
  const workspaceRoot = await mkdtemp(join(tmpdir(), "sandbox-bench-workspaces-"));
  const stateDir = await mkdtemp(join(tmpdir(), "sandbox-bench-state-"));
  await mkdir(join(workspaceRoot, "bench"));
  const started: MeshProcess[] = [];
  const channels: Channel[] = [];
  try {
    note("cold starts…");
    const cold = await measureColdStarts(workspaceRoot, stateDir, options.coldSamples);
    note("warm hand-overs…");
    const warm = await measureWarmAcquires(workspaceRoot, stateDir, options.warmSamples);

    note("starting a tool-runner and a gateway…");
    const env = {
      ...process.env,
      INTERNAL_SECRET: secret,
      VLINDERS_ENV: "test",
      LOG_LEVEL: "warn",
      GRPC_HOST: "127.0.0.1",
      GRPC_PORT: "0",
      METRICS_PORT: "0",
    };
    const toolRunner = await spawnService({
      name: "tool-runner",
      script: join(rootDir, "services/tool-runner/dist/main.js"),
      cwd: rootDir,
      env: { ...env, LOG_LEVEL: "info", WORKSPACE_ROOT: workspaceRoot, SANDBOX_BACKEND: "docker", SANDBOX_POOL_SIZE: "12", SANDBOX_STATE_DIR: join(stateDir, "service"), SANDBOX_RUNNER_ID: `bench-service-${process.pid}` },
      readyTimeoutMs: 180_000,
    });
    started.push(toolRunner);
    const toolRunnerAddress = `127.0.0.1:${String(toolRunner.listening.grpc_port)}`;
    const gateway = await spawnService({
      name: "gateway",
      script: join(rootDir, "services/gateway/dist/main.js"),
      cwd: rootDir,
      env: { ...env, LOG_LEVEL: "info", TOOL_RUNNER_ADDRESS: toolRunnerAddress },
      readyTimeoutMs: 60_000,
    });
    started.push(gateway);
    const clientFor = (address: string) => {
      const channel = createChannel(address);
      channels.push(channel);
      return createClient(ToolServiceDefinition, channel, { "*": { metadata: Metadata({ "x-internal-auth": secret }) } });
    };
    const direct = clientFor(toolRunnerAddress);
    const viaGateway = clientFor(`127.0.0.1:${String(gateway.listening.grpc_port)}`);

    note("round trips…");
    const roundTrip = await measureRoundTrips(direct, options.roundTrips);
    const gatewayRoundTrip = await measureRoundTrips(viaGateway, options.roundTrips);
    note("100 commands at once…");
    const parallel = [
      await measureParallel(direct, "100 at once, 1 workspace", 1, options.parallelRounds),
      await measureParallel(direct, "100 at once, 10 workspaces", 10, options.parallelRounds),
    ];

    const rows: Array<[string, Summary]> = [
      ["cold start (create + start)", cold],
      ["warm acquire, read-write", warm.readWrite],
      ["warm acquire, read-only", warm.readOnly],
      ["run_command true, tool-runner", roundTrip],
      ["run_command true, via gateway", gatewayRoundTrip],
    ];
    const lines = [
      "",
      `sandbox benchmark (${cpus().length} CPUs, Docker${warm.poolEnabled ? ", warm pool with late workspace binding" : ", warm pool DISABLED"})`,
      "",
      `${"what".padEnd(34)} ${"n".padStart(5)} ${"p50 ms".padStart(8)} ${"p90 ms".padStart(8)} ${"p99 ms".padStart(8)} ${"max ms".padStart(8)}`,
      ...rows.map(([label, summary]) =>
        `${label.padEnd(34)} ${String(summary.count).padStart(5)} ${fixed(summary.p50).padStart(8)} ${fixed(summary.p90).padStart(8)} ${fixed(summary.p99).padStart(8)} ${fixed(summary.max).padStart(8)}`,
      ),
      "",
      `${"parallel".padEnd(34)} ${"wall p50 ms".padStart(12)} ${"commands/s".padStart(11)} ${"failures".padStart(9)}`,
      ...parallel.map((row) => `${row.label.padEnd(34)} ${fixed(row.wallMs.p50).padStart(12)} ${row.commandsPerS.toFixed(0).padStart(11)} ${String(row.failures).padStart(9)}`),
      "",
      `goal: warm acquire p50 <= ${goal.warmAcquireP50Ms} ms, cold start p50 <= ${goal.coldStartP50Ms} ms, round trip p50 <= ${goal.execRoundtripP50Ms} ms`,
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
    const summary = {
      bench: "sandbox",
      warm_acquire_p50_ms: round(warm.readWrite.p50),
      warm_acquire_p99_ms: round(warm.readWrite.p99),
      warm_acquire_read_only_p50_ms: round(warm.readOnly.p50),
      warm_acquire_read_only_p99_ms: round(warm.readOnly.p99),
      cold_start_p50_ms: round(cold.p50),
      cold_start_p99_ms: round(cold.p99),
      exec_roundtrip_p50_ms: round(roundTrip.p50),
      exec_roundtrip_p99_ms: round(roundTrip.p99),
      gateway_exec_roundtrip_p50_ms: round(gatewayRoundTrip.p50),
      gateway_exec_roundtrip_p99_ms: round(gatewayRoundTrip.p99),
      parallel_100_one_workspace_commands_per_s: Math.round(parallel[0]?.commandsPerS ?? 0),
      parallel_100_ten_workspaces_commands_per_s: Math.round(parallel[1]?.commandsPerS ?? 0),
      parallel_failures: parallel.reduce((sum, row) => sum + row.failures, 0),
      warm_pool_enabled: warm.poolEnabled,
      // NaN (no samples) fails every goal.
      goal_met: {
        warm_acquire: warm.readWrite.p50 <= goal.warmAcquireP50Ms,
        warm_acquire_read_only: warm.readOnly.p50 <= goal.warmAcquireP50Ms,
        cold_start: cold.p50 <= goal.coldStartP50Ms,
        exec_roundtrip: roundTrip.p50 <= goal.execRoundtripP50Ms,
      },
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    for (const channel of channels) channel.close();
    for (const process_ of started.reverse()) await process_.stop();
    await rm(workspaceRoot, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  }
}

function round(value: number): number | null {
  return Number.isFinite(value) ? Math.round(value * 100) / 100 : null;
}

main().catch((error: unknown) => {
  process.stderr.write(`benchmark failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
