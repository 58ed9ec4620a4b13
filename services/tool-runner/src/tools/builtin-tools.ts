import { createEditFileTool } from "./edit-file";
import { createListFilesTool } from "./list-files";
import { createReadFileTool, type ReadFileOptions } from "./read-file";
import { createRunCommandTool, type SandboxLimits } from "./run-command";
import { createRunTestTool } from "./run-test";
import { createSearchCodeTool } from "./search-code";
import type { AnyToolDefinition } from "./tool-registry";
import { createWebSearchTool } from "./web-search";
import { createWriteFileTool } from "./write-file";

export interface BuiltinToolsOptions extends SandboxLimits {
  /** RUN_TEST_COMMAND. */
  readonly runTestCommand?: string;
  /** WEB_SEARCH_URL; unset, web_search fails saying so. */
  readonly webSearchUrl?: string;
  /** The rg executable ("rg" from PATH). */
  readonly ripgrepPath?: string;
  readonly readFile?: ReadFileOptions;
}

/** Names of the built-in tools, in the order they are listed. */
export const builtinToolNames = ["read_file", "list_files", "search_code", "write_file", "edit_file", "run_command", "run_test", "web_search"] as const;

/** The built-in tools, ready for createToolRegistry. */
export function createBuiltinTools(options: BuiltinToolsOptions = {}): AnyToolDefinition[] {
  const limits: SandboxLimits = {
    ...(options.memoryLimitMb === undefined ? {} : { memoryLimitMb: options.memoryLimitMb }),
    ...(options.outputKillBytes === undefined ? {} : { outputKillBytes: options.outputKillBytes }),
  };
  const ripgrep = options.ripgrepPath === undefined ? {} : { ripgrepPath: options.ripgrepPath };
  return [
    createReadFileTool(options.readFile),
    createListFilesTool(ripgrep),
    createSearchCodeTool(ripgrep),
    createWriteFileTool(),
    createEditFileTool(),
    createRunCommandTool(limits),
    createRunTestTool({ ...limits, ...(options.runTestCommand === undefined ? {} : { command: options.runTestCommand }) }),
    createWebSearchTool(options.webSearchUrl === undefined ? {} : { url: options.webSearchUrl }),
  ];
}
