import { stat } from "node:fs/promises";

/** A numeric user and group (no name lookups: the sandbox image need not know the name). */
export interface SandboxUser {
  readonly uid: number;
  readonly gid: number;
}

/** The user commands run as when the workspace is owned by root: the image's `sandbox` user. */
export const defaultSandboxUser: SandboxUser = { uid: 1000, gid: 1000 };

/**
 * Who a workspace's commands run as, the same for every backend: the owner of the workspace
 * directory when that is not root (files the command creates then belong to the workspace's owner),
 * otherwise `fallback` (1000:1000). Commands never run as root. A workspace owned by root is not
 * writable from the sandbox until the tool layer makes it so: it should create workspaces owned by
 * this user (`chown -R uid:gid`), which this function then keeps choosing.
 */
export async function sandboxUser(workspaceHostPath: string, fallback: SandboxUser = defaultSandboxUser): Promise<SandboxUser> {
  const info = await stat(workspaceHostPath);
  return info.uid === 0 ? fallback : { uid: info.uid, gid: info.gid };
}
