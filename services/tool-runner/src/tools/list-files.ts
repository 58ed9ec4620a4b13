import { openEntryInside, pathThrough, type OpenedEntry } from "../workspace/safe-open";
import { displayPath, errorCode, failure, workspaceFileOwner } from "./file-helpers";
import { ripgrepError, runRipgrep, workspacePathOf, type RipgrepResult } from "./ripgrep";
import { ToolArgumentError, type ToolDefinition } from "./tool";
import { truncateMiddle } from "./truncate-output";

export interface ListFilesArguments {
  path?: string;
  glob?: string;
  max_results?: number;
}

export interface RipgrepToolOptions {
  /** The rg executable ("rg"). */
  readonly ripgrepPath?: string;
}

/** How long list_files and search_code results are cached: they see no change made outside the tool-runner. */
export const ripgrepCacheTtlSeconds = 30;

const defaultMaxResults = 500;
const maxMaxResults = 10_000;
/** Files counted past max_results to say how many more there are; beyond, "more than N". */
const maxCounted = 100_000;

/**
 * `list_files`: the files under a directory of the workspace, as `rg --files` sees them: files
 * ignored by .gitignore, .ignore or .rgignore (even outside a git repository) and hidden files are
 * left out. Sorted by path, so that the same tree always lists the same way.
 */
export function createListFilesTool(options: RipgrepToolOptions = {}): ToolDefinition<ListFilesArguments> {
  const executable = options.ripgrepPath ?? "rg";
  return {
    name: "list_files",
    description:
      "Lists the files of the workspace (or of a directory in it), one path per line, sorted. Files ignored by " +
      ".gitignore and hidden files are left out. Filter with a glob such as \"*.ts\" or \"src/**/*.py\".",
    parameters: {
      type: "object",
      properties: {
        path: { type: "string", description: "Directory relative to the workspace root (default: the root)." },
        glob: { type: "string", minLength: 1, description: "Only files matching this glob (ripgrep syntax; a leading ! excludes)." },
        max_results: { type: "integer", minimum: 1, maximum: maxMaxResults, description: `Most paths listed (default ${defaultMaxResults}).` },
      },
      additionalProperties: false,
    },
    readOnly: true,
    // No fingerprint (a tree has none that is cheap), so entries live briefly: see ToolDefinition.cacheTtlSeconds.
    cacheTtlSeconds: ripgrepCacheTtlSeconds,

    async execute(args, context) {
      const maxResults = args.max_results ?? defaultMaxResults;
      const hostPath = await context.workspace.resolve(args.path ?? "", "path");
      const where = JSON.stringify(displayPath(context.workspace, hostPath));
      let opened: OpenedEntry;
      try {
        // rg is given the opened directory as its working directory, never the path: rg follows symlinks in
        // paths it is given, and one may have been swapped in since resolve (see workspace/safe-open).
        opened = await openEntryInside(context.workspace, hostPath, "path");
      } catch (error) {
        if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR") return failure(`path: no such directory ${JSON.stringify(args.path)}`);
        throw error;
      }
      const directory = displayPath(context.workspace, hostPath);
      const files: string[] = [];
      let total = 0;
      let run: RipgrepResult;
      try {
        // A file named explicitly is listed whatever the glob says, as rg lists one.
        if (opened.info.isFile()) return { success: true, output: directory, result: { files: [directory], total: 1 }, truncated: false };
        if (!opened.info.isDirectory()) return failure(`path: ${where} is not a directory`);
        run = await runRipgrep({
          executable,
          args: ["--files", "--no-require-git", "--sort", "path", ...(args.glob === undefined ? [] : ["--glob", args.glob]), "--", "."],
          cwd: pathThrough(opened.handle),
          user: await workspaceFileOwner(context.workspace),
          timeoutMs: context.timeoutMs,
          signal: context.signal,
          onLine(line) {
            total += 1;
            if (files.length < maxResults) files.push(workspacePathOf(directory, line));
            return total < maxCounted;
          },
        });
      } finally {
        await opened.handle.close();
      }
      if (run.stoppedBecause === "timeout") {
        return failure(`listing timed out after ${context.timeoutMs} ms; narrow it with path or glob`);
      }
      if (run.exitCode === 2 && files.length === 0) {
        const message = ripgrepError(run.stderr);
        if (args.glob !== undefined && /glob/i.test(message)) throw new ToolArgumentError(`glob: invalid glob ${JSON.stringify(args.glob)} (${message})`);
        return failure(`listing failed: ${message}`);
      }
      if (files.length === 0) {
        return { success: true, output: `no files under ${where}${args.glob === undefined ? "" : ` matching ${JSON.stringify(args.glob)}`}`, result: { files: [], total: 0 }, truncated: false };
      }
      let output = files.join("\n");
      const capped = total > files.length;
      if (capped) {
        const more = run.stoppedBecause === "enough-output" ? `more than ${total - files.length}` : String(total - files.length);
        output += `\n[${more} more files not shown; narrow with path or glob, or raise max_results]`;
      }
      const cut = truncateMiddle(output, context.outputLimitBytes);
      return {
        success: true,
        output: cut.text,
        result: { files, total: run.stoppedBecause === "enough-output" ? null : total },
        truncated: capped || cut.truncated,
      };
    },
  };
}
