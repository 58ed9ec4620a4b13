import { randomBytes } from "node:crypto";
import { setMaxListeners } from "node:events";
import { mkdir, rmdir } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import type Docker from "dockerode";
import type { Logger } from "@vlinders/service-runtime";
import { CommandServerConnection, type ServerExit } from "./command-server-client";
import { withDeadline } from "./host-process";
import { bindWorkspaceIntoSlot, ensureSharedMount, MountShell, mountsBelow, unmountAll } from "./host-mounts";
import { OutputCapture } from "./output-capture";
import { SandboxContainerDiedError, type CommandKillReason, type CommandOutcome, type CommandRequest, type CommandSandbox, type SandboxStats, type SandboxWorkspace } from "./sandbox";
import { commandServerImagePath } from "./sandbox-image";
import { recordKill, type SandboxMetrics } from "./sandbox-metrics";
import { defaultSandboxUser, sandboxUser, type SandboxUser } from "./sandbox-user";
import { StartLimiter } from "./start-limiter";

/** Settings of the Docker backend (from the SANDBOX_* variables). */
export interface DockerSandboxOptions {
  readonly docker: Docker;
  readonly image: string;
  /** Labels this process's containers; leftovers with this id are removed at start. */
  readonly runnerId: string;
  /** Absolute; holds `slots/` (a shared mount) and `staging/`. One runner per directory. */
  readonly stateDir: string;
  readonly poolSize: number;
  readonly memoryMb: number;
  readonly cpus: number;
  readonly pidsLimit: number;
  readonly tmpfsMb: number;
  readonly idleMs: number;
  readonly outputKillBytes: number;
  /** Container starts (cold and pooled) under way at once at most; the others wait their turn. */
  readonly maxConcurrentStarts: number;
  readonly logger: Logger;
  readonly metrics: SandboxMetrics;
  /**
   * The user of pooled containers, and of sessions whose workspace directory is owned by root (see
   * `sandboxUser`); 1000:1000 by default. A workspace owned by another non-root user gets a cold
   * container created as its owner.
   */
  readonly fallbackUser?: SandboxUser;
}

/** How a session got its container, and how long that took. */
export interface SessionAcquisition {
  /** warm: a pooled container got the workspace mounted into it; cold: a container was started. */
  readonly kind: "warm" | "cold";
  readonly durationMs: number;
}

/** Label keys on every sandbox container. */
export const sandboxLabels = { sandbox: "vlinders.sandbox", runner: "vlinders.runner", createdAt: "vlinders.sandbox.created-at" } as const;

/** The default runner id: SANDBOX_RUNNER_ID when set, else the host name (a pod's name in Kubernetes). */
export function defaultRunnerId(): string {
  return hostname().replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 63) || "runner";
}

interface SandboxContainer {
  readonly id: string;
  readonly container: Docker.Container;
  /** The container's command server; undefined only for leftovers being reaped (and before the attach). */
  server?: CommandServerConnection;
  /** Who its commands run as (fixed when the container was created). */
  readonly user?: SandboxUser;
  /** Set for pooled containers: the directory bound at /workspace that the workspace is mounted onto. */
  readonly slotDir?: string;
  readonly stagingDir?: string;
  /** Commands sent to it whose `run` has not returned yet. */
  commands: number;
  /** No new command goes to it; it is removed once `commands` is 0. */
  tainted: boolean;
  /** The cgroup's oom_kill count already put down to a command. */
  oomKillsSeen: number;
  removal?: Promise<void>;
  /** Why it died, looked up once for all the commands that were in flight. */
  death?: Promise<{ outOfMemory: boolean; detail: string }>;
}

interface Session {
  readonly key: string;
  readonly box: SandboxContainer;
  idleTimer?: NodeJS.Timeout;
}

interface Acquisition {
  readonly session: Session;
  readonly kind: "warm" | "cold";
  readonly durationMs: number;
}

const dockerCallDeadlineMs = 30_000;
const removeDeadlineMs = 15_000;
const serverReadyDeadlineMs = 15_000;
const oomCheckDeadlineMs = 5_000;
const refillConcurrency = 2;
const refillBackoffMs = { first: 500, max: 30_000 };
const containerEnv = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"];
const oomCountCommand = "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events 2>/dev/null";

/**
 * Commands in Docker containers: no network, read-only root, all capabilities dropped, memory,
 * CPU and PID limits, non-root. A workspace session (workspace id + access mode) keeps one
 * container, whose main process is the command server (sandbox-agent/command-server.py): the
 * tool-runner attaches to the container once, before starting it, and sends commands over its
 * stdin, so a command costs a fork in the container instead of a `docker exec`. Commands of one
 * session run in parallel.
 *
 * A command killed for its timeout, its output or a cancel gets SIGKILL to its process group and
 * its call returns at once; its container is tainted as well: no new command goes to it (the
 * session's next command gets a fresh container) and it is removed once the commands still running
 * in it have ended, so a process that escaped the group dies with it. A container that dies by
 * itself fails the commands in flight with a SandboxContainerDiedError and is replaced the same way.
 * Containers are also removed after `idleMs` without commands.
 *
 * Users: a container's user is fixed at creation. Pooled containers run as `fallbackUser`
 * (1000:1000); a session whose workspace directory belongs to another non-root user (see
 * `sandboxUser`) gets a cold container created as that user instead. The tool layer should create
 * workspaces owned by 1000:1000 (and chown what it writes into them) to get warm hand-overs.
 *
 * Warm pool: when this process is root and can make `$stateDir/slots` a shared mount, `poolSize`
 * containers are kept started, each with an empty slot directory bound at /workspace with `rslave`
 * propagation. Handing one to a session is a `mount --bind` of the workspace onto its slot on the
 * host (run by one long-lived root shell), which propagates into the running container:
 * milliseconds instead of a container start. Otherwise (or when the pool is empty) a session gets
 * a cold container with the workspace bound at creation. Needs this process and the Docker daemon
 * in one mount namespace.
 */
export class DockerSandbox implements CommandSandbox {
  readonly backend = "docker" as const;
  readonly #options: DockerSandboxOptions;
  readonly #poolUser: SandboxUser;
  readonly #slotsDir: string;
  readonly #stagingDir: string;
  readonly #mountShell = new MountShell();
  readonly #starts: StartLimiter;
  #warmPool = false;
  readonly #idle: SandboxContainer[] = [];
  #starting = 0;
  #refilling: Promise<void> | undefined;
  readonly #sessions = new Map<string, Session>();
  // A session's container being acquired: concurrent first commands share it.
  readonly #acquiring = new Map<string, Promise<Acquisition>>();
  // Calls of `run` per session key that have not returned: the idle timer waits for them.
  readonly #pending = new Map<string, number>();
  // Removals and other work that no caller waits for; close() does.
  readonly #background = new Set<Promise<void>>();
  readonly #closing = new AbortController();

  private constructor(options: DockerSandboxOptions) {
    this.#options = options;
    this.#poolUser = options.fallbackUser ?? defaultSandboxUser;
    this.#slotsDir = join(options.stateDir, "slots");
    this.#stagingDir = join(options.stateDir, "staging");
    this.#starts = new StartLimiter(options.maxConcurrentStarts);
    // Every command in flight listens to it (a hundred at once is normal).
    setMaxListeners(0, this.#closing.signal);
  }

  /**
   * Removes this runner's leftovers (containers and mounts of a previous process that crashed),
   * sets up the warm pool's shared mount when it can, and starts filling the pool in the background.
   */
  static async create(options: DockerSandboxOptions): Promise<DockerSandbox> {
    const sandbox = new DockerSandbox(options);
    await sandbox.#reapLeftovers();
    await sandbox.#setUpWarmPool();
    sandbox.#updateGauges();
    sandbox.#refill();
    return sandbox;
  }

  /** True when sessions get pooled containers by hand-over (root, shared mounts work, poolSize > 0). */
  get warmPoolEnabled(): boolean {
    return this.#warmPool;
  }

  stats(): SandboxStats {
    return { backend: "docker", idle: this.#idle.length, busy: this.#sessions.size, targetPoolSize: this.#warmPool ? this.#options.poolSize : 0 };
  }

  async run(workspace: SandboxWorkspace, request: CommandRequest): Promise<CommandOutcome> {
    const startedAt = performance.now();
    const key = sessionKey(workspace);
    const remaining = () => request.timeoutMs - (performance.now() - startedAt);
    this.#pending.set(key, (this.#pending.get(key) ?? 0) + 1);
    try {
      // A container that died a moment ago is noticed here; one more try gets a fresh one.
      for (let attempt = 0; ; attempt += 1) {
        const waited = await waitUnless(this.#session(workspace), request.signal, remaining());
        if (waited === "timeout" || waited === "cancelled") return notRun(waited, startedAt, this.#options.metrics);
        const { box } = waited.value.session;
        if (!usable(box)) {
          if (attempt === 0) continue;
          throw new SandboxContainerDiedError("the sandbox container died twice before a command could start in it");
        }
        const outcome = await this.#runIn(box, request, remaining(), startedAt);
        recordKill(this.#options.metrics, outcome.killedBecause);
        return outcome;
      }
    } finally {
      const left = (this.#pending.get(key) ?? 1) - 1;
      if (left === 0) this.#pending.delete(key);
      else this.#pending.set(key, left);
      this.#armIdleTimer(key);
    }
  }

  /**
   * Binds a container to the workspace's session when it has none yet, and says how (for the
   * benchmark and tests: a warm hand-over or a cold start, and its duration). Returns undefined
   * when the session already had its container.
   */
  async acquireSession(workspace: SandboxWorkspace): Promise<SessionAcquisition | undefined> {
    const key = sessionKey(workspace);
    const existing = this.#sessions.get(key);
    if (existing !== undefined && usable(existing.box)) return undefined;
    try {
      const { kind, durationMs } = await this.#session(workspace);
      return { kind, durationMs };
    } finally {
      this.#armIdleTimer(key);
    }
  }

  /** Ends the workspace's session now (as its idle timeout would; commands still running in it are killed) and waits for its container to go. */
  async releaseSession(workspace: SandboxWorkspace): Promise<void> {
    const session = this.#sessions.get(sessionKey(workspace));
    if (session === undefined) return;
    this.#endSession(session);
    await this.#remove(session.box);
  }

  /** Waits until the pool holds `count` idle containers (tests and benchmarks). */
  async waitForIdle(count: number, timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.#idle.length < count) {
      if (performance.now() > deadline) throw new Error(`the warm pool did not reach ${count} idle containers within ${timeoutMs} ms (has ${this.#idle.length})`);
      await delay(20);
    }
  }

  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    // Commands in flight are killed as cancelled (their listeners of this signal) and return.
    this.#closing.abort(new Error("the sandbox is closing"));
    await this.#refilling;
    await Promise.allSettled([...this.#acquiring.values()]);
    const boxes = [...this.#idle.splice(0), ...[...this.#sessions.values()].map((session) => session.box)];
    for (const session of this.#sessions.values()) clearTimeout(session.idleTimer);
    this.#sessions.clear();
    this.#updateGauges();
    await Promise.all(boxes.map((box) => this.#remove(box)));
    while (this.#background.size > 0) await Promise.allSettled([...this.#background]);
    await this.#unmountEverything();
    await this.#mountShell.close();
  }

  /** The session's container: its current one while usable, else a new one (shared by concurrent callers). */
  async #session(workspace: SandboxWorkspace): Promise<Acquisition> {
    const key = sessionKey(workspace);
    const existing = this.#sessions.get(key);
    if (existing !== undefined) {
      if (usable(existing.box)) {
        clearTimeout(existing.idleTimer);
        return { session: existing, kind: "warm", durationMs: 0 };
      }
      this.#endSession(existing);
    }
    let acquiring = this.#acquiring.get(key);
    if (acquiring === undefined) {
      acquiring = this.#acquire(workspace)
        .then(async ({ box, kind, durationMs }) => {
          if (this.#closing.signal.aborted) {
            await this.#remove(box);
            throw new Error("the sandbox is closed");
          }
          const session: Session = { key, box };
          this.#sessions.set(key, session);
          this.#updateGauges();
          return { session, kind, durationMs };
        })
        .finally(() => this.#acquiring.delete(key));
      this.#acquiring.set(key, acquiring);
      // Callers that gave up waiting (timeout, cancel) leave it to the next caller, or to close().
      acquiring.catch(() => {});
    }
    return acquiring;
  }

  async #acquire(workspace: SandboxWorkspace): Promise<{ box: SandboxContainer; kind: "warm" | "cold"; durationMs: number }> {
    if (this.#closing.signal.aborted) throw new Error("the sandbox is closed");
    const startedAt = performance.now();
    const user = await sandboxUser(workspace.hostPath, this.#poolUser);
    // Pooled containers run as the pool's user: a workspace of another owner gets a container of its own.
    const pooled = sameUser(user, this.#poolUser) ? this.#takeIdle() : undefined;
    if (pooled?.slotDir !== undefined) {
      this.#refill();
      try {
        const staging = workspace.writable ? undefined : pooled.stagingDir;
        await bindWorkspaceIntoSlot(workspace.hostPath, pooled.slotDir, staging, (script, args) => this.#mountShell.run(script, args));
        const durationMs = performance.now() - startedAt;
        this.#options.metrics.acquireSeconds.observe({ kind: "warm" }, durationMs / 1000);
        return { box: pooled, kind: "warm", durationMs };
      } catch (error: unknown) {
        this.#options.logger.warn({ err: error, container: pooled.id }, "hand-over of a pooled container failed; starting a cold one");
        this.#track(this.#remove(pooled));
      }
    }
    const box = await this.#startContainer({ Type: "bind", Source: workspace.hostPath, Target: "/workspace", ReadOnly: !workspace.writable }, user);
    const durationMs = performance.now() - startedAt;
    this.#options.metrics.acquireSeconds.observe({ kind: "cold" }, durationMs / 1000);
    return { box, kind: "cold", durationMs };
  }

  #takeIdle(): SandboxContainer | undefined {
    for (let box = this.#idle.shift(); box !== undefined; box = this.#idle.shift()) {
      if (usable(box)) return box;
      this.#track(this.#remove(box));
    }
    this.#updateGauges();
    return undefined;
  }

  /**
   * Creates a container, attaches to it (before the start: not a frame is missed), starts it and
   * waits for its command server; at most `maxConcurrentStarts` at once.
   */
  async #startContainer(workspaceMount: Docker.MountSettings, user: SandboxUser, slot?: { slotDir: string; stagingDir: string }): Promise<SandboxContainer> {
    return this.#starts.run(async () => {
      if (this.#closing.signal.aborted) throw new Error("the sandbox is closed");
      return this.#startContainerNow(workspaceMount, user, slot);
    });
  }

  async #startContainerNow(workspaceMount: Docker.MountSettings, user: SandboxUser, slot?: { slotDir: string; stagingDir: string }): Promise<SandboxContainer> {
    const o = this.#options;
    const container = await withDeadline(
      o.docker.createContainer({
        Image: o.image,
        Cmd: ["python3", commandServerImagePath],
        User: `${user.uid}:${user.gid}`,
        WorkingDir: "/workspace",
        Env: containerEnv,
        Labels: { [sandboxLabels.sandbox]: "1", [sandboxLabels.runner]: o.runnerId, [sandboxLabels.createdAt]: new Date().toISOString() },
        NetworkDisabled: true,
        // Commands go in over stdin and their output comes back over stdout, both kept open for the container's life.
        OpenStdin: true,
        StdinOnce: false,
        AttachStdin: true,
        AttachStdout: true,
        AttachStderr: true,
        Tty: false,
        HostConfig: {
          NetworkMode: "none",
          Memory: o.memoryMb * 1024 * 1024,
          MemorySwap: o.memoryMb * 1024 * 1024, // Equal to Memory: no swap, so a memory bomb meets the OOM killer at once.
          NanoCpus: Math.round(o.cpus * 1e9),
          PidsLimit: o.pidsLimit,
          ReadonlyRootfs: true,
          Tmpfs: { "/tmp": `rw,nosuid,nodev,size=${o.tmpfsMb}m,mode=1777` },
          CapDrop: ["ALL"],
          // Docker's default seccomp profile stays on: no SecurityOpt turns it off.
          SecurityOpt: ["no-new-privileges"],
          // No docker-init: it would hold the protocol pipes as its stdio while dumpable, so a command
          // (same uid) could forge frames through /proc/1/fd/1. The command server is PID 1, reaps
          // orphans itself and is non-dumpable (see command-server.py).
          Init: false,
          // The command server's stdout carries every command's output: the daemon must not log it to disk too.
          LogConfig: { Type: "none", Config: {} },
          Mounts: [workspaceMount],
        },
      }),
      dockerCallDeadlineMs,
      "creating a sandbox container",
      // A create that answers after the deadline made a container nobody tracks: remove it now, not at the next restart.
      { onAbandoned: (late) => this.#track(this.#remove({ id: late.id, container: late, commands: 0, tainted: true, oomKillsSeen: 0 })) },
    );
    const box: SandboxContainer = { id: container.id, container, user, ...slot, commands: 0, tainted: false, oomKillsSeen: 0 };
    try {
      const stream = (await withDeadline(
        container.attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true }),
        dockerCallDeadlineMs,
        "attaching to a sandbox container",
        // The container itself is removed below; a late stream must not stay open to it.
        { onAbandoned: (late) => (late as unknown as Duplex).destroy() },
      )) as unknown as Duplex;
      const server = new CommandServerConnection(stream, {
        onServerStderr: (text) => o.logger.debug({ container: container.id, text: text.slice(0, 2_000) }, "sandbox command server stderr"),
        onClose: (reason) => this.#onServerClosed(box, reason),
      });
      box.server = server;
      await withDeadline(container.start(), dockerCallDeadlineMs, "starting a sandbox container");
      await withDeadline(
        Promise.race([
          server.ready,
          server.closed.then((reason) => {
            throw new Error(`the sandbox's command server did not start: ${reason}`);
          }),
        ]),
        serverReadyDeadlineMs,
        "waiting for the sandbox's command server",
      );
    } catch (error: unknown) {
      await this.#remove(box);
      throw error;
    }
    this.#options.metrics.containerStarts.inc();
    return box;
  }

  /** Runs one command over the container's command server. */
  async #runIn(box: SandboxContainer, request: CommandRequest, timeoutMs: number, startedAt: number): Promise<CommandOutcome> {
    const server = box.server as CommandServerConnection;
    type Ending = { exit: ServerExit } | { killed: true } | { error: Error };
    let settle!: (ending: Ending) => void;
    const ended = new Promise<Ending>((resolve) => {
      settle = resolve;
    });
    let killedBecause: CommandKillReason | undefined;
    let id: number | undefined;
    const kill = (reason: CommandKillReason) => {
      if (killedBecause !== undefined) return;
      killedBecause = reason;
      if (id !== undefined) {
        server.kill(id);
        // Whatever it left behind (a child in a session of its own) dies with the container.
        this.#taint(box);
      }
      settle({ killed: true });
    };
    const capture = new OutputCapture({ limitBytes: request.outputLimitBytes, killBytes: this.#options.outputKillBytes, onKillLimit: () => kill("output-limit") });
    const timer = setTimeout(() => kill("timeout"), Math.max(0, timeoutMs));
    const onAbort = () => kill("cancelled");
    request.signal.addEventListener("abort", onAbort, { once: true });
    this.#closing.signal.addEventListener("abort", onAbort, { once: true });
    box.commands += 1;
    try {
      if (request.signal.aborted || this.#closing.signal.aborted) onAbort();
      else {
        id = server.run(request.command, "/workspace", {
          onOutput: (chunk) => capture.push(chunk),
          onExit: (exit) => settle({ exit }),
          onFailure: (error) => settle({ error }),
        });
      }
      const ending = await ended;
      clearTimeout(timer);
      let exitCode: number | null = null;
      if ("error" in ending) {
        if (!(ending.error instanceof SandboxContainerDiedError)) throw ending.error;
        const death = await this.#whyDied(box);
        if (!death.outOfMemory) throw new SandboxContainerDiedError(`${ending.error.message} (${death.detail})`);
        killedBecause = "out-of-memory";
      } else if ("exit" in ending) {
        exitCode = ending.exit.code ?? (ending.exit.signal === null ? null : 128 + ending.exit.signal);
        // What it left running may have escaped its process group (a fork bomb): retire the container.
        if (ending.exit.lingering === true) this.#taint(box);
        // 137 is SIGKILL. Nobody here sent one, so the kernel's OOM killer did when the container's
        // cgroup counts a new OOM kill; a command that SIGKILLs itself keeps its 137.
        if (exitCode === 137 && (await this.#newOomKill(box))) {
          killedBecause = "out-of-memory";
          exitCode = null;
          this.#taint(box);
        }
      }
      const { output, truncated } = capture.result();
      return { exitCode, output, truncated, durationMs: performance.now() - startedAt, ...(killedBecause === undefined ? {} : { killedBecause }) };
    } finally {
      clearTimeout(timer);
      request.signal.removeEventListener("abort", onAbort);
      this.#closing.signal.removeEventListener("abort", onAbort);
      box.commands -= 1;
      this.#removeIfDone(box);
    }
  }

  /**
   * Whether the kernel's OOM killer struck in this container since the last time one was put down
   * to a command: the cgroup's own count, read from inside (cgroup v1 memory.oom_control, v2
   * memory.events; both say `oom_kill N`). Should it not be readable, a 137 nobody here caused is
   * taken for the OOM killer.
   */
  async #newOomKill(box: SandboxContainer): Promise<boolean> {
    const server = box.server;
    if (server === undefined || !server.open) return (await this.#whyDied(box)).outOfMemory;
    const chunks: Buffer[] = [];
    let id: number | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`reading the container's OOM count took over ${oomCheckDeadlineMs} ms`)), oomCheckDeadlineMs);
        id = server.run(oomCountCommand, "/", { onOutput: (chunk) => chunks.push(chunk), onExit: () => resolve(), onFailure: reject });
      });
    } catch (error: unknown) {
      if (id !== undefined) server.kill(id);
      this.#options.logger.debug({ err: error, container: box.id }, "could not read the sandbox's OOM count");
      return true;
    } finally {
      clearTimeout(timer);
    }
    const count = /oom_kill (\d+)/.exec(Buffer.concat(chunks).toString("utf8"))?.[1];
    if (count === undefined) return true;
    const seen = box.oomKillsSeen;
    box.oomKillsSeen = Math.max(seen, Number(count));
    return Number(count) > seen;
  }

  /** Why a container's command server went away: the OOM killer (Docker's OOMKilled), or its exit status. */
  async #whyDied(box: SandboxContainer): Promise<{ outOfMemory: boolean; detail: string }> {
    box.death ??= (async () => {
      try {
        const { State } = await withDeadline(box.container.inspect(), dockerCallDeadlineMs, "inspecting a sandbox container");
        return { outOfMemory: State.OOMKilled, detail: `container ${State.Status}, exit code ${State.ExitCode}${State.OOMKilled ? ", OOM-killed" : ""}` };
      } catch (error: unknown) {
        const gone = (error as { statusCode?: number }).statusCode === 404;
        return { outOfMemory: false, detail: gone ? "the container was removed" : `could not inspect it: ${error instanceof Error ? error.message : String(error)}` };
      }
    })();
    return box.death;
  }

  /** The connection to a container's command server ended: expected when we remove it, else it died. */
  #onServerClosed(box: SandboxContainer, reason: string): void {
    if (box.removal !== undefined || this.#closing.signal.aborted) return;
    this.#options.logger.warn({ container: box.id, reason }, "a sandbox container died; its commands in flight fail and it is replaced");
    const index = this.#idle.indexOf(box);
    if (index >= 0) {
      this.#idle.splice(index, 1);
      this.#refill();
    }
    // Its commands in flight look up the cause before the container goes: they remove it when they are done.
    this.#taint(box);
  }

  /** No new command goes to the container; it goes once its commands have ended. */
  #taint(box: SandboxContainer): void {
    box.tainted = true;
    for (const session of this.#sessions.values()) if (session.box === box) this.#endSession(session);
    this.#removeIfDone(box);
  }

  #removeIfDone(box: SandboxContainer): void {
    if (box.tainted && box.commands === 0 && box.removal === undefined) this.#track(this.#remove(box));
  }

  /** Takes the session out of the map (its container is then tainted or being removed). */
  #endSession(session: Session): void {
    clearTimeout(session.idleTimer);
    if (this.#sessions.get(session.key) === session) {
      this.#sessions.delete(session.key);
      this.#updateGauges();
    }
    session.box.tainted = true;
    this.#removeIfDone(session.box);
  }

  #armIdleTimer(key: string): void {
    const session = this.#sessions.get(key);
    if (!session || (this.#pending.get(key) ?? 0) > 0) return;
    clearTimeout(session.idleTimer);
    session.idleTimer = setTimeout(() => {
      if ((this.#pending.get(key) ?? 0) > 0 || this.#sessions.get(key) !== session) return;
      this.#endSession(session);
    }, this.#options.idleMs);
    session.idleTimer.unref();
  }

  /** Removes a container (killing everything in it), then unmounts its slot: never reused. Idempotent. */
  async #remove(box: SandboxContainer): Promise<void> {
    box.tainted = true;
    box.removal ??= this.#removeNow(box);
    await box.removal;
  }

  async #removeNow(box: SandboxContainer): Promise<void> {
    try {
      await withDeadline(box.container.remove({ force: true, v: true }), removeDeadlineMs, "removing a sandbox container");
    } catch (error: unknown) {
      if ((error as { statusCode?: number }).statusCode !== 404) this.#options.logger.warn({ err: error, container: box.id }, "could not remove a sandbox container");
    }
    box.server?.close("the container was removed");
    if (box.slotDir !== undefined) {
      try {
        // Not through the mount shell: a removal must not hold up the next hand-over.
        await unmountAll(box.stagingDir === undefined ? [box.slotDir] : [box.slotDir, box.stagingDir]);
        await rmdir(box.slotDir).catch(() => {});
        if (box.stagingDir !== undefined) await rmdir(box.stagingDir).catch(() => {});
      } catch (error: unknown) {
        this.#options.logger.warn({ err: error, slot: box.slotDir }, "could not unmount a sandbox slot");
      }
    }
  }

  #track(work: Promise<void>): void {
    const tracked = work.catch((error: unknown) => this.#options.logger.warn({ err: error }, "sandbox background work failed"));
    this.#background.add(tracked);
    void tracked.finally(() => this.#background.delete(tracked));
  }

  /** Starts the refill loop unless it runs; it tops the pool up to poolSize, a few starts at a time. */
  #refill(): void {
    if (!this.#warmPool || this.#refilling || this.#closing.signal.aborted) return;
    this.#refilling = this.#refillLoop().finally(() => {
      this.#refilling = undefined;
    });
  }

  async #refillLoop(): Promise<void> {
    let backoffMs = refillBackoffMs.first;
    while (!this.#closing.signal.aborted) {
      const deficit = this.#options.poolSize - this.#idle.length - this.#starting;
      if (deficit <= 0) return;
      const batch = Math.min(deficit, refillConcurrency);
      this.#starting += batch;
      const results = await Promise.allSettled(Array.from({ length: batch }, () => this.#startPooled()));
      this.#starting -= batch;
      const failure = results.find((result): result is PromiseRejectedResult => result.status === "rejected");
      if (failure) {
        this.#options.logger.warn({ err: failure.reason, retryInMs: backoffMs }, "could not start a pooled sandbox container");
        await delay(backoffMs, this.#closing.signal);
        backoffMs = Math.min(backoffMs * 2, refillBackoffMs.max);
      } else {
        backoffMs = refillBackoffMs.first;
      }
    }
  }

  async #startPooled(): Promise<void> {
    const name = randomBytes(8).toString("hex");
    const slot = { slotDir: join(this.#slotsDir, name), stagingDir: join(this.#stagingDir, name) };
    // The staging directory is made now, not during a read-only hand-over.
    await mkdir(slot.slotDir);
    await mkdir(slot.stagingDir);
    let box: SandboxContainer;
    try {
      box = await this.#startContainer({ Type: "bind", Source: slot.slotDir, Target: "/workspace", BindOptions: { Propagation: "rslave" } }, this.#poolUser, slot);
    } catch (error: unknown) {
      await rmdir(slot.slotDir).catch(() => {});
      await rmdir(slot.stagingDir).catch(() => {});
      throw error;
    }
    if (this.#closing.signal.aborted || !usable(box)) {
      await this.#remove(box);
      return;
    }
    this.#idle.push(box);
    this.#updateGauges();
  }

  async #setUpWarmPool(): Promise<void> {
    const { poolSize, logger } = this.#options;
    if (poolSize === 0) {
      logger.info("sandbox warm pool off (SANDBOX_POOL_SIZE=0): every session starts a container");
      return;
    }
    if (process.getuid?.() !== 0) {
      logger.warn("sandbox warm pool off: handing workspaces to pooled containers needs mounts, so root; every session starts a container (~0.3 s)");
      return;
    }
    try {
      await mkdir(this.#slotsDir, { recursive: true });
      await mkdir(this.#stagingDir, { recursive: true });
      await ensureSharedMount(this.#slotsDir);
      this.#warmPool = true;
      this.#options.metrics.poolTarget.set(poolSize);
      logger.info({ poolSize, slots: this.#slotsDir }, "sandbox warm pool on");
    } catch (error: unknown) {
      logger.warn({ err: error }, "sandbox warm pool off: could not make the slots directory a shared mount; every session starts a container");
    }
  }

  async #reapLeftovers(): Promise<void> {
    const { docker, runnerId, logger } = this.#options;
    const leftovers = await withDeadline(
      docker.listContainers({ all: true, filters: { label: [`${sandboxLabels.sandbox}=1`, `${sandboxLabels.runner}=${runnerId}`] } }),
      dockerCallDeadlineMs,
      "listing leftover sandbox containers",
    );
    await Promise.all(leftovers.map((info) => this.#remove({ id: info.Id, container: docker.getContainer(info.Id), commands: 0, tainted: true, oomKillsSeen: 0 })));
    const mounts = [...(await mountsBelow(this.#slotsDir)), ...(await mountsBelow(this.#stagingDir))];
    await unmountAll(mounts);
    await Promise.all(mounts.map((path) => rmdir(path).catch(() => {})));
    if (leftovers.length > 0 || mounts.length > 0) logger.warn({ containers: leftovers.length, mounts: mounts.length, runnerId }, "removed sandbox leftovers of a previous process");
  }

  async #unmountEverything(): Promise<void> {
    const mounts = [...(await mountsBelow(this.#slotsDir)), ...(await mountsBelow(this.#stagingDir))];
    try {
      // The slots' shared self-bind goes too, even if an earlier process made it: the state dir is this runner's.
      await unmountAll([...mounts, this.#slotsDir]);
    } catch (error: unknown) {
      this.#options.logger.warn({ err: error }, "could not unmount the sandbox's mounts");
    }
  }

  #updateGauges(): void {
    const { metrics } = this.#options;
    metrics.poolIdle.set(this.#idle.length);
    metrics.poolBusy.set(this.#sessions.size);
  }
}

/** Whether a new command may go to the container. */
function usable(box: SandboxContainer): boolean {
  return !box.tainted && box.removal === undefined && box.server?.open === true;
}

function sameUser(a: SandboxUser, b: SandboxUser): boolean {
  return a.uid === b.uid && a.gid === b.gid;
}

function sessionKey(workspace: SandboxWorkspace): string {
  return `${workspace.id}\u0000${workspace.writable ? "rw" : "ro"}`;
}

/** Waits for `ready` unless the caller cancels or the time runs out first (`ready` goes on, for others to use). */
async function waitUnless<T>(ready: Promise<T>, signal: AbortSignal, timeoutMs: number): Promise<{ value: T } | "timeout" | "cancelled"> {
  if (signal.aborted) return "cancelled";
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      ready.then((value) => ({ value })),
      new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), Math.max(0, timeoutMs));
      }),
      new Promise<"cancelled">((resolve) => {
        onAbort = () => resolve("cancelled");
        signal.addEventListener("abort", onAbort, { once: true });
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal.removeEventListener("abort", onAbort);
  }
}

/** The outcome of a command that never started because its time ran out or it was cancelled while its container was being acquired. */
function notRun(reason: "timeout" | "cancelled", startedAt: number, metrics: SandboxMetrics): CommandOutcome {
  recordKill(metrics, reason);
  return { exitCode: null, output: "", truncated: false, killedBecause: reason, durationMs: performance.now() - startedAt };
}

async function delay(ms: number, signal?: AbortSignal): Promise<void> {
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
