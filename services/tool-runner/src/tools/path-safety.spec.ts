import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createNoneSandbox } from "../sandbox/create-command-sandbox";
import type { Workspace } from "../workspace/workspace";
import { createWorkspaces } from "../workspace/workspaces";
import { createEditFileTool } from "./edit-file";
import { createListFilesTool } from "./list-files";
import { createReadFileTool } from "./read-file";
import { createSearchCodeTool } from "./search-code";
import { ToolArgumentError, type ToolContext, type ToolOutcome } from "./tool";
import { createWriteFileTool } from "./write-file";

// Every file tool against the paths a review found escaping the workspace, and special files.

let base: string;
let outside: string;
let workspace: Workspace;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "path-safety-")));
  outside = join(base, "outside");
  await mkdir(outside);
  await writeFile(join(outside, "secret.txt"), "TOP-SECRET outside\n");
  workspace = await createWorkspaces({ rootPath: join(base, "workspaces") }).open("ws", { create: true });
  await mkdir(join(workspace.rootPath, "a"));
  await writeFile(join(workspace.rootPath, "file.txt"), "inside\n");
  await symlink(outside, join(workspace.rootPath, "link"));
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

function context(): ToolContext {
  return {
    workspace,
    agentType: "edit",
    mayWrite: true,
    timeoutMs: 10_000,
    outputLimitBytes: 64 * 1024,
    sandbox: createNoneSandbox("file tools run no commands"),
    signal: new AbortController().signal,
  };
}

const tools: Record<string, (path: string) => Promise<ToolOutcome>> = {
  read_file: (path) => createReadFileTool().execute({ path }, context()),
  write_file: (path) => createWriteFileTool().execute({ path, content: "written by the tool\n" }, context()),
  edit_file: (path) => createEditFileTool().execute({ path, old_string: "TOP-SECRET", new_string: "EDITED" }, context()),
  search_code: (path) => createSearchCodeTool().execute({ query: "TOP-SECRET", path }, context()),
  list_files: (path) => createListFilesTool().execute({ path }, context()),
};

const escapes = ["missing/../link/secret.txt", "file.txt/../link/secret.txt", "a/missing/../../link/secret.txt", "missing/../link", "a/missing/../../link"];

describe.each(Object.keys(tools))("%s", (name) => {
  it.each(escapes)("refuses %p, whose '..' follows a missing part and hides a symlink out of the workspace", async (path) => {
    // Paths naming the directory suit list_files and search_code; the file ones suit the rest: all must be refused.
    await expect(tools[name]!(path)).rejects.toThrow(ToolArgumentError);
    expect(await readFile(join(outside, "secret.txt"), "utf8")).toBe("TOP-SECRET outside\n");
    expect(await readdir(outside)).toEqual(["secret.txt"]);
  });
});

describe("special files", () => {
  beforeEach(async () => {
    await promisify(execFile)("mkfifo", [join(workspace.rootPath, "fifo")]);
  });

  it.each(["read_file", "edit_file"])("%s refuses a FIFO as not a regular file instead of blocking on it", async (name) => {
    const outcome = await tools[name]!("fifo");
    expect(outcome).toMatchObject({ success: false, error: 'path: "fifo" is not a regular file' });
  });

  it("search_code refuses a FIFO named as its path, and skips one while searching a directory", async () => {
    expect(await tools["search_code"]!("fifo")).toMatchObject({ success: false, error: 'path: "fifo" is not a regular file or a directory' });
    await writeFile(join(workspace.rootPath, "a/found.txt"), "TOP-SECRET inside\n");
    expect((await tools["search_code"]!("")).output).toContain("a/found.txt:1:TOP-SECRET inside");
  });

  it("list_files refuses a FIFO named as its path", async () => {
    expect(await tools["list_files"]!("fifo")).toMatchObject({ success: false, error: 'path: "fifo" is not a directory' });
  });
});

describe("ripgrep's paths through an opened directory", () => {
  it("lists and searches a subdirectory with workspace-relative paths, and a single file", async () => {
    await mkdir(join(workspace.rootPath, "a/b"));
    await writeFile(join(workspace.rootPath, "a/b/c.txt"), "needle\n");
    expect((await createListFilesTool().execute({ path: "a" }, context())).output).toBe("a/b/c.txt");
    expect((await createSearchCodeTool().execute({ query: "needle", path: "a" }, context())).output.split("\n")[0]).toBe("a/b/c.txt:1:needle");
    const single = await createSearchCodeTool().execute({ query: "needle", path: "a/b/c.txt" }, context());
    expect(single.result).toEqual({ matches: [{ path: "a/b/c.txt", line: 1, text: "needle" }], total_matches: 1 });
    expect((await createListFilesTool().execute({ path: "a/b/c.txt" }, context())).output).toBe("a/b/c.txt");
  });
});
