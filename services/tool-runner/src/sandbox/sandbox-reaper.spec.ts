import { spawn } from "node:child_process";
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Docker from "dockerode";
import { Registry } from "prom-client";
import { createLogger } from "@vlinders/service-runtime";
import { createCommandSandbox, type SandboxConfig } from "./create-command-sandbox";
import { sandboxLabels } from "./docker-sandbox";
import { mountsBelow, unmountAll } from "./host-mounts";

const docker = new Docker();
const runnerId = `spec-reaper-${process.pid}-${Date.now().toString(36)}`;
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sandbox-reaper-spec-"));
});

afterAll(async () => {
  // Should the test fail half-way, leave nothing of this runner behind.
  const left = await docker.listContainers({ all: true, filters: { label: [`${sandboxLabels.runner}=${runnerId}`] } });
  await Promise.all(left.map((info) => docker.getContainer(info.Id).remove({ force: true })));
  await unmountAll([...(await mountsBelow(root))]);
  await rm(root, { recursive: true, force: true });
});

const config = (stateDir: string): SandboxConfig => ({
  VLINDERS_ENV: "test",
  SANDBOX_BACKEND: "docker",
  SANDBOX_IMAGE: "vlinders-sandbox:local",
  SANDBOX_BUILD_IMAGE: true,
  SANDBOX_POOL_SIZE: 1,
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

// A tool-runner-like process: it loads the sandbox's TypeScript through @swc/core (as jest does),
// starts a long command, says so, and waits to be killed.
const childScript = `
const { readFileSync } = require("node:fs");
const swc = require(process.env.SWC_CORE);
require.extensions[".ts"] = (module, filename) => {
  const { code } = swc.transformSync(readFileSync(filename, "utf8"), { filename, jsc: { target: "es2022", parser: { syntax: "typescript" } }, module: { type: "commonjs" } });
  module._compile(code, filename);
};
const { createCommandSandbox } = require(process.env.SANDBOX_MODULE);
const { Registry } = require(process.env.PROM_CLIENT);
const noop = () => {};
const logger = { info: noop, warn: noop, error: noop, debug: noop, child() { return logger; } };
(async () => {
  const config = JSON.parse(process.env.SANDBOX_CONFIG);
  const sandbox = await createCommandSandbox({ config, logger, metrics: new Registry() });
  const workspace = { id: "crash", hostPath: process.env.WORKSPACE, writable: true };
  const running = sandbox.run(workspace, { command: "echo started > started.txt; sleep 1000", timeoutMs: 600000, outputLimitBytes: 1000, signal: new AbortController().signal });
  running.catch(() => {});
  process.stdout.write("running\\n");
})();
`;

describe("the sandbox reaper", () => {
  it("removes the containers and mounts a killed tool-runner left behind", async () => {
    const stateDir = join(root, "state");
    const workspace = join(root, "workspace");
    await mkdir(workspace, { recursive: true });
    await chown(workspace, 1000, 1000);
    const scriptPath = join(root, "crashing-runner.js");
    await writeFile(scriptPath, childScript);
    const child = spawn(process.execPath, [scriptPath], {
      env: {
        ...process.env,
        SWC_CORE: require.resolve("@swc/core"),
        SANDBOX_MODULE: require.resolve("./create-command-sandbox.ts"),
        PROM_CLIENT: require.resolve("prom-client"),
        SANDBOX_CONFIG: JSON.stringify(config(stateDir)),
        WORKSPACE: workspace,
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("the child did not start its command within 30 s")), 30_000);
        child.stdout.on("data", (chunk: Buffer) => {
          if (chunk.toString().includes("running")) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.once("exit", (code) => reject(new Error(`the child exited early with ${code}`)));
      });
      // Wait until the command really runs in its container, then crash the runner.
      const deadline = performance.now() + 20_000;
      while ((await readFile(join(workspace, "started.txt"), "utf8").catch(() => "")) !== "started\n") {
        if (performance.now() > deadline) throw new Error("the command never started");
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      child.kill("SIGKILL");
      await exited;
    }

    const leftBehind = await docker.listContainers({ all: true, filters: { label: [`${sandboxLabels.runner}=${runnerId}`] } });
    expect(leftBehind.length).toBeGreaterThanOrEqual(1);
    expect(await mountsUnder(stateDir)).not.toHaveLength(0);

    const sandbox = await createCommandSandbox({ config: { ...config(stateDir), SANDBOX_POOL_SIZE: 0 }, logger: createLogger({ service: "spec", level: "silent" }), metrics: new Registry() });
    try {
      const afterRestart = await docker.listContainers({ all: true, filters: { label: [`${sandboxLabels.runner}=${runnerId}`] } });
      expect(afterRestart).toHaveLength(0);
      // The slots' own shared bind may stay; no workspace remains mounted into a slot.
      expect((await mountsUnder(stateDir)).filter((path) => path !== join(stateDir, "slots"))).toHaveLength(0);
    } finally {
      await sandbox.close();
    }
    expect(await mountsUnder(stateDir)).toHaveLength(0);
  }, 60_000);
});

async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8");
  return text.split("\n").map((line) => line.split(" ")[4] ?? "").filter((path) => path.startsWith(`${dir}/`));
}
