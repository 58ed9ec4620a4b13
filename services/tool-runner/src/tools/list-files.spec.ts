import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createNoneSandbox } from "../sandbox/create-command-sandbox";
import type { Workspace } from "../workspace/workspace";
import { createWorkspaces } from "../workspace/workspaces";
import { createListFilesTool } from "./list-files";
import { ToolArgumentError, type ToolContext } from "./tool";

let base: string;
let workspace: Workspace;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "list-files-")));
  workspace = await createWorkspaces({ rootPath: join(base, "workspaces") }).open("ws", { create: true });
  await files({
    "README.md": "# Demo\nTODO: write docs\n",
    "src/main.ts": 'import { helper } from "./util/helper";\n// TODO: remove\nexport const answer = helper(41);\n',
    "src/util/helper.ts": "export function helper(value: number): number {\n  return value + 1;\n}\n",
    "src/util/Helper.test.ts": 'test("helper", () => expect(helper(1)).toBe(2));\n',
    "build/out.js": "// TODO generated\n",
    "notes.log": "TODO ignored by .ignore\n",
    ".hidden/secret.ts": "// TODO hidden\n",
    ".env": "TODO=1\n",
    // No git repository here: --no-require-git makes .gitignore count anyway.
    ".gitignore": "build/\n",
    ".ignore": "*.log\n",
  });
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

async function files(tree: Record<string, string>): Promise<void> {
  for (const [path, content] of Object.entries(tree)) {
    await mkdir(dirname(join(workspace.rootPath, path)), { recursive: true });
    await writeFile(join(workspace.rootPath, path), content);
  }
}

function context(overrides: Partial<ToolContext> = {}): ToolContext {
  return {
    workspace,
    agentType: "plan",
    mayWrite: false,
    timeoutMs: 10_000,
    outputLimitBytes: 64 * 1024,
    // These tools run ripgrep themselves, never a command in the sandbox.
    sandbox: createNoneSandbox("list_files and search_code run no commands"),
    signal: new AbortController().signal,
    ...overrides,
  };
}

describe("list_files", () => {
  const tool = createListFilesTool();

  it("lists the workspace sorted, leaving out .gitignore'd, .ignore'd and hidden files", async () => {
    const outcome = await tool.execute({}, context());
    expect(outcome).toEqual({
      success: true,
      output: "README.md\nsrc/main.ts\nsrc/util/Helper.test.ts\nsrc/util/helper.ts",
      result: { files: ["README.md", "src/main.ts", "src/util/Helper.test.ts", "src/util/helper.ts"], total: 4 },
      truncated: false,
    });
  });

  it("lists a directory and filters with a glob", async () => {
    expect((await tool.execute({ path: "src/util" }, context())).output).toBe("src/util/Helper.test.ts\nsrc/util/helper.ts");
    expect((await tool.execute({ glob: "*.md" }, context())).output).toBe("README.md");
    expect((await tool.execute({ glob: "!*.test.ts", path: "src" }, context())).output).toBe("src/main.ts\nsrc/util/helper.ts");
  });

  it("caps the list and says how many more there are and how to narrow it", async () => {
    const outcome = await tool.execute({ max_results: 2 }, context());
    expect(outcome.output).toBe("README.md\nsrc/main.ts\n[2 more files not shown; narrow with path or glob, or raise max_results]");
    expect(outcome.truncated).toBe(true);
    expect(outcome.result).toEqual({ files: ["README.md", "src/main.ts"], total: 4 });
  });

  it("says so when nothing matches, and fails for a missing directory", async () => {
    expect(await tool.execute({ glob: "*.rs" }, context())).toMatchObject({ success: true, output: 'no files under "." matching "*.rs"' });
    expect(await tool.execute({ path: "nope" }, context())).toMatchObject({ success: false, error: 'path: no such directory "nope"' });
  });

  it("refuses a path outside the workspace, also through a symlink", async () => {
    await expect(tool.execute({ path: "../.." }, context())).rejects.toThrow(ToolArgumentError);
    await symlink("/etc", join(workspace.rootPath, "etc"));
    await expect(tool.execute({ path: "etc" }, context())).rejects.toThrow(/^path: "etc" resolves outside the workspace/);
  });

  it("does not follow a symlinked directory that leads outside when listing the root", async () => {
    await symlink(base, join(workspace.rootPath, "escape"));
    expect((await tool.execute({}, context())).output).not.toContain("escape");
  });

  it("rejects with the call's reason when the call is cancelled", async () => {
    const controller = new AbortController();
    controller.abort(new Error("cancelled by the client"));
    await expect(tool.execute({}, context({ signal: controller.signal }))).rejects.toThrow("cancelled by the client");
  });
});
