import { spawn } from "node:child_process";
import { access, chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry } from "prom-client";
import { createLogger } from "@vlinders/service-runtime";
import { createBubblewrapSandbox } from "./bubblewrap-sandbox";
import { createCommandSandbox, type SandboxConfig } from "./create-command-sandbox";
import { SandboxUnavailableError, type CommandRequest, type CommandSandbox, type SandboxWorkspace } from "./sandbox";
import { createSandboxMetrics } from "./sandbox-metrics";

// Real bubblewrap and real host processes; no Docker here.
let root: string;
const logger = createLogger({ service: "spec", level: "silent" });

const request = (command: string, overrides: Partial<CommandRequest> = {}): CommandRequest => ({
  command,
  timeoutMs: 10_000,
  outputLimitBytes: 4096,
  signal: new AbortController().signal,
  ...overrides,
});

const config = (overrides: Partial<SandboxConfig>): SandboxConfig => ({
  VLINDERS_ENV: "test",
  SANDBOX_BACKEND: "auto",
  SANDBOX_IMAGE: "vlinders-sandbox:local",
  SANDBOX_BUILD_IMAGE: false,
  SANDBOX_POOL_SIZE: 0,
  SANDBOX_MEMORY_MB: 1024,
  SANDBOX_CPUS: 1,
  SANDBOX_PIDS_LIMIT: 256,
  SANDBOX_TMPFS_MB: 16,
  SANDBOX_MAX_CONCURRENT_STARTS: 4,
  SANDBOX_IDLE_MS: 60_000,
  SANDBOX_STATE_DIR: join(tmpdir(), "unused-sandbox-state"),
  SANDBOX_RUNNER_ID: "spec-host",
  COMMAND_OUTPUT_KILL_BYTES: 256 * 1024,
  ...overrides,
});

async function makeWorkspace(id: string, writable = true): Promise<SandboxWorkspace> {
  const hostPath = join(root, id);
  await mkdir(hostPath, { recursive: true });
  await chown(hostPath, 1000, 1000);
  return { id, hostPath, writable };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sandbox-host-spec-"));
  // bwrap runs as the sandbox user, who must be able to reach the workspace (mkdtemp makes 0700).
  await chmod(root, 0o755);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("the bubblewrap sandbox", () => {
  let sandbox: CommandSandbox;
  beforeAll(async () => {
    sandbox = await createCommandSandbox({ config: config({ SANDBOX_BACKEND: "bubblewrap" }), logger, metrics: new Registry() });
    expect(sandbox.backend).toBe("bubblewrap");
  });
  afterAll(async () => {
    await sandbox.close();
  });

  it("returns output and exit code, as the workspace's user, in /workspace", async () => {
    const workspace = await makeWorkspace("bwrap-basics");
    const outcome = await sandbox.run(workspace, request("echo hello; pwd; id -u; exit 4"));
    expect(outcome).toMatchObject({ exitCode: 4, output: "hello\n/workspace\n1000\n", truncated: false });
  });

  it("writes a read-write workspace and refuses to write a read-only one", async () => {
    const workspace = await makeWorkspace("bwrap-modes");
    expect((await sandbox.run(workspace, request("echo made > made.txt"))).exitCode).toBe(0);
    expect(await readFile(join(workspace.hostPath, "made.txt"), "utf8")).toBe("made\n");
    const refused = await sandbox.run({ ...workspace, writable: false }, request("cat made.txt; echo x > other.txt"));
    expect(refused.output).toContain("made\n");
    expect(refused.output).toContain("Read-only file system");
  });

  it("counts only its own processes: many processes of the same uid elsewhere do not stop it from starting", async () => {
    // As a Docker sandbox running a fork bomb would: the sandbox uid holds more processes than the limit.
    const others = Array.from({ length: 300 }, () => spawn("setpriv", ["--reuid=1000", "--regid=1000", "--clear-groups", "sleep", "30"], { stdio: "ignore" }));
    try {
      await Promise.all(others.map((child) => new Promise((resolve) => child.once("spawn", resolve))));
      const workspace = await makeWorkspace("bwrap-own-processes");
      const outcome = await sandbox.run(workspace, request("echo started"));
      expect(outcome).toMatchObject({ exitCode: 0, output: "started\n" });
    } finally {
      for (const child of others) child.kill("SIGKILL");
    }
  });

  it("has no network and a read-only /usr", async () => {
    const workspace = await makeWorkspace("bwrap-confined");
    const network = await sandbox.run(workspace, request(`python3 -c "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)"`));
    expect(network.exitCode).not.toBe(0);
    expect(network.output).toContain("Network is unreachable");
    const usr = await sandbox.run(workspace, request("touch /usr/x; echo t > /tmp/t && cat /tmp/t"));
    expect(usr.output).toContain("Read-only file system");
    expect(usr.output).toContain("t\n");
  });

  it("kills the whole process tree at the timeout", async () => {
    const workspace = await makeWorkspace("bwrap-timeout");
    const startedAt = performance.now();
    // The background child would leave a marker 1 s in: after the kill and 1.5 s more there must be none.
    const outcome = await sandbox.run(workspace, request("(sleep 1; echo late > marker) & sleep 1000", { timeoutMs: 300 }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    expect(performance.now() - startedAt).toBeLessThan(20_000);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    await expect(access(join(workspace.hostPath, "marker"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("bounds /tmp by its size: a write past it fails with No space left on device", async () => {
    const workspace = await makeWorkspace("bwrap-tmpfs");
    // SANDBOX_TMPFS_MB is 16 here.
    const outcome = await sandbox.run(workspace, request("head -c 20M /dev/zero > /tmp/x; echo status $?; du -m /tmp/x"));
    expect(outcome.output).toContain("No space left on device");
    expect(outcome.output).toMatch(/status [1-9]/);
    expect(outcome.output).toMatch(/^1[0-6]\s+\/tmp\/x$/m);
  });

  it("kills a flood of output at the kill limit, keeping head and tail", async () => {
    const workspace = await makeWorkspace("bwrap-flood");
    const outcome = await sandbox.run(workspace, request("yes", { outputLimitBytes: 100 }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "output-limit", truncated: true });
    expect(outcome.output).toMatch(/^(y\n)+y?\n… \[\d+ bytes cut\] …\n/);
  });
});

describe("the bubblewrap sandbox's memory cgroup", () => {
  const cgroups = "/sys/fs/cgroup/memory";
  const ours = async () => (await readdir(cgroups)).filter((name) => name.startsWith("vlinders-bwrap-"));

  it("ends a sandbox whose /tmp outgrows its memory, leaves the host unharmed and removes its cgroup", async () => {
    // Runs as root on cgroup v1 here, as this service does in production; without them there is no total cap to test.
    expect(process.getuid?.()).toBe(0);
    const before = await ours();
    // /tmp may grow to 256 MB but the sandbox has 64 MB of memory: tmpfs pages count towards it.
    const sandbox = await createCommandSandbox({ config: config({ SANDBOX_BACKEND: "bubblewrap", SANDBOX_MEMORY_MB: 64, SANDBOX_TMPFS_MB: 256 }), logger, metrics: new Registry() });
    const workspace = await makeWorkspace("bwrap-memory");
    const outcome = await sandbox.run(workspace, request("head -c 200M /dev/zero > /tmp/x && echo wrote it all", { timeoutMs: 60_000 }));
    expect(outcome.output).not.toContain("wrote it all");
    expect(outcome.killedBecause === "out-of-memory" || (outcome.exitCode !== null && outcome.exitCode !== 0)).toBe(true);
    expect(outcome.killedBecause).not.toBe("timeout");
    // Many processes, each under its address-space limit, together over the cgroup's.
    const bomb = await sandbox.run(
      workspace,
      request(`for i in 1 2 3 4 5 6; do (python3 -c "b = bytearray(30 * 2**20); import time; time.sleep(3)" && echo survived) & done; wait`, { timeoutMs: 60_000 }),
    );
    expect(bomb.killedBecause).not.toBe("timeout");
    expect(bomb.output.match(/survived/g)?.length ?? 0).toBeLessThan(6);
    // The host is unharmed: the next sandbox works, and no cgroup of these commands is left.
    expect(await sandbox.run(workspace, request("echo fine"))).toMatchObject({ exitCode: 0, output: "fine\n" });
    await sandbox.close();
    expect(await ours()).toEqual(before);
  });
});

describe("the unsafe-host sandbox", () => {
  let sandbox: CommandSandbox;
  beforeAll(async () => {
    sandbox = await createCommandSandbox({ config: config({ SANDBOX_BACKEND: "unsafe-host" }), logger, metrics: new Registry() });
  });
  afterAll(async () => {
    await sandbox.close();
  });

  it("runs in the workspace directory and returns output and exit code", async () => {
    const workspace = await makeWorkspace("host-basics");
    await writeFile(join(workspace.hostPath, "f.txt"), "content\n");
    const outcome = await sandbox.run(workspace, request("cat f.txt; pwd; exit 5"));
    expect(outcome).toMatchObject({ exitCode: 5, output: `content\n${workspace.hostPath}\n` });
  });

  it("kills the process group at the timeout and on cancel", async () => {
    const workspace = await makeWorkspace("host-kill");
    const timedOut = await sandbox.run(workspace, request("sleep 1000 & sleep 1000", { timeoutMs: 300 }));
    expect(timedOut).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    const cancelled = await sandbox.run(workspace, request("sleep 1000", { signal: controller.signal }));
    expect(cancelled).toMatchObject({ exitCode: null, killedBecause: "cancelled" });
  });

  it("is refused in production", async () => {
    await expect(createCommandSandbox({ config: config({ SANDBOX_BACKEND: "unsafe-host", VLINDERS_ENV: "production" }), logger, metrics: new Registry() })).rejects.toThrow(
      SandboxUnavailableError,
    );
  });
});

describe("choosing a backend", () => {
  it("falls back to bubblewrap when no Docker daemon answers", async () => {
    const previous = process.env.DOCKER_HOST;
    process.env.DOCKER_HOST = `unix://${join(root, "no-docker.sock")}`;
    try {
      const Docker = (await import("dockerode")).default;
      const sandbox = await createCommandSandbox({ config: config({}), logger, metrics: new Registry(), docker: new Docker({ socketPath: join(root, "no-docker.sock") }) });
      expect(sandbox.backend).toBe("bubblewrap");
      await sandbox.close();
    } finally {
      if (previous === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = previous;
    }
  });

  it("refuses commands with a message that says what to install when SANDBOX_BACKEND=none", async () => {
    const sandbox = await createCommandSandbox({ config: config({ SANDBOX_BACKEND: "none" }), logger, metrics: new Registry() });
    expect(sandbox.backend).toBe("none");
    await expect(sandbox.run({ id: "w", hostPath: root, writable: true }, request("true"))).rejects.toThrow(SandboxUnavailableError);
  });

  it("counts kills on the registry it is given", async () => {
    const registry = new Registry();
    const sandbox = createBubblewrapSandbox({ memoryMb: 1024, pidsLimit: 256, tmpfsMb: 16, outputKillBytes: 1024, metrics: createSandboxMetrics(registry) });
    const workspace = await makeWorkspace("metrics");
    await sandbox.run(workspace, request("sleep 10", { timeoutMs: 100 }));
    expect(await registry.getSingleMetricAsString("tool_runner_sandbox_kills_total")).toContain('reason="timeout"} 1');
  });
});
