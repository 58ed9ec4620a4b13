import { mkdtemp, mkdir, realpath, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ToolArgumentError } from "../tools/tool";
import type { Workspace } from "./workspace";
import { createWorkspaces, WorkspaceNotFoundError } from "./workspaces";

let base: string;
let root: string;
let outside: string;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "workspaces-")));
  root = join(base, "root");
  outside = join(base, "outside");
  await mkdir(outside);
  await writeFile(join(outside, "secret.txt"), "secret");
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

async function openWorkspace(id = "ws-1"): Promise<Workspace> {
  return createWorkspaces({ rootPath: root }).open(id, { create: true });
}

describe("createWorkspaces().open", () => {
  it("creates a missing workspace (and the root) when asked to, and opens it again afterwards", async () => {
    const workspaces = createWorkspaces({ rootPath: root });
    const created = await workspaces.open("ws-1", { create: true });
    expect(created).toMatchObject({ id: "ws-1", rootPath: join(root, "ws-1") });
    expect((await stat(created.rootPath)).isDirectory()).toBe(true);
    await expect(workspaces.open("ws-1", { create: false })).resolves.toMatchObject({ rootPath: join(root, "ws-1") });
  });

  it("creates a workspace again that was deleted after it was opened, and gives it to the owner again", async () => {
    const workspaces = createWorkspaces({ rootPath: root, owner: { uid: 1234, gid: 2345 } });
    await workspaces.open("ws-1", { create: true });
    await rm(join(root, "ws-1"), { recursive: true });
    await expect(workspaces.open("ws-1", { create: false })).rejects.toThrow(WorkspaceNotFoundError);
    const again = await workspaces.open("ws-1", { create: true });
    expect(await stat(again.rootPath)).toMatchObject({ uid: 1234, gid: 2345 });
    // Deleted with the root itself: both come back.
    await rm(root, { recursive: true });
    await expect(workspaces.open("ws-1", { create: true })).resolves.toMatchObject({ rootPath: join(root, "ws-1") });
  });

  it("gives a workspace it creates to the owner (commands run as the owner), and leaves an existing one alone", async () => {
    // Run as root, like the service in its container: only root may give files away.
    const workspaces = createWorkspaces({ rootPath: root, owner: { uid: 1234, gid: 2345 } });
    const created = await workspaces.open("owned", { create: true });
    expect(await stat(created.rootPath)).toMatchObject({ uid: 1234, gid: 2345 });
    await mkdir(join(root, "existing"));
    await workspaces.open("existing", { create: true });
    expect((await stat(join(root, "existing"))).uid).toBe(process.getuid!());
  });

  it("refuses a missing workspace for read-only use with a not-found error naming it, and creates nothing", async () => {
    const opening = createWorkspaces({ rootPath: root }).open("nope", { create: false });
    await expect(opening).rejects.toThrow(WorkspaceNotFoundError);
    await expect(opening).rejects.toThrow('workspace_id: workspace "nope" does not exist');
    await expect(stat(join(root, "nope"))).rejects.toThrow("ENOENT");
  });

  it("refuses a workspace id that is a file, not a directory", async () => {
    await mkdir(root);
    await writeFile(join(root, "plain"), "");
    await expect(createWorkspaces({ rootPath: root }).open("plain", { create: false })).rejects.toThrow('workspace "plain" is not a directory');
  });

  it.each(["", "..", "../x", "a/b", "a\\b", ".hidden", "-flag", "a..b", "x".repeat(129), "a b", "a\0b", "é"])(
    "refuses the workspace id %p with an argument error naming workspace_id",
    async (id) => {
      const opening = createWorkspaces({ rootPath: root }).open(id, { create: true });
      await expect(opening).rejects.toThrow(ToolArgumentError);
      await expect(opening).rejects.toThrow(/^workspace_id: /);
    },
  );

  it.each(["a", "A.b_c-1", "x".repeat(128), "1.2.3"])("accepts the workspace id %p", async (id) => {
    await expect(createWorkspaces({ rootPath: root }).open(id, { create: true })).resolves.toMatchObject({ id });
  });
});

describe("Workspace.resolve", () => {
  it("resolves relative paths, the root itself and paths that do not exist yet", async () => {
    const workspace = await openWorkspace();
    await expect(workspace.resolve("", "path")).resolves.toBe(workspace.rootPath);
    await expect(workspace.resolve(".", "path")).resolves.toBe(workspace.rootPath);
    await expect(workspace.resolve("src/./new/file.ts", "path")).resolves.toBe(join(workspace.rootPath, "src/new/file.ts"));
    await expect(workspace.resolve("a/../b", "path")).resolves.toBe(join(workspace.rootPath, "b"));
  });

  it("follows a symlink that stays inside and returns its target", async () => {
    const workspace = await openWorkspace();
    await mkdir(join(workspace.rootPath, "real"));
    await writeFile(join(workspace.rootPath, "real/file.txt"), "x");
    await symlink("real", join(workspace.rootPath, "alias"));
    await symlink("./real/../real/file.txt", join(workspace.rootPath, "link.txt"));
    await expect(workspace.resolve("alias/file.txt", "path")).resolves.toBe(join(workspace.rootPath, "real/file.txt"));
    await expect(workspace.resolve("link.txt", "path")).resolves.toBe(join(workspace.rootPath, "real/file.txt"));
  });

  it.each<[string, string, RegExp]>([
    ["../../etc/passwd", "path", /^path: "..\/..\/etc\/passwd" resolves outside the workspace \(".." climbs above its root\)$/],
    ["a/../../x", "path", /^path: "a\/..\/..\/x" resolves outside the workspace/],
    ["..", "path", /^path: ".." resolves outside the workspace/],
    ["/etc/passwd", "path", /^path: "\/etc\/passwd" is absolute; give a path relative to the workspace root$/],
    ["a\0b", "path", /^path: contains a NUL byte$/],
    ["../ws-1-sibling/x", "file", /^file: .* resolves outside the workspace/],
  ])("refuses %p with an argument error naming the argument and why", async (path, argumentName, message) => {
    const workspace = await openWorkspace();
    const resolving = workspace.resolve(path, argumentName);
    await expect(resolving).rejects.toThrow(ToolArgumentError);
    await expect(resolving).rejects.toThrow(message);
  });

  it("refuses a symlink inside the workspace that points to /etc", async () => {
    const workspace = await openWorkspace();
    await symlink("/etc", join(workspace.rootPath, "etc"));
    await expect(workspace.resolve("etc/passwd", "path")).rejects.toThrow(
      'path: "etc/passwd" resolves outside the workspace (through the symlink "etc" -> "/etc")',
    );
    await expect(workspace.resolve("etc", "path")).rejects.toThrow(ToolArgumentError);
  });

  it("refuses a relative symlinked directory that escapes, however deep it sits", async () => {
    const workspace = await openWorkspace();
    await mkdir(join(workspace.rootPath, "a/b"), { recursive: true });
    await symlink("../../../../outside", join(workspace.rootPath, "a/b/escape"));
    await expect(workspace.resolve("a/b/escape/secret.txt", "path")).rejects.toThrow(/resolves outside the workspace \(through the symlink "a\/b\/escape"/);
    // Even when the file below it does not exist (a write target).
    await expect(workspace.resolve("a/b/escape/new.txt", "path")).rejects.toThrow(ToolArgumentError);
  });

  it("refuses a dangling symlink leading outside as a write target", async () => {
    const workspace = await openWorkspace();
    await symlink(join(outside, "created-by-write.txt"), join(workspace.rootPath, "dangling"));
    await expect(workspace.resolve("dangling", "path")).rejects.toThrow(/^path: "dangling" resolves outside the workspace \(through the symlink/);
  });

  it("accepts a dangling symlink that points inside and returns the target it would create", async () => {
    const workspace = await openWorkspace();
    await symlink("later/file.txt", join(workspace.rootPath, "pending"));
    await expect(workspace.resolve("pending", "path")).resolves.toBe(join(workspace.rootPath, "later/file.txt"));
  });

  it("refuses '..' after a symlink when the kernel would climb out from the symlink's target", async () => {
    const workspace = await openWorkspace();
    await mkdir(join(workspace.rootPath, "d1/d2"), { recursive: true });
    // Lexically "d1/d2/top/.." is "d1/d2", but the kernel takes ".." of the target: the workspace's parent.
    await symlink(workspace.rootPath, join(workspace.rootPath, "d1/d2/top"));
    await expect(workspace.resolve("d1/d2/top/../../outside/secret.txt", "path")).rejects.toThrow(ToolArgumentError);
    await expect(workspace.resolve("d1/d2/top/..", "path")).rejects.toThrow(/resolves outside the workspace/);
  });

  it.each(["missing/../etc/shadow", "file.txt/../etc/shadow", "a/missing/../../etc/shadow", "missing/../etc"])(
    "checks every part after a missing one: %p climbs back into a symlink to /etc and is refused",
    async (path) => {
      const workspace = await openWorkspace();
      await mkdir(join(workspace.rootPath, "a"));
      await writeFile(join(workspace.rootPath, "file.txt"), "x");
      await symlink("/etc", join(workspace.rootPath, "etc"));
      await expect(workspace.resolve(path, "path")).rejects.toThrow(/^path: .* resolves outside the workspace \(through the symlink "etc" -> "\/etc"\)$/);
    },
  );

  it("still resolves a path below a missing part, and '..' out of a missing part, inside the workspace", async () => {
    const workspace = await openWorkspace();
    await mkdir(join(workspace.rootPath, "real"));
    await symlink("real", join(workspace.rootPath, "alias"));
    await expect(workspace.resolve("new/dir/file.ts", "path")).resolves.toBe(join(workspace.rootPath, "new/dir/file.ts"));
    await expect(workspace.resolve("missing/../alias/x", "path")).resolves.toBe(join(workspace.rootPath, "real/x"));
  });

  it("refuses a symlink loop", async () => {
    const workspace = await openWorkspace();
    await symlink("loop-b", join(workspace.rootPath, "loop-a"));
    await symlink("loop-a", join(workspace.rootPath, "loop-b"));
    await expect(workspace.resolve("loop-a/x", "path")).rejects.toThrow('path: "loop-a/x" has too many levels of symbolic links');
  });
});
