import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Docker from "dockerode";
import { Registry } from "prom-client";
import { createLogger } from "@vlinders/service-runtime";
import { createCommandSandbox, type SandboxConfig } from "./create-command-sandbox";
import { DockerSandbox, sandboxLabels } from "./docker-sandbox";
import { SandboxContainerDiedError, type CommandRequest, type CommandSandbox, type SandboxWorkspace } from "./sandbox";

// Real Docker: every test runs commands in real containers built from the locally built image.
const docker = new Docker();
const runnerId = `spec-docker-${process.pid}-${Date.now().toString(36)}`;
let root: string;
let sandbox: DockerSandbox;
let registry: Registry;

const config = (stateDir: string): SandboxConfig => ({
  VLINDERS_ENV: "test",
  SANDBOX_BACKEND: "docker",
  SANDBOX_IMAGE: "vlinders-sandbox:local",
  SANDBOX_BUILD_IMAGE: true,
  SANDBOX_POOL_SIZE: 2,
  SANDBOX_MEMORY_MB: 128,
  SANDBOX_CPUS: 1,
  SANDBOX_PIDS_LIMIT: 64,
  SANDBOX_TMPFS_MB: 16,
  SANDBOX_IDLE_MS: 60_000,
  SANDBOX_STATE_DIR: stateDir,
  SANDBOX_RUNNER_ID: runnerId,
  COMMAND_OUTPUT_KILL_BYTES: 1024 * 1024,
});

const request = (command: string, overrides: Partial<CommandRequest> = {}): CommandRequest => ({
  command,
  timeoutMs: 10_000,
  outputLimitBytes: 4096,
  signal: new AbortController().signal,
  ...overrides,
});

/** A workspace directory owned by the sandbox user, as the tool layer creates them. */
async function makeWorkspace(id: string, writable = true): Promise<SandboxWorkspace> {
  const hostPath = join(root, "workspaces", id);
  await mkdir(hostPath, { recursive: true });
  await chown(hostPath, 1000, 1000);
  return { id, hostPath, writable };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sandbox-docker-spec-"));
  registry = new Registry();
  const created = await createCommandSandbox({ config: config(join(root, "state")), logger: createLogger({ service: "spec", level: "silent" }), metrics: registry });
  expect(created).toBeInstanceOf(DockerSandbox);
  sandbox = created as DockerSandbox;
  expect(sandbox.warmPoolEnabled).toBe(true);
}, 240_000);

afterAll(async () => {
  await sandbox?.close();
  await rm(root, { recursive: true, force: true });
});

describe("the Docker sandbox", () => {
  it("returns a command's output and exit code, stdout and stderr interleaved", async () => {
    const workspace = await makeWorkspace("basics");
    const outcome = await sandbox.run(workspace, request("echo out; sleep 0.1; echo err >&2; sleep 0.1; pwd; id -u; exit 3"));
    expect(outcome).toMatchObject({ exitCode: 3, output: "out\nerr\n/workspace\n1000\n", truncated: false });
    expect(outcome.killedBecause).toBeUndefined();
  });

  it("shows the workspace writable in a read-write session and read-only in a read-only one", async () => {
    const workspace = await makeWorkspace("modes");
    await writeFile(join(workspace.hostPath, "given.txt"), "from the host\n");
    const written = await sandbox.run(workspace, request("cat given.txt && echo made > made.txt && echo ok"));
    expect(written).toMatchObject({ exitCode: 0, output: "from the host\nok\n" });
    expect(await readFile(join(workspace.hostPath, "made.txt"), "utf8")).toBe("made\n");

    const readOnly = { ...workspace, writable: false };
    const refused = await sandbox.run(readOnly, request("cat made.txt; echo x > other.txt"));
    expect(refused.exitCode).not.toBe(0);
    expect(refused.output).toContain("made\n");
    expect(refused.output).toContain("Read-only file system");
  });

  it("keeps two workspaces' sessions apart", async () => {
    const first = await makeWorkspace("apart-1");
    const second = await makeWorkspace("apart-2");
    await sandbox.run(first, request("echo secret > mine.txt"));
    const outcome = await sandbox.run(second, request("ls -A /workspace; cat /workspace/mine.txt"));
    expect(outcome.output).not.toContain("secret");
    expect(outcome.output).toContain("No such file");
  });

  it("has no network, a read-only root file system and a writable /tmp", async () => {
    const workspace = await makeWorkspace("confined");
    const network = await sandbox.run(workspace, request(`python3 -c "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)"`));
    expect(network.exitCode).not.toBe(0);
    expect(network.output).toMatch(/Network is unreachable|OSError/);
    const interfaces = await sandbox.run(workspace, request("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"));
    expect(interfaces.output).toBe("lo\n");
    const root = await sandbox.run(workspace, request("touch /x; touch /usr/x; echo tmp > /tmp/t && cat /tmp/t"));
    expect(root.output).toMatch(/touch: cannot touch '\/x': Read-only file system/);
    expect(root.output).toMatch(/touch: cannot touch '\/usr\/x': Read-only file system/);
    expect(root.output).toContain("tmp\n");
  });

  it("ends a command that never ends at its timeout, and the next command gets a fresh container", async () => {
    const workspace = await makeWorkspace("forever");
    const startedAt = performance.now();
    const outcome = await sandbox.run(workspace, request("sleep 1000", { timeoutMs: 500 }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    expect(performance.now() - startedAt).toBeLessThan(3_000);
    const next = await sandbox.run(workspace, request("echo alive"));
    expect(next).toMatchObject({ exitCode: 0, output: "alive\n" });
  });

  it("contains a fork bomb: what it left running dies with its container and the service stays responsive", async () => {
    const workspace = await makeWorkspace("fork-bomb");
    const before = (await sandbox.run(workspace, request("cat /etc/hostname"))).output;
    // The bomb's first shell returns at once and leaves its offspring holding the output open: the
    // command server kills the group and the container is retired (had the shell stayed, its timeout would).
    const outcome = await sandbox.run(workspace, request("bash -c ':(){ :|:& };:'", { timeoutMs: 2_000 }));
    expect(outcome.killedBecause === "timeout" || outcome.exitCode === 0).toBe(true);
    const foreground = await sandbox.run(workspace, request("bash -c ':(){ :|:& };:; sleep 1000'", { timeoutMs: 1_000 }));
    expect(foreground).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    const next = await sandbox.run(workspace, request("echo still here; cat /etc/hostname"));
    expect(next).toMatchObject({ exitCode: 0 });
    expect(next.output.startsWith("still here\n")).toBe(true);
    expect(next.output).not.toContain(before);
  });

  it("ends a memory bomb as out-of-memory", async () => {
    const workspace = await makeWorkspace("memory-bomb");
    // A SIGKILL that is not the OOM killer's keeps its exit code.
    expect(await sandbox.run(workspace, request("kill -9 $$"))).toMatchObject({ exitCode: 137 });
    const outcome = await sandbox.run(workspace, request(`python3 -c "blocks = [bytearray(16 * 2**20) for _ in range(64)]"`, { timeoutMs: 20_000 }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "out-of-memory" });
    const next = await sandbox.run(workspace, request("echo recovered"));
    expect(next.output).toBe("recovered\n");
  });

  it("kills a command that writes gigabytes, keeping the head and tail of its output", async () => {
    const workspace = await makeWorkspace("flood");
    const startedAt = performance.now();
    const outcome = await sandbox.run(workspace, request("echo first; yes", { outputLimitBytes: 1000 }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "output-limit", truncated: true });
    expect(performance.now() - startedAt).toBeLessThan(5_000);
    expect(outcome.output.startsWith("first\ny\ny\n")).toBe(true);
    expect(outcome.output).toMatch(/\n… \[\d+ bytes cut\] …\n/);
    expect(outcome.output.endsWith("y\n")).toBe(true);
  });

  it("kills a command when the caller cancels", async () => {
    const workspace = await makeWorkspace("cancel");
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    const startedAt = performance.now();
    const outcome = await sandbox.run(workspace, request("sleep 1000", { signal: controller.signal }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "cancelled" });
    expect(performance.now() - startedAt).toBeLessThan(3_000);
    const kills = await registry.getSingleMetricAsString("tool_runner_sandbox_kills_total");
    expect(kills).toMatch(/reason="cancelled"} [1-9]/);
  });

  it("runs a session's commands in parallel, each with its own output and exit code", async () => {
    const workspace = await makeWorkspace("parallel");
    await sandbox.run(workspace, request("true"));
    const startedAt = performance.now();
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, (_, index) => sandbox.run(workspace, request(`sleep 0.5; echo out-${index}; echo err-${index} >&2; exit ${index}`))),
    );
    // One at a time this would take 10 s.
    expect(performance.now() - startedAt).toBeLessThan(4_000);
    outcomes.forEach((outcome, index) => expect(outcome).toMatchObject({ exitCode: index, output: `out-${index}\nerr-${index}\n` }));
  });

  it("returns a timed-out command at once while the session's other command still finishes, then retires the container", async () => {
    const workspace = await makeWorkspace("timeout-beside");
    const hostnameBefore = (await sandbox.run(workspace, request("cat /etc/hostname"))).output;
    const other = sandbox.run(workspace, request("sleep 1; echo other done; cat /etc/hostname"));
    const startedAt = performance.now();
    const timedOut = await sandbox.run(workspace, request("sleep 1000", { timeoutMs: 200 }));
    expect(timedOut).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    expect(performance.now() - startedAt).toBeLessThan(900);
    // A command after the kill goes to a fresh container while the other finishes in the old one.
    const fresh = await sandbox.run(workspace, request("cat /etc/hostname"));
    expect(fresh.output).not.toBe(hostnameBefore);
    expect(await other).toMatchObject({ exitCode: 0, output: `other done\n${hostnameBefore}` });
  });

  it("fails the commands in flight clearly when the command server dies, and the next command gets a fresh container", async () => {
    const workspace = await makeWorkspace("server-dies");
    const hostnameBefore = (await sandbox.run(workspace, request("cat /etc/hostname"))).output;
    const bystander = sandbox.run(workspace, request("sleep 5"));
    // The shell's parent is the command server.
    const killer = sandbox.run(workspace, request("sleep 0.2; kill -9 $PPID; sleep 5"));
    await expect(killer).rejects.toThrow(SandboxContainerDiedError);
    await expect(bystander).rejects.toThrow(/the sandbox container died: .*exit code 137/);
    const next = await sandbox.run(workspace, request("echo fine; cat /etc/hostname"));
    expect(next.exitCode).toBe(0);
    expect(next.output.startsWith("fine\n")).toBe(true);
    expect(next.output).not.toContain(hostnameBefore);
  });

  it("makes a read-only hand-over really read-only inside the container", async () => {
    await sandbox.waitForIdle(1, 20_000);
    const workspace = { ...(await makeWorkspace("ro-hand-over")), writable: false };
    await writeFile(join(workspace.hostPath, "given.txt"), "given\n");
    expect((await sandbox.acquireSession(workspace))?.kind).toBe("warm");
    const outcome = await sandbox.run(workspace, request("cat given.txt; echo x > given.txt; touch new.txt; mkdir d; grep ' /workspace ' /proc/self/mountinfo | cut -d' ' -f6"));
    expect(outcome.output).toContain("given\n");
    expect(outcome.output.match(/Read-only file system/g)).toHaveLength(3);
    expect(outcome.output.trim().split("\n").at(-1)).toMatch(/^ro,/);
    expect(await readFile(join(workspace.hostPath, "given.txt"), "utf8")).toBe("given\n");
    await sandbox.releaseSession(workspace);
  });

  it("hands pooled containers over in milliseconds, refills the pool, and recycles idle sessions", async () => {
    await sandbox.waitForIdle(2, 20_000);
    const workspace = await makeWorkspace("warm");
    const acquisition = await sandbox.acquireSession(workspace);
    expect(acquisition?.kind).toBe("warm");
    expect(acquisition?.durationMs).toBeLessThan(100);
    const outcome = await sandbox.run(workspace, request("echo warm > w.txt; cat w.txt; ls"));
    expect(outcome.output).toBe("warm\nw.txt\n");
    // The pool is topped up again in the background.
    await sandbox.waitForIdle(2, 20_000);
    const busy = sandbox.stats().busy;
    await sandbox.releaseSession(workspace);
    expect(sandbox.stats().busy).toBe(busy - 1);
    // A released (recycled) session's container is gone, and its slot no longer shows the workspace.
    const again = await sandbox.run(workspace, request("cat w.txt"));
    expect(again.output).toBe("warm\n");
  });
});

describe("a Docker sandbox's idle timeout", () => {
  it("removes a session's container after SANDBOX_IDLE_MS without commands", async () => {
    const stateDir = join(root, "idle-state");
    const idleRunner = `${runnerId}-idle`;
    const idle = await createCommandSandbox({
      config: { ...config(stateDir), SANDBOX_RUNNER_ID: idleRunner, SANDBOX_IDLE_MS: 300, SANDBOX_POOL_SIZE: 0 },
      logger: createLogger({ service: "spec", level: "silent" }),
      metrics: new Registry(),
    });
    try {
      const workspace = await makeWorkspace("idle");
      expect((await idle.run(workspace, request("true"))).exitCode).toBe(0);
      expect(idle.stats().busy).toBe(1);
      const deadline = performance.now() + 10_000;
      while (idle.stats().busy > 0 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(idle.stats().busy).toBe(0);
      // Its removal is under way or done; once close() returns nothing of this runner is left.
    } finally {
      await idle.close();
    }
    const left = await docker.listContainers({ all: true, filters: { label: [`${sandboxLabels.runner}=${idleRunner}`] } });
    expect(left).toHaveLength(0);
  });
});

export type { CommandSandbox };
