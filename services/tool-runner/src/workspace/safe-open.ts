import { constants, type Stats } from "node:fs";
import { lstat, mkdir, open, readlink, type FileHandle } from "node:fs/promises";
import { relative, sep } from "node:path";
import { ToolArgumentError } from "../tools/tool";
import type { Workspace } from "./workspace";
import { isInside } from "./workspaces";

/*
 * Opening what Workspace.resolve checked, without a race. resolve returns a symlink-free path, but
 * a command in the sandbox can swap a directory on it for a symlink (to "/") between that check and
 * the open, in a loop that outlives the command; this service runs as root, so opening the path by
 * name again would read or write anywhere. Node has no openat(), so the walk goes through
 * `/proc/self/fd/<fd>/<name>`: the kernel takes `/proc/self/fd/<fd>` to the directory that fd has
 * open, not to whatever now has its name, and O_NOFOLLOW refuses a name that became a symlink.
 * Every component is opened from the directory before it, starting at the workspace root.
 */

const directoryFlags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
/** O_NONBLOCK: opening a FIFO must not wait for a writer (in libuv's threadpool, where no signal reaches it). */
const entryFlags = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Who directories created on the way belong to (the workspace's owner, when this process is root). */
export interface DirectoryOwner {
  readonly uid: number;
  readonly gid: number;
}

export interface OpenDirectoryOptions {
  /** mkdir missing directories on the way (write tools); they are given to `owner` when set. */
  readonly create?: { readonly owner?: DirectoryOwner | undefined };
}

/** An entry opened by openEntryInside: a file, a directory or anything else, with its fstat. */
export interface OpenedEntry {
  readonly handle: FileHandle;
  readonly info: Stats;
}

/** The path that names `name` in the directory `directory` has open (or that directory itself). */
export function pathThrough(directory: FileHandle, name?: string): string {
  return name === undefined ? `/proc/self/fd/${directory.fd}` : `/proc/self/fd/${directory.fd}/${name}`;
}

/** The error for a path that was swapped (for a symlink, mostly) between resolve and open. */
export class PathChangedError extends ToolArgumentError {
  override name = "PathChangedError";
}

/**
 * Opens the directory at `hostPath` (a result of `workspace.resolve`) component by component from
 * the workspace root; see the comment at the top. Rejects with PathChangedError when a component
 * became a symlink, with the kernel's ENOENT when one is missing (and `create` is not given) and
 * with ENOTDIR when one is not a directory. The caller closes the handle.
 */
export async function openDirectoryInside(workspace: Workspace, hostPath: string, argumentName: string, options: OpenDirectoryOptions = {}): Promise<FileHandle> {
  return walk(workspace, partsOf(workspace, hostPath, argumentName), argumentName, hostPath, options);
}

/** Opens the directory `parts` below the root; `hostPath` is what the caller asked for, for messages. */
async function walk(workspace: Workspace, parts: readonly string[], argumentName: string, hostPath: string, options: OpenDirectoryOptions): Promise<FileHandle> {
  let directory = await openRoot(workspace, argumentName);
  try {
    for (const part of parts) {
      const next = await openChildDirectory(directory, part, argumentName, hostPath, workspace, options);
      await directory.close();
      directory = next;
    }
    return directory;
  } catch (error) {
    await directory.close();
    throw error;
  }
}

/**
 * Opens whatever is at `hostPath` (a result of `workspace.resolve`) for reading, as
 * openDirectoryInside opens its parent, and fstats it. A FIFO, socket or device is opened without
 * blocking and returned like anything else: the caller checks `info` (isFile) before reading.
 * Rejects with PathChangedError when the entry itself became a symlink.
 */
export async function openEntryInside(workspace: Workspace, hostPath: string, argumentName: string): Promise<OpenedEntry> {
  const parts = partsOf(workspace, hostPath, argumentName);
  const name = parts.pop();
  if (name === undefined) {
    const handle = await openRoot(workspace, argumentName);
    return { handle, info: await handle.stat() };
  }
  const parent = await walk(workspace, parts, argumentName, hostPath, {});
  try {
    return await openEntryIn(parent, name, argumentName, displayOf(workspace, hostPath));
  } finally {
    await parent.close();
  }
}

/** Opens `name` in an open directory for reading, without following a symlink or blocking, and fstats it. */
export async function openEntryIn(directory: FileHandle, name: string, argumentName: string, shown: string): Promise<OpenedEntry> {
  let handle: FileHandle;
  try {
    handle = await open(pathThrough(directory, name), entryFlags);
  } catch (error) {
    if (codeOf(error) === "ELOOP") throw changed(argumentName, shown);
    throw error;
  }
  try {
    return { handle, info: await handle.stat() };
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/** The workspace root, opened and checked to be the directory it names (not a symlink put in its place). */
async function openRoot(workspace: Workspace, argumentName: string): Promise<FileHandle> {
  const handle = await open(workspace.rootPath, directoryFlags);
  try {
    if ((await readlink(pathThrough(handle))) !== workspace.rootPath) throw changed(argumentName, ".");
    return handle;
  } catch (error) {
    await handle.close();
    throw error;
  }
}

async function openChildDirectory(
  directory: FileHandle,
  part: string,
  argumentName: string,
  hostPath: string,
  workspace: Workspace,
  options: OpenDirectoryOptions,
): Promise<FileHandle> {
  const path = pathThrough(directory, part);
  let mayCreate = options.create !== undefined;
  let created = false;
  for (;;) {
    try {
      const handle = await open(path, directoryFlags);
      const owner = options.create?.owner;
      if (created && owner) {
        // fchown through the handle: chown by name would follow a symlink swapped in since the mkdir.
        await handle.chown(owner.uid, owner.gid).catch(async (error: unknown) => {
          await handle.close();
          throw error;
        });
      }
      return handle;
    } catch (error) {
      const code = codeOf(error);
      if (code === "ENOENT" && mayCreate) {
        mayCreate = false;
        // mkdir never follows a symlink at its last component (EEXIST); EEXIST from another writer's mkdir is fine too.
        created = await mkdir(path).then(
          () => true,
          (mkdirError: unknown) => {
            if (codeOf(mkdirError) === "EEXIST") return false;
            throw mkdirError;
          },
        );
        continue;
      }
      // O_DIRECTORY|O_NOFOLLOW answers ENOTDIR (not ELOOP) for a symlink: tell the two apart for the message.
      if (code === "ENOTDIR" || code === "ELOOP") {
        const isLink = await lstat(path).then(
          (info) => info.isSymbolicLink(),
          () => false,
        );
        if (isLink || code === "ELOOP") throw changed(argumentName, displayOf(workspace, hostPath));
      }
      throw error;
    }
  }
}

function partsOf(workspace: Workspace, hostPath: string, argumentName: string): string[] {
  if (!isInside(workspace.rootPath, hostPath)) throw new ToolArgumentError(`${argumentName}: ${JSON.stringify(hostPath)} is not a resolved path of the workspace`);
  const parts = relative(workspace.rootPath, hostPath).split(sep).filter((part) => part !== "");
  // resolve returns normalised paths; a "." or ".." here would walk somewhere unchecked.
  if (parts.some((part) => part === "." || part === "..")) throw new ToolArgumentError(`${argumentName}: ${JSON.stringify(hostPath)} is not normalised`);
  return parts;
}

function displayOf(workspace: Workspace, hostPath: string): string {
  return JSON.stringify(relative(workspace.rootPath, hostPath) || ".");
}

function changed(argumentName: string, shown: string): PathChangedError {
  return new PathChangedError(`${argumentName}: ${shown} changed while it was being opened (a part of it was replaced, e.g. by a symlink); try again`);
}

function codeOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
