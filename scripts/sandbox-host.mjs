// Makes this machine able to run the tool-runner's sandboxes: a Docker engine with no container
// networking at all, bubblewrap (the fallback) and ripgrep (search_code, list_files). `npm test`
// installs what is missing from Debian's packages when it runs as root; `npm start` only starts an
// installed daemon and says what is missing. Nothing is ever pulled from an image registry: the
// tool-runner builds its sandbox image from this machine's own files.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, openSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";

const dockerSocket = "/var/run/docker.sock";

function has(program) {
  return spawnSync("sh", ["-c", `command -v ${program}`], { stdio: "ignore" }).status === 0;
}

/** Resolves true when the Docker engine answers its ping within the timeout. */
function pingDocker(timeoutMs = 1000) {
  return new Promise((resolve) => {
    if (!existsSync(dockerSocket)) return resolve(false);
    const req = request({ socketPath: dockerSocket, path: "/_ping", timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
    req.end();
  });
}

function aptInstall(packages) {
  const args = ["install", "-y", "--no-install-recommends", ...packages];
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  if (spawnSync("apt-get", args, { stdio: "inherit", env }).status === 0) return true;
  // A fresh machine's package lists may be missing or stale.
  spawnSync("apt-get", ["update"], { stdio: "inherit", env });
  return spawnSync("apt-get", args, { stdio: "inherit", env }).status === 0;
}

/**
 * @param {{ rootDir: string, install: boolean }} options
 * @returns {Promise<{ docker: boolean, bubblewrap: boolean, ripgrep: boolean }>}
 */
export async function ensureSandboxHost({ rootDir, install }) {
  if (process.platform !== "linux") {
    console.log("sandbox host: not Linux; commands run only where a Docker engine is configured (DOCKER_HOST)");
    return { docker: await pingDocker(), bubblewrap: false, ripgrep: has("rg") };
  }
  const isRoot = process.getuid?.() === 0;
  const wanted = [
    ["dockerd", "docker.io"],
    ["bwrap", "bubblewrap"],
    ["rg", "ripgrep"],
  ].filter(([program]) => !has(program));
  if (wanted.length > 0) {
    const packages = wanted.map(([, name]) => name);
    if (install && isRoot && has("apt-get")) {
      console.log(`sandbox host: installing ${packages.join(", ")} from Debian's packages`);
      if (!aptInstall(packages)) console.error(`sandbox host: could not install ${packages.join(", ")}`);
    } else {
      console.log(`sandbox host: missing ${packages.join(", ")} (as root: apt-get install ${packages.join(" ")})`);
    }
  }

  let docker = await pingDocker();
  if (!docker && has("dockerd") && isRoot) {
    // No bridge and no iptables rules: containers get only their own loopback, whatever they ask for.
    const logDir = join(rootDir, ".vlinders");
    mkdirSync(logDir, { recursive: true });
    const log = openSync(join(logDir, "dockerd.log"), "a");
    console.log("sandbox host: starting dockerd --bridge=none --iptables=false (log: .vlinders/dockerd.log)");
    const daemon = spawn("dockerd", ["--bridge=none", "--iptables=false"], { detached: true, stdio: ["ignore", log, log] });
    daemon.unref();
    const deadline = Date.now() + 30_000;
    while (!docker && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      docker = await pingDocker();
    }
    if (!docker) console.error("sandbox host: dockerd did not answer within 30 s; see .vlinders/dockerd.log");
  } else if (!docker) {
    console.log("sandbox host: no Docker engine answers; the tool-runner falls back to bubblewrap, or refuses commands");
  }
  return { docker, bubblewrap: has("bwrap"), ripgrep: has("rg") };
}
