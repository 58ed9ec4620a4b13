import { chown, lstat, mkdir, readlink, realpath, stat } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve as resolvePath, sep } from "node:path";
import { defaultSandboxUser, type SandboxUser } from "../sandbox/sandbox-user";
import { ToolArgumentError } from "../tools/tool";
import type { Workspace } from "./workspace";

/** What a workspace id may look like: one path segment of letters, digits, '.', '_' and '-'. */
const workspaceIdPattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Symlinks followed while resolving one path, as Linux' own limit (ELOOP). */
const maxSymlinkHops = 40;

/**
 * A read-only call named a workspace that has never been written to. The service maps it to
 * NOT_FOUND: reading an empty directory would hide a wrong workspace_id from the caller.
 */
export class WorkspaceNotFoundError extends Error {
  override name = "WorkspaceNotFoundError";
}

export interface OpenWorkspaceOptions {
  /** Create the workspace (mkdir -p) when it does not exist: for write tools and commands. */
  readonly create: boolean;
}

/** Opens the workspaces under one root directory. */
export interface Workspaces {
  /**
   * The workspace `<rootPath>/<workspaceId>`. Rejects with a ToolArgumentError for an invalid id,
   * and with a WorkspaceNotFoundError when it does not exist and `create` is false.
   */
  open(workspaceId: string, options: OpenWorkspaceOptions): Promise<Workspace>;
}

/** Throws a ToolArgumentError naming `workspace_id` unless the id is one safe path segment. */
export function validateWorkspaceId(workspaceId: string): void {
  if (workspaceId === "") throw new ToolArgumentError("workspace_id: required");
  // The pattern alone would let "a..b" through; ".." anywhere is refused so that no id ever reads as a climb.
  if (!workspaceIdPattern.test(workspaceId) || workspaceId.includes("..")) {
    throw new ToolArgumentError(
      `workspace_id: ${JSON.stringify(workspaceId)} is not a valid id (1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, without "..")`,
    );
  }
}

/** Workspaces remembered as existing, at most; past it the memory starts over. */
const maxRememberedWorkspaces = 10_000;

/**
 * The workspaces are the directories `<rootPath>/<workspace_id>`; `rootPath` is created when the
 * first workspace is. A relative `rootPath` is taken from the working directory.
 */
export function createWorkspaces(options: {
  rootPath: string;
  /**
   * Owner of the workspace directories this creates. Commands run as a workspace's owner (see
   * sandboxUser), so a directory left to root would be one they cannot write. Default: the
   * sandbox's user (1000:1000) when this process runs as root, else nobody in particular (null).
   */
  owner?: SandboxUser | null;
}): Workspaces {
  const rootPath = resolvePath(options.rootPath);
  const owner = options.owner !== undefined ? options.owner : process.getuid?.() === 0 ? defaultSandboxUser : null;
  // Workspaces this process found to exist: a tool call that writes skips the two mkdir calls for
  // them (every call of a busy workspace otherwise pays for them). One deleted since is created
  // again when its realpath fails.
  const existing = new Set<string>();
  const open = async (workspaceId: string, { create }: OpenWorkspaceOptions): Promise<Workspace> => {
    validateWorkspaceId(workspaceId);
    const directory = join(rootPath, workspaceId);
    if (create && !existing.has(directory)) {
      await mkdir(rootPath, { recursive: true });
      // Not recursive: only the call that creates the directory gives it away, and only it.
      const created = await mkdir(directory).then(
        () => true,
        (error: NodeJS.ErrnoException) => {
          if (error.code === "EEXIST") return false;
          throw error;
        },
      );
      if (created && owner) await chown(directory, owner.uid, owner.gid);
    }
    let hostPath: string;
    try {
      // An operator may have made a workspace a symlink to elsewhere; its target is the workspace.
      hostPath = await realpath(directory);
    } catch (error) {
      if (isNotFound(error) && existing.delete(directory) && create) return open(workspaceId, { create });
      if (isNotFound(error)) throw new WorkspaceNotFoundError(`workspace_id: workspace ${JSON.stringify(workspaceId)} does not exist`);
      throw error;
    }
    if (!(await stat(hostPath)).isDirectory()) {
      existing.delete(directory);
      throw new WorkspaceNotFoundError(`workspace_id: workspace ${JSON.stringify(workspaceId)} is not a directory`);
    }
    if (existing.size >= maxRememberedWorkspaces) existing.clear();
    existing.add(directory);
    return createWorkspace(workspaceId, hostPath);
  };
  return { open };
}

/**
 * A workspace rooted at `rootPath`, which must be absolute and free of symlinks (a realpath).
 * Exported for tests and for callers that manage directories themselves.
 */
export function createWorkspace(id: string, rootPath: string): Workspace {
  return {
    id,
    rootPath,
    resolve: (path, argumentName) => resolveInside(rootPath, path, argumentName),
  };
}

/**
 * Resolves `path` the way the kernel will when a tool opens it, following every symlink that
 * exists along it (and `..` after a symlink from the symlink's target, as the kernel does), and
 * refuses it unless the result is inside `rootPath`. Returns the resolved path, free of symlinks,
 * so that the caller opens exactly what was checked (through safe-open, which refuses a path
 * that changed since). Parts that do not exist yet are taken as they are, they cannot be symlinks,
 * and every part after them is checked all the same. A dangling symlink is followed too: writing
 * through it would create its target.
 */
async function resolveInside(rootPath: string, path: string, argumentName: string): Promise<string> {
  const shown = JSON.stringify(path);
  if (path.includes("\0")) throw new ToolArgumentError(`${argumentName}: contains a NUL byte`);
  if (isAbsolute(path)) {
    throw new ToolArgumentError(`${argumentName}: ${shown} is absolute; give a path relative to the workspace root`);
  }
  // Lexically first, for a clear message: "a/../../x" climbs out whatever "a" is.
  if (!isInside(rootPath, resolvePath(rootPath, path))) {
    throw new ToolArgumentError(`${argumentName}: ${shown} resolves outside the workspace (".." climbs above its root)`);
  }

  const pending = splitPath(path);
  let current = rootPath;
  let hops = 0;
  let lastLink: string | undefined;
  while (pending.length > 0) {
    const part = pending.shift()!;
    if (part === "..") {
      // `current` is free of symlinks, so its parent is the parent the kernel would take.
      current = dirname(current);
      continue;
    }
    const next = join(current, part);
    let isLink: boolean;
    try {
      isLink = (await lstat(next)).isSymbolicLink();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTDIR") throw error;
      // A missing part (or one below a file) cannot be a symlink, but the walk goes on: a later
      // ".." climbs back out of it ("nope/../evil/x") into parts that exist and may be symlinks.
      // Stopping here and joining the rest would let ".." cancel "nope" lexically and leave "evil"
      // unchecked. The opener refuses what the kernel would (ENOENT, ENOTDIR) when it gets there.
      current = next;
      continue;
    }
    if (!isLink) {
      current = next;
      continue;
    }
    hops += 1;
    if (hops > maxSymlinkHops) throw new ToolArgumentError(`${argumentName}: ${shown} has too many levels of symbolic links`);
    let target: string;
    try {
      target = await readlink(next);
    } catch (error) {
      // Replaced since the lstat (a command swapping it in a loop): refuse rather than fail internally.
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "EINVAL" && code !== "ENOENT") throw error;
      throw new ToolArgumentError(`${argumentName}: ${shown} changed while it was being resolved; try again`);
    }
    lastLink = `${JSON.stringify(isInside(rootPath, next) ? relative(rootPath, next) : next)} -> ${JSON.stringify(target)}`;
    pending.unshift(...splitPath(target));
    if (isAbsolute(target)) current = "/";
  }
  if (!isInside(rootPath, current)) {
    const why = lastLink === undefined ? "" : ` (through the symlink ${lastLink})`;
    throw new ToolArgumentError(`${argumentName}: ${shown} resolves outside the workspace${why}`);
  }
  return current;
}

function splitPath(path: string): string[] {
  return path.split(sep).filter((part) => part !== "" && part !== ".");
}

/** Whether `candidate` is `root` or below it (both absolute and normalised). */
export function isInside(root: string, candidate: string): boolean {
  const rel = relative(root, candidate);
  return rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !isAbsolute(rel));
}

function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}
