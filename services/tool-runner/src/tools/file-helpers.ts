import { randomBytes } from "node:crypto";
import { chown, mkdir, open, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join, relative } from "node:path";
import type { Workspace } from "../workspace/workspace";
import type { ToolOutcome } from "./tool";

/** Bytes looked at to tell a binary file from text, as git does: a NUL among them means binary. */
const binaryProbeBytes = 8000;

/** Whether the content looks binary: a NUL byte in its first 8000 bytes. */
export function looksBinary(content: Buffer): boolean {
  return content.subarray(0, binaryProbeBytes).includes(0);
}

/** A failed outcome: the tool could not do its job, and `error` tells the model why. */
export function failure(error: string, extra: Partial<ToolOutcome> = {}): ToolOutcome {
  return { success: false, output: "", error, truncated: false, ...extra };
}

/** The path as the caller sees it: relative to the workspace root, "." for the root. */
export function displayPath(workspace: Workspace, hostPath: string): string {
  return relative(workspace.rootPath, hostPath) || ".";
}

export function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Replaces `target` with `content` atomically: written to a temporary file in the same directory,
 * flushed, then renamed over the target, so that a reader (or a crash) never sees half a file.
 * The file gets `mode` when given (an edited file keeps its mode), else the default for new files.
 */
export async function writeFileAtomic(
  target: string,
  content: string | Buffer,
  options: { mode?: number; owner?: FileOwner | undefined; signal: AbortSignal },
): Promise<void> {
  options.signal.throwIfAborted();
  const temporary = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString("hex")}.tmp`);
  // "wx": never follow or reuse something already at the temporary name.
  const handle = await open(temporary, "wx", options.mode ?? 0o666);
  let renamed = false;
  try {
    try {
      await handle.writeFile(content);
      // The mode given to open is reduced by the umask; an edited file must keep exactly its own.
      if (options.mode !== undefined) await handle.chmod(options.mode);
      if (options.owner) await handle.chown(options.owner.uid, options.owner.gid);
      await handle.sync();
    } finally {
      await handle.close();
    }
    options.signal.throwIfAborted();
    await rename(temporary, target);
    renamed = true;
  } finally {
    if (!renamed) await unlink(temporary).catch(() => undefined);
  }
}

/** The permission bits of an existing file, or undefined when there is none. */
export async function existingMode(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mode & 0o7777;
  } catch (error) {
    if (errorCode(error) === "ENOENT") return undefined;
    throw error;
  }
}

/** A numeric owner for files the tools create. */
export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
}

/**
 * Who files written into the workspace should belong to: its directory's owner, when this process
 * runs as root and the workspace is not root's. Commands run as that owner (see the sandbox's
 * sandboxUser); a file written by root would be one they cannot change. Undefined: keep the default.
 */
export async function workspaceFileOwner(workspace: Workspace): Promise<FileOwner | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const info = await stat(workspace.rootPath);
  return info.uid === 0 ? undefined : { uid: info.uid, gid: info.gid };
}

/** mkdir -p that gives the directories it creates to `owner`. */
export async function makeDirectories(path: string, owner: FileOwner | undefined): Promise<void> {
  const first = await mkdir(path, { recursive: true });
  if (first === undefined || !owner) return;
  for (let directory = path; ; directory = dirname(directory)) {
    await chown(directory, owner.uid, owner.gid);
    if (directory === first || directory === dirname(directory)) break;
  }
}
