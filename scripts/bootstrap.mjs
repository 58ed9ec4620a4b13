#!/usr/bin/env node
// `npm start`, `npm test` and `npm run bench:<name>` on a fresh machine that has only Node.js and
// npm: fetch the pinned pnpm if it is missing, install the workspace, build it, then start the mesh,
// run the suite or run test/bench/dist/<name>-bench.js with the remaining arguments.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { ensureSandboxHost } from "./sandbox-host.mjs";

const rootDir = resolve(import.meta.dirname, "..");
const command = process.argv[2];
const benchName = process.argv[3];
if (command !== "start" && command !== "test" && !(command === "bench" && /^[a-z0-9-]+$/.test(benchName ?? ""))) {
  console.error("usage: node scripts/bootstrap.mjs start|test|bench <name> [args]");
  process.exit(2);
}

const [major = 0, minor = 0] = process.versions.node.split(".").map(Number);
if (major < 20 || (major === 20 && minor < 11)) {
  console.error(`Node.js 20.11 or newer is needed (this is ${process.versions.node}).`);
  process.exit(1);
}

const pnpmVersion = JSON.parse(readFileSync(join(rootDir, "package.json"), "utf8")).packageManager.split("@")[1];

function findPnpm() {
  const probe = spawnSync("pnpm", ["--version"], { encoding: "utf8", shell: process.platform === "win32" });
  if (probe.status === 0 && probe.stdout.trim() === pnpmVersion) return ["pnpm", []];
  // npx fetches the exact pinned pnpm from the npm registry once and caches it.
  return ["npx", ["--yes", `pnpm@${pnpmVersion}`]];
}

const [pnpm, pnpmPrefix] = findPnpm();

function step(title, program, args, options = {}) {
  console.log(`\n▶ ${title}`);
  const result = spawnSync(program, args, { cwd: rootDir, stdio: "inherit", shell: process.platform === "win32", ...options });
  if (result.status !== 0) {
    console.error(`✖ ${title} failed (exit ${result.status ?? result.signal})`);
    process.exit(result.status ?? 1);
  }
}

step(`install dependencies (pnpm ${pnpmVersion})`, pnpm, [...pnpmPrefix, "install", "--frozen-lockfile", "--reporter=append-only"]);
step("build (tsc -b)", pnpm, [...pnpmPrefix, "exec", "tsc", "-b"]);

// The tool-runner runs commands in Docker containers (or bubblewrap); the suite and the benchmarks
// that make real sandboxed tool calls need them, so `npm test`, `bench:sandbox` and `bench:agents`
// install them when they can, while `npm start` only starts a daemon that is installed.
console.log("\n▶ sandbox host (Docker engine, bubblewrap, ripgrep)");
await ensureSandboxHost({ rootDir, install: command === "test" || (command === "bench" && benchName !== "inference") });

if (command === "bench") {
  const script = join(rootDir, "test/bench/dist", `${benchName}-bench.js`);
  if (!existsSync(script)) {
    console.error(`✖ no benchmark named ${benchName} (${script} is missing)`);
    process.exit(2);
  }
  // The benchmark stops its own processes on Ctrl-C; this process only waits.
  console.log(`\n▶ benchmark ${benchName}`);
  const bench = spawn(process.execPath, [script, ...process.argv.slice(4)], { cwd: rootDir, stdio: "inherit" });
  process.on("SIGINT", () => {});
  process.on("SIGTERM", () => bench.kill("SIGTERM"));
  bench.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
} else if (command === "start") {
  // The launcher handles Ctrl-C itself and stops the services in order; this process only waits.
  const launcher = spawn(process.execPath, [join(rootDir, "libs/mesh-launcher/dist/cli.js")], { cwd: rootDir, stdio: "inherit" });
  process.on("SIGINT", () => {});
  process.on("SIGTERM", () => launcher.kill("SIGTERM"));
  launcher.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
} else {
  step("type-check the tests (tsc -p tsconfig.spec.json)", pnpm, [...pnpmPrefix, "exec", "tsc", "-p", "tsconfig.spec.json"]);
  step("lint (eslint)", pnpm, [...pnpmPrefix, "exec", "eslint", "."]);
  const reportDir = join(rootDir, ".vlinders");
  mkdirSync(reportDir, { recursive: true });
  const reportPath = join(reportDir, "jest-report.json");
  rmSync(reportPath, { force: true });
  console.log("\n▶ run the suite (jest)");
  const jest = spawnSync(pnpm, [...pnpmPrefix, "exec", "jest", "--ci", "--json", `--outputFile=${reportPath}`, ...process.argv.slice(3)], {
    cwd: rootDir,
    stdio: "inherit",
    shell: process.platform === "win32",
  });
  let summary = "tests: 0 passed, 1 failed (jest wrote no report)";
  try {
    const report = JSON.parse(readFileSync(reportPath, "utf8"));
    summary = `tests: ${report.numPassedTests} passed, ${report.numFailedTests + report.numRuntimeErrorTestSuites} failed`;
  } catch {
    // Keep the failure summary above.
  }
  console.log(summary);
  process.exit(jest.status ?? 1);
}
