import { mkdir, mkdtemp, realpath, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createNoneSandbox } from "../sandbox/create-command-sandbox";
import type { Workspace } from "../workspace/workspace";
import { createWorkspaces } from "../workspace/workspaces";
import { createReadFileTool } from "./read-file";
import { ToolArgumentError, type ToolContext } from "./tool";

let base: string;
let workspace: Workspace;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "read-file-")));
  workspace = await createWorkspaces({ rootPath: base }).open("ws", { create: true });
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

function context(overrides: Partial<ToolContext> = {}): ToolContext {
  return {
    workspace,
    agentType: "plan",
    mayWrite: false,
    timeoutMs: 5000,
    outputLimitBytes: 64 * 1024,
    // read_file runs no command; a real backend that refuses them is all it needs.
    sandbox: createNoneSandbox("read_file runs no commands"),
    signal: new AbortController().signal,
    ...overrides,
  };
}

const lines = (count: number): string => Array.from({ length: count }, (_, index) => `line ${index + 1}`).join("\n") + "\n";

describe("read_file", () => {
  const tool = createReadFileTool({ windowLines: 10 });

  it("shows a small file whole, with right-aligned line numbers, and describes it in result", async () => {
    await writeFile(join(workspace.rootPath, "a.txt"), "first\n\tsecond\nthird");
    const outcome = await tool.execute({ path: "a.txt" }, context());
    expect(outcome).toEqual({
      success: true,
      output: "     1\tfirst\n     2\t\tsecond\n     3\tthird",
      result: { path: "a.txt", start_line: 1, end_line: 3, total_lines: 3 },
      truncated: false,
    });
  });

  it("shows the default window of a long file and says how to read on", async () => {
    await writeFile(join(workspace.rootPath, "long.txt"), lines(25));
    const outcome = await tool.execute({ path: "long.txt" }, context());
    expect(outcome.success).toBe(true);
    expect(outcome.truncated).toBe(true);
    expect(outcome.output.split("\n")).toHaveLength(11);
    expect(outcome.output).toMatch(/^ {5}1\tline 1\n/);
    expect(outcome.output).toMatch(/ {4}10\tline 10\n\[showing lines 1-10 of 25; read on with start_line=11\]$/);
    expect(outcome.result).toEqual({ path: "long.txt", start_line: 1, end_line: 10, total_lines: 25 });
  });

  it("shows the lines asked for, inclusive, and the end of the file without a note", async () => {
    await writeFile(join(workspace.rootPath, "long.txt"), lines(25));
    const middle = await tool.execute({ path: "long.txt", start_line: 12, end_line: 13 }, context());
    expect(middle.output).toBe("    12\tline 12\n    13\tline 13\n[showing lines 12-13 of 25; read on with start_line=14]");
    expect(middle.truncated).toBe(false);
    const end = await tool.execute({ path: "long.txt", start_line: 20, end_line: 999 }, context());
    expect(end.output).toBe(Array.from({ length: 6 }, (_, i) => `${String(20 + i).padStart(6)}\tline ${20 + i}`).join("\n"));
    expect(end.result).toEqual({ path: "long.txt", start_line: 20, end_line: 25, total_lines: 25 });
  });

  it("stops at the output limit at a line boundary and says where to go on", async () => {
    await writeFile(join(workspace.rootPath, "wide.txt"), `${"x".repeat(100)}\n`.repeat(50));
    const outcome = await createReadFileTool().execute({ path: "wide.txt" }, context({ outputLimitBytes: 1000 }));
    expect(Buffer.byteLength(outcome.output)).toBeLessThanOrEqual(1000);
    expect(outcome.truncated).toBe(true);
    const shown = (outcome.result as { end_line: number }).end_line;
    expect(shown).toBeGreaterThan(0);
    expect(outcome.output).toContain(`read on with start_line=${shown + 1}]`);
  });

  it("cuts a very long line and says how long it was", async () => {
    await writeFile(join(workspace.rootPath, "min.js"), "y".repeat(5000));
    const outcome = await createReadFileTool({ maxLineChars: 50 }).execute({ path: "min.js" }, context());
    expect(outcome.output).toBe(`     1\t${"y".repeat(50)}… [line cut: 5000 characters]`);
  });

  it("fails clearly for a missing file, a directory, a binary file and a start past the end", async () => {
    await mkdir(join(workspace.rootPath, "dir"));
    await writeFile(join(workspace.rootPath, "image.png"), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0x01]));
    await writeFile(join(workspace.rootPath, "short.txt"), "one\ntwo\n");
    expect(await tool.execute({ path: "nope/missing.txt" }, context())).toEqual({
      success: false,
      output: "",
      error: 'path: no such file "nope/missing.txt"',
      truncated: false,
    });
    expect((await tool.execute({ path: "dir" }, context())).error).toBe('path: "dir" is a directory; use list_files to see what it holds');
    expect((await tool.execute({ path: "image.png" }, context())).error).toBe(
      'path: "image.png" is a binary file (it contains NUL bytes); read_file shows text files only',
    );
    expect((await tool.execute({ path: "short.txt", start_line: 3 }, context())).error).toBe('start_line: 3 is past the end of "short.txt", which has 2 lines');
  });

  it("reads an empty file as empty", async () => {
    await writeFile(join(workspace.rootPath, "empty"), "");
    expect(await tool.execute({ path: "empty" }, context())).toMatchObject({ success: true, output: '("empty" is empty)', result: { total_lines: 0 } });
  });

  it("refuses end_line before start_line and paths outside the workspace as argument errors", async () => {
    await writeFile(join(workspace.rootPath, "a.txt"), "a\n");
    await expect(tool.execute({ path: "a.txt", start_line: 5, end_line: 2 }, context())).rejects.toThrow("end_line: 2 is before start_line 5");
    await expect(tool.execute({ path: "../../etc/passwd" }, context())).rejects.toThrow(ToolArgumentError);
    await symlink("/etc/passwd", join(workspace.rootPath, "passwd"));
    await expect(tool.execute({ path: "passwd" }, context())).rejects.toThrow(/^path: "passwd" resolves outside the workspace/);
  });

  it("rejects with the call's reason when the call is already cancelled", async () => {
    await writeFile(join(workspace.rootPath, "a.txt"), "a\n");
    const controller = new AbortController();
    controller.abort(new Error("client went away"));
    await expect(tool.execute({ path: "a.txt" }, context({ signal: controller.signal }))).rejects.toThrow();
  });

  it("has a cache fingerprint that changes when the file is changed outside the tool-runner", async () => {
    const path = join(workspace.rootPath, "a.txt");
    await writeFile(path, "one\n");
    await utimes(path, 1_000_000, 1_000_000);
    const signal = new AbortController().signal;
    const fingerprint = () => tool.cacheFingerprint!({ path: "a.txt" }, workspace, signal);
    const first = await fingerprint();
    expect(first).toEqual(expect.any(String));
    expect(await fingerprint()).toBe(first);
    // Same size, new mtime: an editor saving "two" over "one".
    await writeFile(path, "two\n");
    await utimes(path, 2_000_000, 2_000_000);
    const second = await fingerprint();
    expect(second).not.toBe(first);
    // Same mtime, new size.
    await writeFile(path, "longer\n");
    await utimes(path, 2_000_000, 2_000_000);
    expect(await fingerprint()).not.toBe(second);
    expect(await tool.cacheFingerprint!({ path: "missing.txt" }, workspace, signal)).toBeUndefined();
  });
});
