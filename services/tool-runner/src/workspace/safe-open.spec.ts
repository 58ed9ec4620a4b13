import { spawn, spawnSync } from "node:child_process";
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createNoneSandbox } from "../sandbox/create-command-sandbox";
import { writeFileAtomic } from "../tools/file-helpers";
import { createReadFileTool } from "../tools/read-file";
import { ToolArgumentError, type ToolContext } from "../tools/tool";
import { createWriteFileTool } from "../tools/write-file";
import { openDirectoryInside, openEntryInside, PathChangedError, pathThrough } from "./safe-open";
import type { Workspace } from "./workspace";
import { createWorkspaces } from "./workspaces";

let base: string;
let outside: string;
let workspace: Workspace;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "safe-open-")));
  outside = join(base, "outside");
  await mkdir(outside);
  await writeFile(join(outside, "f.txt"), "OUTSIDE\n");
  workspace = await createWorkspaces({ rootPath: join(base, "workspaces") }).open("ws", { create: true });
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

const inWorkspace = (path: string): string => join(workspace.rootPath, path);

describe("openDirectoryInside / openEntryInside", () => {
  it("opens what resolve returned, and names it through /proc/self/fd", async () => {
    await mkdir(inWorkspace("a/b"), { recursive: true });
    await writeFile(inWorkspace("a/b/f.txt"), "inside\n");
    const directory = await openDirectoryInside(workspace, inWorkspace("a/b"), "path");
    try {
      expect(await readlink(pathThrough(directory))).toBe(inWorkspace("a/b"));
    } finally {
      await directory.close();
    }
    const entry = await openEntryInside(workspace, inWorkspace("a/b/f.txt"), "path");
    try {
      expect(entry.info.isFile()).toBe(true);
      expect(await entry.handle.readFile("utf8")).toBe("inside\n");
    } finally {
      await entry.handle.close();
    }
  });

  it("refuses a component that became a symlink since it was resolved, as a changed path", async () => {
    await symlink(outside, inWorkspace("swapped"));
    // As if resolve had seen a directory there: the symlink must not be followed.
    await expect(openDirectoryInside(workspace, inWorkspace("swapped"), "path")).rejects.toThrow(PathChangedError);
    await expect(openEntryInside(workspace, inWorkspace("swapped/f.txt"), "path")).rejects.toThrow(/^path: "swapped\/f.txt" changed while it was being opened/);
    await symlink(join(outside, "f.txt"), inWorkspace("file-link"));
    await expect(openEntryInside(workspace, inWorkspace("file-link"), "path")).rejects.toThrow(ToolArgumentError);
  });

  it("creates missing directories when asked to, and answers ENOENT and ENOTDIR otherwise", async () => {
    await expect(openDirectoryInside(workspace, inWorkspace("x/y"), "path")).rejects.toMatchObject({ code: "ENOENT" });
    await writeFile(inWorkspace("plain"), "");
    await expect(openDirectoryInside(workspace, inWorkspace("plain/y"), "path")).rejects.toMatchObject({ code: "ENOTDIR" });
    const created = await openDirectoryInside(workspace, inWorkspace("x/y"), "path", { create: { owner: { uid: 1234, gid: 2345 } } });
    await created.close();
    expect(await lstat(inWorkspace("x/y"))).toMatchObject({ uid: 1234, gid: 2345 });
    expect(await lstat(inWorkspace("x"))).toMatchObject({ uid: 1234, gid: 2345 });
  });

  it("renames through the directory's handle, replacing a symlink at the name itself, never its target", async () => {
    await symlink(join(outside, "f.txt"), inWorkspace("target"));
    const directory = await openDirectoryInside(workspace, workspace.rootPath, "path");
    try {
      await writeFileAtomic(directory, "target", "new\n", { signal: new AbortController().signal });
    } finally {
      await directory.close();
    }
    expect((await lstat(inWorkspace("target"))).isFile()).toBe(true);
    expect(await readFile(inWorkspace("target"), "utf8")).toBe("new\n");
    expect(await readFile(join(outside, "f.txt"), "utf8")).toBe("OUTSIDE\n");
    expect((await readdir(workspace.rootPath)).filter((name) => name.includes(".tmp"))).toEqual([]);
  });

  it("gives a child process an opened directory as its working directory through /proc/self/fd", async () => {
    await mkdir(inWorkspace("d"));
    const directory = await openDirectoryInside(workspace, inWorkspace("d"), "path");
    try {
      const child = spawnSync("pwd", { cwd: pathThrough(directory), encoding: "utf8" });
      expect(child.stdout.trim()).toBe(inWorkspace("d"));
    } finally {
      await directory.close();
    }
  });
});

/** Swaps two paths with renameat2(RENAME_EXCHANGE) until `seconds` pass, as a command in the sandbox could. */
const swapperScript = `
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, end = sys.argv[1].encode(), sys.argv[2].encode(), time.time() + float(sys.argv[3])
swaps = 0
while time.time() < end:
    if libc.renameat2(-100, a, -100, b, 2) != 0:
        sys.exit("renameat2: errno %d" % ctypes.get_errno())
    swaps += 1
print(swaps)
`;

describe("a directory swapped for a symlink out of the workspace, in a loop", () => {
  it("never lets read_file read, nor write_file write, outside the workspace", async () => {
    await mkdir(inWorkspace("d"));
    await writeFile(inWorkspace("d/f.txt"), "inside\n");
    await symlink(outside, inWorkspace("swap"));
    const swapper = spawn("python3", ["-c", swapperScript, inWorkspace("d"), inWorkspace("swap"), "1.5"], { stdio: ["ignore", "pipe", "pipe"] });
    let swaps = "";
    swapper.stdout.on("data", (chunk: Buffer) => (swaps += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => swapper.once("close", resolve));
    const context: ToolContext = {
      workspace,
      agentType: "edit",
      mayWrite: true,
      timeoutMs: 5000,
      outputLimitBytes: 64 * 1024,
      sandbox: createNoneSandbox("no commands"),
      signal: new AbortController().signal,
    };
    const read = createReadFileTool();
    const write = createWriteFileTool();
    const seen = { reads: 0, writes: 0, refused: 0 };
    let running = true;
    void exited.then(() => (running = false));
    // Bounded: at most 5000 rounds, and only while the swapper runs.
    for (let round = 0; round < 5000 && running; round += 1) {
      try {
        const outcome = await read.execute({ path: "d/f.txt" }, context);
        expect(outcome.output).not.toContain("OUTSIDE");
        if (outcome.success) seen.reads += 1;
      } catch (error) {
        expect(error).toBeInstanceOf(ToolArgumentError);
        seen.refused += 1;
      }
      try {
        const outcome = await write.execute({ path: `d/w-${round}.txt`, content: "written\n" }, context);
        if (outcome.success) seen.writes += 1;
      } catch (error) {
        expect(error).toBeInstanceOf(ToolArgumentError);
        seen.refused += 1;
      }
    }
    expect(await exited).toBe(0);
    expect(Number(swaps)).toBeGreaterThan(0);
    // Whatever was refused, nothing landed outside and nothing outside changed.
    expect(await readdir(outside)).toEqual(["f.txt"]);
    expect(await readFile(join(outside, "f.txt"), "utf8")).toBe("OUTSIDE\n");
    expect(seen.reads + seen.writes + seen.refused).toBeGreaterThan(0);
  }, 20_000);
});
