import { chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createNoneSandbox } from "../sandbox/create-command-sandbox";
import type { Workspace } from "../workspace/workspace";
import { createWorkspaces } from "../workspace/workspaces";
import { createEditFileTool } from "./edit-file";
import { ToolArgumentError, type ToolContext } from "./tool";
import { createWriteFileTool } from "./write-file";

let base: string;
let outside: string;
let workspace: Workspace;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "write-edit-")));
  outside = join(base, "outside");
  await mkdir(outside);
  workspace = await createWorkspaces({ rootPath: join(base, "workspaces") }).open("ws", { create: true });
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

function context(overrides: Partial<ToolContext> = {}): ToolContext {
  return {
    workspace,
    agentType: "edit",
    mayWrite: true,
    timeoutMs: 5000,
    outputLimitBytes: 64 * 1024,
    // File tools run no command; a real backend that refuses them is all they need.
    sandbox: createNoneSandbox("file tools run no commands"),
    signal: new AbortController().signal,
    ...overrides,
  };
}

const inWorkspace = (path: string): string => join(workspace.rootPath, path);

describe("write_file", () => {
  const tool = createWriteFileTool();

  it("creates a file and its parent directories, and leaves no temporary file behind", async () => {
    const outcome = await tool.execute({ path: "src/deep/new.ts", content: "export {};\n" }, context());
    expect(outcome).toEqual({
      success: true,
      output: 'Created "src/deep/new.ts" (11 bytes)',
      result: { path: "src/deep/new.ts", bytes: 11, created: true },
      truncated: false,
    });
    expect(await readFile(inWorkspace("src/deep/new.ts"), "utf8")).toBe("export {};\n");
    expect(await readdir(inWorkspace("src/deep"))).toEqual(["new.ts"]);
  });

  it("gives the files and directories it creates to the workspace's owner, so that commands can change them", async () => {
    // Run as root, like the service: the workspace belongs to the sandbox user, who runs the commands.
    await chown(workspace.rootPath, 1000, 1000);
    await tool.execute({ path: "new/dir/file.txt", content: "x" }, context());
    for (const path of ["new", "new/dir", "new/dir/file.txt"]) expect(await stat(inWorkspace(path))).toMatchObject({ uid: 1000, gid: 1000 });
  });

  it("replaces a file whole and keeps its mode", async () => {
    await writeFile(inWorkspace("run.sh"), "old");
    await chmod(inWorkspace("run.sh"), 0o750);
    expect((await tool.execute({ path: "run.sh", content: "#!/bin/sh\necho hi\n" }, context())).output).toBe('Replaced "run.sh" (18 bytes)');
    expect(await readFile(inWorkspace("run.sh"), "utf8")).toBe("#!/bin/sh\necho hi\n");
    expect((await stat(inWorkspace("run.sh"))).mode & 0o7777).toBe(0o750);
  });

  it("writes through a symlink that stays inside, to its target, and keeps the link", async () => {
    await writeFile(inWorkspace("real.txt"), "old");
    await symlink("real.txt", inWorkspace("alias.txt"));
    await tool.execute({ path: "alias.txt", content: "new" }, context());
    expect(await readFile(inWorkspace("real.txt"), "utf8")).toBe("new");
    expect(await readlink(inWorkspace("alias.txt"))).toBe("real.txt");
  });

  it("refuses to write through a symlink out of the workspace, existing or dangling, and writes nothing there", async () => {
    await symlink(outside, inWorkspace("out-dir"));
    await symlink(join(outside, "created.txt"), inWorkspace("dangling"));
    await expect(tool.execute({ path: "out-dir/file.txt", content: "x" }, context())).rejects.toThrow(ToolArgumentError);
    await expect(tool.execute({ path: "dangling", content: "x" }, context())).rejects.toThrow(/^path: "dangling" resolves outside the workspace/);
    await expect(tool.execute({ path: "../outside/x.txt", content: "x" }, context())).rejects.toThrow(ToolArgumentError);
    expect(await readdir(outside)).toEqual([]);
    expect((await lstat(inWorkspace("dangling"))).isSymbolicLink()).toBe(true);
  });

  it("fails for a directory, the root and a path below a file", async () => {
    await mkdir(inWorkspace("dir"));
    await writeFile(inWorkspace("file.txt"), "");
    expect((await tool.execute({ path: "dir", content: "x" }, context())).error).toBe('path: "dir" is a directory');
    expect((await tool.execute({ path: ".", content: "x" }, context())).error).toBe('path: "." is the workspace root, not a file');
    expect((await tool.execute({ path: "file.txt/below", content: "x" }, context())).error).toBe('path: a parent of "file.txt/below" is a file, not a directory');
  });

  it("writes nothing when the call is already cancelled", async () => {
    const controller = new AbortController();
    controller.abort(new Error("cancelled"));
    await expect(tool.execute({ path: "a.txt", content: "x" }, context({ signal: controller.signal }))).rejects.toThrow("cancelled");
    expect(await readdir(workspace.rootPath)).toEqual([]);
  });
});

describe("edit_file", () => {
  const tool = createEditFileTool();

  beforeEach(async () => {
    await writeFile(inWorkspace("app.py"), "def main():\n    print('hello')\n    return 0\n\nprint('hello')\n");
  });

  it("replaces the one occurrence, says where, and keeps the file's mode", async () => {
    await chmod(inWorkspace("app.py"), 0o700);
    const outcome = await tool.execute({ path: "app.py", old_string: "    return 0", new_string: "    return 1" }, context());
    expect(outcome).toEqual({
      success: true,
      output: 'Replaced 1 occurrence in "app.py" (line 3)',
      result: { path: "app.py", replacements: 1, lines: [3] },
      truncated: false,
    });
    expect(await readFile(inWorkspace("app.py"), "utf8")).toBe("def main():\n    print('hello')\n    return 1\n\nprint('hello')\n");
    expect((await stat(inWorkspace("app.py"))).mode & 0o7777).toBe(0o700);
    expect(await readdir(workspace.rootPath)).toEqual(["app.py"]);
  });

  it("keeps the owner of the file it edits", async () => {
    await chown(inWorkspace("app.py"), 1000, 1001);
    await tool.execute({ path: "app.py", old_string: "return 0", new_string: "return 2" }, context());
    expect(await stat(inWorkspace("app.py"))).toMatchObject({ uid: 1000, gid: 1001 });
  });

  it("refuses several occurrences without replace_all, saying how many and what to do", async () => {
    const outcome = await tool.execute({ path: "app.py", old_string: "print('hello')", new_string: "print('bye')" }, context());
    expect(outcome).toMatchObject({
      success: false,
      error: 'old_string: found 2 times in "app.py" (lines 2, 5); include more surrounding lines to make it unique, or set replace_all to replace every one',
    });
    expect(await readFile(inWorkspace("app.py"), "utf8")).toContain("print('hello')\n    return 0");
  });

  it("replaces every occurrence with replace_all and counts them", async () => {
    const outcome = await tool.execute({ path: "app.py", old_string: "'hello'", new_string: "'$&'", replace_all: true }, context());
    expect(outcome.result).toEqual({ path: "app.py", replacements: 2, lines: [2, 5] });
    // "$&" stays literal: the replacement is not a String.replace pattern.
    expect(await readFile(inWorkspace("app.py"), "utf8")).toBe("def main():\n    print('$&')\n    return 0\n\nprint('$&')\n");
  });

  it("fails when old_string is not found, hinting at whitespace when only that differs", async () => {
    const missing = await tool.execute({ path: "app.py", old_string: "return 2", new_string: "x" }, context());
    expect(missing.success).toBe(false);
    expect(missing.error).toMatch(/^old_string: not found in "app.py"\. It must match the file exactly, including whitespace and indentation/);
    const indented = await tool.execute({ path: "app.py", old_string: "def main():\n  print('hello')", new_string: "x" }, context());
    expect(indented.error).toMatch(/^old_string: not found in "app.py"\. A match differs only in whitespace or indentation/);
  });

  it("hints at CRLF line endings", async () => {
    await writeFile(inWorkspace("win.txt"), "one\r\ntwo\r\n");
    const outcome = await tool.execute({ path: "win.txt", old_string: "one\ntwo", new_string: "x" }, context());
    expect(outcome.error).toBe('old_string: not found in "win.txt". The file has CRLF line endings; old_string must have them too.');
  });

  it("refuses an edit that changes nothing, and fails for a missing or binary file", async () => {
    await expect(tool.execute({ path: "app.py", old_string: "main", new_string: "main" }, context())).rejects.toThrow(
      "new_string: is the same as old_string; the edit would change nothing",
    );
    expect((await tool.execute({ path: "nope.py", old_string: "a", new_string: "b" }, context())).error).toBe(
      'path: no such file "nope.py"; to create a file, use write_file',
    );
    await writeFile(inWorkspace("blob.bin"), Buffer.from([1, 0, 2]));
    expect((await tool.execute({ path: "blob.bin", old_string: "a", new_string: "b" }, context())).error).toBe(
      'path: "blob.bin" is a binary file; edit_file edits text files only',
    );
  });

  it("refuses to edit through a symlink out of the workspace", async () => {
    await writeFile(join(outside, "target.txt"), "secret");
    await symlink(join(outside, "target.txt"), inWorkspace("link.txt"));
    await expect(tool.execute({ path: "link.txt", old_string: "secret", new_string: "x" }, context())).rejects.toThrow(ToolArgumentError);
    expect(await readFile(join(outside, "target.txt"), "utf8")).toBe("secret");
  });
});
