import { access, chown, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
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
  SANDBOX_MAX_CONCURRENT_STARTS: 4,
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
    // Only that it ended long before the sleep would have: not how fast (a loaded host may be slow).
    expect(performance.now() - startedAt).toBeLessThan(20_000);
    const next = await sandbox.run(workspace, request("echo alive"));
    expect(next).toMatchObject({ exitCode: 0, output: "alive\n" });
  });

  it("contains a fork bomb: what it left running dies with its container and the service stays responsive", async () => {
    const workspace = await makeWorkspace("fork-bomb");
    const before = (await sandbox.run(workspace, request("cat /etc/hostname"))).output;
    // The bomb's first shell returns at once and leaves its offspring holding the output open: the
    // command server kills the group and the container is retired (had the shell stayed, its timeout would).
    const outcome = await sandbox.run(workspace, request("bash -c ':(){ :|:& };:'", { timeoutMs: 2_000 }));
    // Either way it ended: killed at its timeout, or its shell's exit with offspring lingering (whom the server killed).
    if (outcome.killedBecause === undefined) expect(outcome.exitCode).toBe(0);
    else expect(outcome).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    // Promptly: a command that is not done within its timeout would come back killed.
    const after = await sandbox.run(workspace, request("echo responsive; cat /etc/hostname", { timeoutMs: 10_000 }));
    expect(after).toMatchObject({ exitCode: 0 });
    expect(after.killedBecause).toBeUndefined();
    expect(after.output.startsWith("responsive\n")).toBe(true);
    // The bomb's container was retired, with whatever of it escaped the group.
    expect(after.output).not.toContain(before);
    const foreground = await sandbox.run(workspace, request("bash -c ':(){ :|:& };:; sleep 1000'", { timeoutMs: 1_000 }));
    expect(foreground).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    const next = await sandbox.run(workspace, request("echo still here; cat /etc/hostname", { timeoutMs: 10_000 }));
    expect(next).toMatchObject({ exitCode: 0 });
    expect(next.killedBecause).toBeUndefined();
    expect(next.output.startsWith("still here\n")).toBe(true);
    expect(next.output).not.toContain(before);
  });

  it("refuses a command's attempt to forge protocol frames through the command server's /proc entries", async () => {
    const workspace = await makeWorkspace("forgery");
    // The attack of the review: open the server's stdout (the protocol channel) through /proc and
    // write an exit frame "code 0, ALL TESTS PASSED" for every plausible command id, then inject a
    // request through its stdin. The server is PID 1 and the shell's parent ($PPID, passed in): both are tried.
    const forge = [
      "import json, os, struct, sys",
      "def frame(kind, id, payload): return struct.pack('>BII', kind, id, len(payload)) + payload",
      "forged = b''.join(frame(1, i, b'ALL TESTS PASSED\\n') + frame(3, i, json.dumps({'code': 0, 'signal': None}).encode()) for i in range(1, 5000))",
      "for target in sorted({'/proc/1/fd/1', '/proc/%s/fd/1' % sys.argv[1]}):",
      "    try:",
      "        with open(target, 'wb') as channel: channel.write(forged)",
      "        print('forged through', target)",
      "    except OSError as error: print('refused', target, type(error).__name__)",
      "try:",
      "    with open('/proc/1/fd/0', 'wb') as requests: requests.write(json.dumps({'id': 99999, 'command': 'touch /workspace/injected'}).encode() + b'\\n')",
      "    print('injected')",
      "except OSError as error: print('refused stdin', type(error).__name__)",
      "try: print('fds', os.listdir('/proc/1/fd'))",
      "except OSError as error: print('refused listing', type(error).__name__)",
    ].join("\n");
    await writeFile(join(workspace.hostPath, "forge.py"), `${forge}\n`);
    const outcome = await sandbox.run(workspace, request("python3 forge.py $PPID; sleep 20", { timeoutMs: 1_500 }));
    // The writes were refused, so the command's real timeout applied: no forged exit 0 came back early.
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    expect(outcome.output).toBe("refused /proc/1/fd/1 PermissionError\nrefused stdin PermissionError\nrefused listing PermissionError\n");
    await new Promise((resolve) => setTimeout(resolve, 300));
    await expect(access(join(workspace.hostPath, "injected"))).rejects.toMatchObject({ code: "ENOENT" });
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
    // A generous timeout: only the output limit can end `yes` before it.
    const outcome = await sandbox.run(workspace, request("echo first; yes", { outputLimitBytes: 1000, timeoutMs: 60_000 }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "output-limit", truncated: true });
    expect(outcome.output.startsWith("first\ny\ny\n")).toBe(true);
    expect(outcome.output).toMatch(/\n… \[\d+ bytes cut\] …\n/);
    expect(outcome.output.endsWith("y\n")).toBe(true);
  });

  it("kills a command when the caller cancels", async () => {
    const workspace = await makeWorkspace("cancel");
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    const startedAt = performance.now();
    const outcome = await sandbox.run(workspace, request("sleep 1000", { signal: controller.signal, timeoutMs: 60_000 }));
    expect(outcome).toMatchObject({ exitCode: null, killedBecause: "cancelled" });
    expect(performance.now() - startedAt).toBeLessThan(20_000);
    const kills = await registry.getSingleMetricAsString("tool_runner_sandbox_kills_total");
    expect(kills).toMatch(/reason="cancelled"} [1-9]/);
  });

  it("runs a session's commands in parallel, each with its own output and exit code", async () => {
    const workspace = await makeWorkspace("parallel");
    await sandbox.run(workspace, request("mkdir barrier"));
    // A barrier: each command waits until all 20 have started, which they can only do when they run
    // at once; one at a time, the first would give up (exit 99). Built-ins and one sleep each, to
    // stay far below the pids limit.
    const barrier = (index: number) =>
      `touch barrier/${index}; n=0; while set -- barrier/*; [ $# -lt 20 ]; do n=$((n+1)); [ $n -gt 400 ] && exit 99; sleep 0.05; done; ` +
      `echo out-${index}; echo err-${index} >&2; exit ${index}`;
    const outcomes = await Promise.all(Array.from({ length: 20 }, (_, index) => sandbox.run(workspace, request(barrier(index), { timeoutMs: 60_000 }))));
    outcomes.forEach((outcome, index) => expect(outcome).toMatchObject({ exitCode: index, output: `out-${index}\nerr-${index}\n` }));
  });

  it("returns a timed-out command at once while the session's other command still finishes, then retires the container", async () => {
    const workspace = await makeWorkspace("timeout-beside");
    const hostnameBefore = (await sandbox.run(workspace, request("cat /etc/hostname"))).output;
    // The other command waits for a file that the test writes only once the timed-out one has returned.
    let otherSettled = false;
    const other = sandbox.run(workspace, request("while [ ! -e go ]; do sleep 0.05; done; echo other done; cat /etc/hostname", { timeoutMs: 60_000 }));
    void other.finally(() => {
      otherSettled = true;
    });
    const timedOut = await sandbox.run(workspace, request("sleep 1000", { timeoutMs: 200 }));
    expect(timedOut).toMatchObject({ exitCode: null, killedBecause: "timeout" });
    expect(otherSettled).toBe(false);
    // A command after the kill goes to a fresh container while the other still runs in the old one.
    const fresh = await sandbox.run(workspace, request("cat /etc/hostname"));
    expect(fresh.output).not.toBe(hostnameBefore);
    expect(otherSettled).toBe(false);
    await writeFile(join(workspace.hostPath, "go"), "");
    expect(await other).toMatchObject({ exitCode: 0, output: `other done\n${hostnameBefore}` });
  });

  it("fails the commands in flight clearly when the command server dies, and the next command gets a fresh container", async () => {
    const workspace = await makeWorkspace("server-dies");
    const hostnameBefore = (await sandbox.run(workspace, request("cat /etc/hostname"))).output;
    // The command server is the container's PID 1: a command cannot kill it (the kernel ignores the signal)…
    const attempt = await sandbox.run(workspace, request("kill -9 $PPID; echo $PPID; cat /etc/hostname"));
    expect(attempt).toMatchObject({ exitCode: 0, output: `1\n${hostnameBefore}` });
    // …so it dies the way it would by an operator's hand or the daemon's: killed from outside.
    const bystander = sandbox.run(workspace, request("sleep 30", { timeoutMs: 60_000 }));
    const victim = sandbox.run(workspace, request("sleep 30", { timeoutMs: 60_000 }));
    await docker.getContainer(hostnameBefore.trim()).kill();
    await expect(victim).rejects.toThrow(SandboxContainerDiedError);
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
    const outcome = await sandbox.run(workspace, request("echo warm > w.txt; cat w.txt; ls; cat /etc/hostname"));
    const hostnameWarm = outcome.output.split("\n")[2] ?? "";
    expect(outcome.output).toBe(`warm\nw.txt\n${hostnameWarm}\n`);
    // The slot the workspace was mounted onto, as the container sees it.
    const slotDir = (await docker.getContainer(hostnameWarm).inspect()).Mounts.find((mount) => mount.Destination === "/workspace")?.Source;
    expect(slotDir).toMatch(/slots\/[0-9a-f]+$/);
    // The pool is topped up again in the background.
    await sandbox.waitForIdle(2, 20_000);
    const busy = sandbox.stats().busy;
    await sandbox.releaseSession(workspace);
    expect(sandbox.stats().busy).toBe(busy - 1);
    // A released (recycled) session's container is gone, and its slot no longer shows the workspace
    // (it is unmounted and removed: no later session can be handed it).
    await expect(docker.getContainer(hostnameWarm).inspect()).rejects.toMatchObject({ statusCode: 404 });
    await expect(readdir(slotDir as string)).rejects.toMatchObject({ code: "ENOENT" });
    expect(await readFile("/proc/self/mountinfo", "utf8")).not.toContain(` ${slotDir as string} `);
    // The workspace's files stay on the host; its next session gets another container.
    const again = await sandbox.run(workspace, request("cat w.txt; cat /etc/hostname"));
    expect(again.output).toMatch(/^warm\n/);
    expect(again.output).not.toContain(hostnameWarm);
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
