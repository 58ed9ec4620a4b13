import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, lstatSync, readFileSync, readlinkSync, realpathSync, statSync } from "node:fs";
import { chmod, mkdir, mkdtemp, open, rm, stat, symlink, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Readable } from "node:stream";
import { promisify } from "node:util";
import type Docker from "dockerode";
import type { Logger } from "@vlinders/service-runtime";
import { withDeadline } from "./host-process";
import { SandboxUnavailableError } from "./sandbox";

const execFileAsync = promisify(execFile);

/** Label holding the hash of the recipe an image was built from; a different hash means stale. */
export const recipeLabel = "vlinders.sandbox.recipe";

// Bump to rebuild every image built by an older recipe.
const recipeVersion = 2;

/** Where the image keeps the command server, the containers' main process. */
export const commandServerImagePath = "/opt/vlinders/command-server.py";
// From src/sandbox (ts-node, jest) and from dist/sandbox (the build) alike.
const commandServerSource = resolve(__dirname, "../../sandbox-agent/command-server.py");
const tools = [
  "sh", "dash", "bash", "ls", "cat", "echo", "head", "tail", "wc", "sort", "uniq", "grep", "egrep", "fgrep", "sed", "awk", "find",
  "xargs", "env", "sleep", "true", "false", "mkdir", "rmdir", "rm", "cp", "mv", "ln", "touch", "chmod", "id", "uname", "date",
  "tr", "cut", "dd", "yes", "seq", "tee", "stat", "du", "df", "kill", "timeout", "printf", "basename", "dirname", "readlink",
  "realpath", "pwd", "test", "[", "expr", "nproc", "mktemp", "which", "diff", "cmp", "patch", "tar", "gzip", "xz", "file",
  "git", "rg", "python3", "node", "nl", "comm", "paste", "join", "split", "md5sum", "sha256sum", "base64", "od", "less", "ps",
];
const requiredTools = ["sh", "sleep", "git", "python3"];
// Whole directories the tools need at run time; tar skips the excluded parts.
const extraDirectories = ["usr/lib/git-core", "usr/share/git-core", "usr/lib/python3.11", "usr/share/file/magic.mgc"];
const excludes = ["__pycache__", "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter", "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3/tests", "usr/lib/python3.11/config-3.11-x86_64-linux-gnu"];
const changes = ["USER 1000:1000", "WORKDIR /workspace", "ENV PATH=/usr/local/bin:/usr/bin:/bin", "ENV HOME=/tmp", "ENV LANG=C.UTF-8", `CMD ["python3", "${commandServerImagePath}"]`];
const passwd = "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:1000:1000:sandbox:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const group = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n";
// Tools come from the system's directories only: version managers' shims (pyenv) in PATH are scripts pointing elsewhere.
const searchPath = ["/usr/bin", "/bin", "/usr/local/bin"];

const lockStaleMs = 10 * 60_000;
const buildDeadlineMs = 5 * 60_000;
// An inspect answers in milliseconds; a daemon that does not answer in this long is hung, and start-up must fail rather than hang.
const inspectDeadlineMs = 30_000;

/**
 * Makes sure the sandbox image exists. A missing image is built from this machine's own files
 * when `build` is true (no registry is involved); an image this code built from an older recipe
 * is rebuilt; an image without the recipe label (built from deploy/sandbox/Dockerfile, say) is
 * used as it is. Concurrent builders (parallel test workers, replicas on one host) serialise on a
 * lock file; the import tags the image only once it is complete, so nobody sees half an image.
 */
export async function ensureSandboxImage(options: { docker: Docker; image: string; build: boolean; logger: Logger; signal?: AbortSignal }): Promise<void> {
  const { docker, image, logger } = options;
  const deadline = Date.now() + buildDeadlineMs;
  // Only a build needs the recipe: a host without git or python3 (the tool-runner's own image) may
  // still use an image built elsewhere.
  let recipe: ReturnType<typeof resolveRecipe> | undefined;
  for (;;) {
    options.signal?.throwIfAborted();
    const current = await imageRecipe(docker, image, options.signal);
    if (current === "no-label") return;
    if (!options.build) {
      if (current === "missing") {
        throw new SandboxUnavailableError(`the sandbox image ${image} is missing and SANDBOX_BUILD_IMAGE=false: build deploy/sandbox/Dockerfile as ${image}, or allow the local build`);
      }
      return; // Stale but rebuilding is off: use what is there.
    }
    recipe ??= resolveRecipe();
    if (current === recipe.hash) return;
    const lockPath = join(tmpdir(), `vlinders-sandbox-image-${createHash("sha256").update(image).digest("hex").slice(0, 16)}.lock`);
    const lock = await tryLock(lockPath);
    if (lock) {
      try {
        // Another process may have finished the build between the check and the lock.
        const again = await imageRecipe(docker, image, options.signal);
        if (again === "no-label" || again === recipe.hash) return;
        const startedAt = performance.now();
        logger.info({ image, reason: again === "missing" ? "missing" : "stale recipe" }, "building the sandbox image from this machine's files");
        const replaced = again === "missing" ? undefined : await imageId(docker, image, options.signal);
        await buildImage(docker, image, recipe, options.signal);
        logger.info({ image, durationMs: Math.round(performance.now() - startedAt) }, "sandbox image built");
        if (replaced !== undefined) await removeReplacedImage(docker, replaced, image, logger);
        return;
      } finally {
        await unlink(lockPath).catch(() => {});
      }
    }
    if (Date.now() > deadline) throw new SandboxUnavailableError(`timed out waiting for another process to build the sandbox image ${image} (lock ${lockPath})`);
    await sleep(250, options.signal);
  }
}

async function tryLock(path: string): Promise<boolean> {
  try {
    const handle = await open(path, "wx");
    await handle.writeFile(String(process.pid));
    await handle.close();
    return true;
  } catch (error: unknown) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    // A builder that crashed leaves its lock behind; one older than any build is taken over.
    const info = await stat(path).catch(() => undefined);
    if (info !== undefined && Date.now() - info.mtimeMs > lockStaleMs) await unlink(path).catch(() => {});
    return false;
  }
}

async function imageId(docker: Docker, image: string, signal: AbortSignal | undefined): Promise<string | undefined> {
  try {
    return (await withDeadline(docker.getImage(image).inspect(), inspectDeadlineMs, `inspecting the sandbox image ${image}`, signal === undefined ? {} : { signal })).Id;
  } catch (error: unknown) {
    if ((error as { statusCode?: number }).statusCode === 404) return undefined;
    throw error;
  }
}

/**
 * The image a rebuild took the tag from is left without one: removed, unless a container still
 * uses it (Docker refuses then; it is left for `docker image prune`). Each rebuild would otherwise
 * leave a couple of hundred megabytes behind.
 */
async function removeReplacedImage(docker: Docker, id: string, image: string, logger: Logger): Promise<void> {
  try {
    await withDeadline(docker.getImage(id).remove(), inspectDeadlineMs, `removing the replaced sandbox image ${id}`, {});
    logger.info({ image, removed: id }, "removed the sandbox image the rebuild replaced");
  } catch (error: unknown) {
    const statusCode = (error as { statusCode?: number }).statusCode;
    if (statusCode === 404) return;
    logger.warn({ image, replaced: id, err: error }, "kept the sandbox image the rebuild replaced (in use, or Docker refused); docker image prune removes it");
  }
}

async function imageRecipe(docker: Docker, image: string, signal: AbortSignal | undefined): Promise<string> {
  try {
    const info = await withDeadline(docker.getImage(image).inspect(), inspectDeadlineMs, `inspecting the sandbox image ${image}`, signal === undefined ? {} : { signal });
    return info.Config?.Labels?.[recipeLabel] ?? "no-label";
  } catch (error: unknown) {
    if ((error as { statusCode?: number }).statusCode === 404) return "missing";
    throw error;
  }
}

interface Recipe {
  readonly hash: string;
  /** Absolute paths of the tools found, with every symlink on the way to the real file. */
  readonly toolPaths: string[];
  /** The command server's source, copied into the image. */
  readonly commandServer: Buffer;
}

function resolveRecipe(): Recipe {
  const found: string[] = [];
  for (const tool of tools) {
    const path = searchPath.map((dir) => join(dir, tool)).find((candidate) => existsSync(candidate));
    if (path === undefined) {
      if (requiredTools.includes(tool)) throw new SandboxUnavailableError(`cannot build the sandbox image: ${tool} is not installed on this machine`);
      continue;
    }
    found.push(path);
  }
  const commandServer = readFileSync(commandServerSource);
  const hash = createHash("sha256");
  hash.update(JSON.stringify({ recipeVersion, tools, extraDirectories, excludes, changes, passwd, group }));
  // A changed command server must reach the containers: its content is part of the hash.
  hash.update(commandServer);
  // A tool upgraded on the host changes the image's content, so it is part of the hash.
  for (const path of found) {
    const info = statSync(path);
    hash.update(`${path}:${info.size}:${info.mtimeMs}\n`);
  }
  return { hash: hash.digest("hex").slice(0, 32), toolPaths: found, commandServer };
}

/** The path and every link on the way to the file it names (so tar keeps symlinks as symlinks). */
function linkChain(path: string): string[] {
  const chain: string[] = [];
  let current = path;
  for (let hops = 0; hops < 16; hops += 1) {
    // Parents like /lib are symlinks into /usr on merged-/usr systems; keep the canonical directory.
    const canonical = join(realpathSync(dirname(current)), current.split("/").at(-1) ?? "");
    chain.push(canonical);
    if (!lstatSync(canonical).isSymbolicLink()) break;
    current = resolve(dirname(canonical), readlinkSync(canonical));
  }
  return chain;
}

/** Shared libraries every ELF file in `paths` loads, from one `ldd` run. */
async function sharedLibraries(paths: string[]): Promise<string[]> {
  // ldd exits non-zero when one argument is not dynamic (scripts); its output is still complete.
  const { stdout } = await execFileAsync("ldd", paths, { maxBuffer: 16 * 1024 * 1024 }).catch((error: { stdout?: string }) => ({ stdout: error.stdout ?? "" }));
  const libraries = new Set<string>();
  for (const match of stdout.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/g)) libraries.add(match[1] as string);
  return [...libraries];
}

async function buildImage(docker: Docker, image: string, recipe: Recipe, callerSignal: AbortSignal | undefined): Promise<void> {
  // Everything the build starts (tar, the import request, its progress) ends at the caller's abort or the deadline.
  const signal = AbortSignal.any([AbortSignal.timeout(buildDeadlineMs), ...(callerSignal === undefined ? [] : [callerSignal])]);
  const elfCandidates = [...recipe.toolPaths.map((path) => realpathSync(path))];
  for (const dir of ["/usr/lib/git-core", "/usr/lib/python3.11/lib-dynload"]) {
    if (!existsSync(dir)) continue;
    const { stdout } = await execFileAsync("find", [dir, "-type", "f", "-perm", "-u+x", "-o", "-type", "f", "-name", "*.so"]);
    elfCandidates.push(...stdout.split("\n").filter((line) => line.length > 0));
  }
  const members = new Set<string>();
  for (const path of [...recipe.toolPaths, ...(await sharedLibraries(elfCandidates)), "/lib64/ld-linux-x86-64.so.2"]) {
    if (existsSync(path)) for (const link of linkChain(path)) members.add(link.slice(1));
  }
  for (const dir of extraDirectories) if (existsSync(`/${dir}`)) members.add(dir);

  const skeleton = await mkdtemp(join(tmpdir(), "vlinders-sandbox-rootfs-"));
  try {
    await mkdir(join(skeleton, "etc"));
    await writeFile(join(skeleton, "etc/passwd"), passwd);
    await writeFile(join(skeleton, "etc/group"), group);
    await mkdir(join(skeleton, dirname(commandServerImagePath)), { recursive: true });
    await writeFile(join(skeleton, commandServerImagePath), recipe.commandServer, { mode: 0o644 });
    for (const dir of ["tmp", "workspace", "proc", "dev", "sys", "usr/local/bin"]) await mkdir(join(skeleton, dir), { recursive: true });
    await chmod(join(skeleton, "tmp"), 0o1777);
    // Parent directories of every member, so the image's tree has ordinary 0755 directories.
    for (const member of members) await mkdir(join(skeleton, dirname(member)), { recursive: true });
    // The top-level links of a merged-/usr system, as the host has them.
    for (const top of ["bin", "sbin", "lib", "lib64"]) {
      if (existsSync(`/${top}`) && lstatSync(`/${top}`).isSymbolicLink()) {
        await rm(join(skeleton, top), { recursive: true, force: true });
        await symlink(readlinkSync(`/${top}`), join(skeleton, top));
      }
    }
    const tarArgs = ["-c", "-f", "-", "--numeric-owner", "--owner=0", "--group=0", ...excludes.map((pattern) => `--exclude=${pattern}`), "-C", skeleton, ".", "-C", "/", ...[...members].sort()];
    const tar = spawn("tar", tarArgs, { stdio: ["ignore", "pipe", "pipe"], signal });
    let tarErrors = "";
    tar.stderr.setEncoding("utf8").on("data", (text: string) => {
      if (tarErrors.length < 4_096) tarErrors += text;
    });
    const tarExit = new Promise<number | null>((resolveExit, reject) => {
      tar.once("error", reject);
      tar.once("close", resolveExit);
    });
    const [repo, tag] = splitImageName(image);
    const labelChange = `LABEL ${recipeLabel}=${recipe.hash}`;
    // dockerode 5 takes an abortSignal here (it aborts the request); its @types (v4) do not know it.
    const progress = await withDeadline(
      docker.importImage(tar.stdout, { repo, tag, changes: [...changes, labelChange], abortSignal: signal } as object),
      buildDeadlineMs,
      "importing the sandbox image",
      { signal, onAbandoned: (late) => (late as Readable).destroy() },
    );
    const imported = new Promise<void>((resolveImport, reject) => {
      docker.modem.followProgress(progress, (error: Error | null, events: { error?: string }[]) => {
        const failure = error ?? events.find((event) => event.error !== undefined)?.error;
        if (failure) reject(failure instanceof Error ? failure : new Error(failure));
        else resolveImport();
      });
    });
    let tarCode: number | null;
    try {
      [tarCode] = await withDeadline(Promise.all([tarExit, imported]), buildDeadlineMs, "building the sandbox image", { signal });
    } catch (error: unknown) {
      // A hung daemon never ends the progress stream by itself.
      (progress as Readable).destroy();
      tar.kill("SIGKILL");
      throw error;
    }
    if (tarCode !== 0) throw new Error(`tar of the sandbox root filesystem failed (exit ${tarCode}): ${tarErrors.trim()}`);
  } finally {
    await rm(skeleton, { recursive: true, force: true });
  }
}

function splitImageName(image: string): [string, string] {
  const colon = image.lastIndexOf(":");
  return colon > image.lastIndexOf("/") ? [image.slice(0, colon), image.slice(colon + 1)] : [image, "latest"];
}

async function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  await new Promise<void>((resolveSleep, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolveSleep();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
