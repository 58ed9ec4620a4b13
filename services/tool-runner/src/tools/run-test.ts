import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { errorCode, failure } from "./file-helpers";
import { runInSandbox, type SandboxLimits } from "./run-command";
import type { ToolDefinition } from "./tool";

export interface RunTestArguments {
  timeout_ms?: number;
}

export interface RunTestOptions extends SandboxLimits {
  /** RUN_TEST_COMMAND: when set, the command run; otherwise it is detected from the workspace's files. */
  readonly command?: string;
}

/** A test command and the file that suggested it. */
export interface DetectedTestCommand {
  readonly command: string;
  readonly detectedFrom: string;
}

/** What detection looks for, in order; said in full when nothing is found. */
const lookedFor =
  "package.json with a test script, pyproject.toml, pytest.ini, setup.py, setup.cfg, tox.ini or a tests/ directory with Python files, " +
  "Cargo.toml, go.mod, a Makefile with a test target";

/** npm writes this test script into every new package.json; it only fails. */
const npmPlaceholderTest = /no test specified/;

/**
 * The test command for a workspace, from the files at its root, or undefined when none suggests one.
 * The first match wins: package.json, Python project files, Cargo.toml, go.mod, Makefile.
 */
export async function detectTestCommand(rootPath: string, signal: AbortSignal): Promise<DetectedTestCommand | undefined> {
  const read = async (name: string): Promise<string | undefined> => {
    try {
      return await readFile(join(rootPath, name), { encoding: "utf8", signal });
    } catch (error) {
      if (errorCode(error) === "ENOENT" || errorCode(error) === "EISDIR") return undefined;
      throw error;
    }
  };
  const packageJson = await read("package.json");
  if (packageJson !== undefined) {
    try {
      const scripts = (JSON.parse(packageJson) as { scripts?: Record<string, unknown> }).scripts;
      const test = scripts?.test;
      if (typeof test === "string" && test.trim() !== "" && !npmPlaceholderTest.test(test)) return { command: "npm test --silent", detectedFrom: "package.json" };
    } catch {
      // A package.json that does not parse has no test script we could run; look further.
    }
  }
  for (const name of ["pyproject.toml", "pytest.ini", "setup.py", "setup.cfg", "tox.ini"]) {
    if ((await read(name)) !== undefined) return { command: "python3 -m pytest -q", detectedFrom: name };
  }
  if (await hasPythonFiles(join(rootPath, "tests"))) return { command: "python3 -m pytest -q", detectedFrom: "tests/" };
  if ((await read("Cargo.toml")) !== undefined) return { command: "cargo test", detectedFrom: "Cargo.toml" };
  if ((await read("go.mod")) !== undefined) return { command: "go test ./...", detectedFrom: "go.mod" };
  for (const name of ["Makefile", "makefile", "GNUmakefile"]) {
    const makefile = await read(name);
    if (makefile !== undefined && /^test\s*:/m.test(makefile)) return { command: "make test", detectedFrom: name };
  }
  return undefined;
}

async function hasPythonFiles(directory: string): Promise<boolean> {
  try {
    return (await readdir(directory)).some((name) => name.endsWith(".py"));
  } catch (error) {
    if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR") return false;
    throw error;
  }
}

/**
 * `run_test`: runs the workspace's tests through the sandbox, like run_command. The command is
 * RUN_TEST_COMMAND when configured, else detected from the workspace's files; callers cannot
 * choose it (that is what run_command is for, and agents given only run_test must not run anything else).
 */
export function createRunTestTool(options: RunTestOptions = {}): ToolDefinition<RunTestArguments> {
  return {
    name: "run_test",
    description:
      "Runs the workspace's test suite (the configured test command, or one detected from package.json, pyproject.toml, " +
      "Cargo.toml, go.mod or a Makefile) in the sandbox and returns its output and exit code.",
    parameters: {
      type: "object",
      properties: {
        timeout_ms: { type: "integer", minimum: 1, description: "Kill the tests after this many milliseconds (capped by the call's own timeout)." },
      },
      additionalProperties: false,
    },
    readOnly: false,
    honoursReadOnlyAccess: true,

    async execute(args, context) {
      const detected: DetectedTestCommand | undefined =
        options.command !== undefined ? { command: options.command, detectedFrom: "RUN_TEST_COMMAND" } : await detectTestCommand(context.workspace.rootPath, context.signal);
      if (!detected) {
        return failure(`no test command found: looked for ${lookedFor} at the workspace root; set RUN_TEST_COMMAND to configure one`);
      }
      const outcome = await runInSandbox(detected.command, args.timeout_ms, context, options);
      const commandResult = { command: detected.command, detected_from: detected.detectedFrom };
      return { ...outcome, result: { ...commandResult, ...(outcome.result as Record<string, unknown> | undefined) } };
    },
  };
}
