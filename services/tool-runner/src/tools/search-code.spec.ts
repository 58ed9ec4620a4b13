import { mkdir, mkdtemp, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createNoneSandbox } from "../sandbox/create-command-sandbox";
import type { Workspace } from "../workspace/workspace";
import { createWorkspaces } from "../workspace/workspaces";
import { createSearchCodeTool } from "./search-code";
import { ToolArgumentError, type ToolContext } from "./tool";

let base: string;
let workspace: Workspace;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), "search-code-")));
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

describe("search_code", () => {
  const tool = createSearchCodeTool();

  it("lists matching lines as path:line:text, sorted, with a count; smart case by default", async () => {
    const outcome = await tool.execute({ query: "todo" }, context());
    expect(outcome.output).toBe("README.md:2:TODO: write docs\nsrc/main.ts:2:// TODO: remove\n[2 matches in 2 files]");
    expect(outcome.result).toEqual({
      matches: [
        { path: "README.md", line: 2, text: "TODO: write docs" },
        { path: "src/main.ts", line: 2, text: "// TODO: remove" },
      ],
      total_matches: 2,
    });
    expect(outcome).toMatchObject({ success: true, truncated: false });
  });

  it("follows case_sensitive, path and glob", async () => {
    expect((await tool.execute({ query: "todo", case_sensitive: true }, context())).output).toBe('no matches for "todo" in "."');
    expect((await tool.execute({ query: "helper", path: "src/util", case_sensitive: false }, context())).output.split("\n")).toEqual([
      'src/util/Helper.test.ts:1:test("helper", () => expect(helper(1)).toBe(2));',
      "src/util/helper.ts:1:export function helper(value: number): number {",
      "[2 matches in 2 files]",
    ]);
    expect((await tool.execute({ query: "helper\\(", glob: "main.ts" }, context())).output).toBe(
      "src/main.ts:3:export const answer = helper(41);\n[1 match in 1 file]",
    );
  });

  it("treats a query that starts with '-' as a pattern", async () => {
    await files({ "flags.txt": "run with --verbose\n" });
    expect((await tool.execute({ query: "--verbose" }, context())).output).toBe("flags.txt:1:run with --verbose\n[1 match in 1 file]");
  });

  it("caps the results and says how many more there are and how to narrow", async () => {
    await files({ "many.txt": "hit\n".repeat(30) });
    const outcome = await tool.execute({ query: "^hit$", max_results: 5 }, context());
    const shown = outcome.output.split("\n");
    expect(shown).toHaveLength(6);
    expect(shown[0]).toBe("many.txt:1:hit");
    expect(shown[5]).toBe("[25 more matches not shown; narrow with path or glob, or raise max_results]");
    expect(outcome).toMatchObject({ success: true, truncated: true, result: { total_matches: 30 } });
  });

  it("refuses an invalid regular expression as an argument error naming query", async () => {
    const searching = tool.execute({ query: "foo(" }, context());
    await expect(searching).rejects.toThrow(ToolArgumentError);
    await expect(searching).rejects.toThrow(/^query: invalid regular expression \(.*unclosed group/);
  });

  it("fails for a missing path and refuses one outside the workspace", async () => {
    expect(await tool.execute({ query: "x", path: "nope" }, context())).toMatchObject({ success: false, error: 'path: no such file or directory "nope"' });
    await expect(tool.execute({ query: "x", path: "/etc" }, context())).rejects.toThrow(/^path: "\/etc" is absolute/);
  });

  it("cuts very long matching lines", async () => {
    await files({ "min.js": `${"a".repeat(1000)}needle${"b".repeat(1000)}\n` });
    const outcome = await tool.execute({ query: "needle" }, context());
    expect(outcome.output).toMatch(/^min\.js:1:a{300}… \[line cut: 2006 characters\]\n/);
  });

  it("keeps the output within the output limit", async () => {
    await files({ "many.txt": `${"match this line with some padding\n".repeat(200)}` });
    const outcome = await tool.execute({ query: "match", max_results: 200 }, context({ outputLimitBytes: 500 }));
    expect(Buffer.byteLength(outcome.output)).toBeLessThanOrEqual(500);
    expect(outcome.truncated).toBe(true);
    expect(outcome.output).toContain("bytes cut]");
  });
});
