import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { open, rename, stat, unlink, type FileHandle } from "node:fs/promises";
import { relative } from "node:path";
import { pathThrough } from "../workspace/safe-open";
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
 * Replaces the entry `name` of the open directory `directory` with `content` atomically: written
 * to a temporary file in that directory, flushed, then renamed over the entry, so that a reader (or
 * a crash) never sees half a file. Everything goes through the directory's handle (see
 * workspace/safe-open): no name is resolved again, and the rename replaces whatever is at `name`
 * (a symlink swapped in included) without following it. The file gets `mode` when given (an edited
 * file keeps its mode), else the default for new files.
 */
export async function writeFileAtomic(
  directory: FileHandle,
  name: string,
  content: string | Buffer,
  options: { mode?: number; owner?: FileOwner | undefined; signal: AbortSignal },
): Promise<void> {
  options.signal.throwIfAborted();
  // The name is cut so that the temporary name stays within NAME_MAX (255 bytes).
  const temporary = pathThrough(directory, `.${name.slice(0, 200)}.${randomBytes(6).toString("hex")}.tmp`);
  // O_EXCL|O_NOFOLLOW: never follow or reuse something already at the temporary name.
  const handle = await open(temporary, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW, options.mode ?? 0o666);
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
    await rename(temporary, pathThrough(directory, name));
    renamed = true;
  } finally {
    if (!renamed) await unlink(temporary).catch(() => undefined);
  }
}

/**
 * Reads a regular file from its handle, at most `maxBytes` (undefined when it holds more: it may
 * have grown since its size was checked). Reading from the handle, never by name, reads what was
 * opened and checked.
 */
export async function readOpenedFile(handle: FileHandle, maxBytes: number, signal: AbortSignal): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    signal.throwIfAborted();
    const chunk = Buffer.allocUnsafe(Math.min(1024 * 1024, maxBytes + 1 - total));
    const { bytesRead } = await handle.read(chunk, 0, chunk.length, total);
    if (bytesRead === 0) break;
    chunks.push(chunk.subarray(0, bytesRead));
    total += bytesRead;
    if (total > maxBytes) return undefined;
  }
  return Buffer.concat(chunks, total);
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
