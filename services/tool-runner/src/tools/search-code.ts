import { openEntryInside, pathThrough, type OpenedEntry } from "../workspace/safe-open";
import { displayPath, errorCode, failure, workspaceFileOwner } from "./file-helpers";
import { ripgrepCacheTtlSeconds, type RipgrepToolOptions } from "./list-files";
import { ripgrepError, runRipgrep, workspacePathOf } from "./ripgrep";
import { ToolArgumentError, type ToolDefinition } from "./tool";
import { truncateMiddle } from "./truncate-output";

export interface SearchCodeArguments {
  query: string;
  path?: string;
  glob?: string;
  case_sensitive?: boolean;
  max_results?: number;
}

/** One matching line. */
export interface CodeMatch {
  readonly path: string;
  readonly line: number;
  readonly text: string;
}

const defaultMaxResults = 100;
const maxMaxResults = 2000;
/** Characters of a matching line shown; minified files have lines of megabytes. */
const maxLineChars = 300;
/** Matches counted past max_results to say how many more there are; beyond, "more than N". */
const maxCounted = 100_000;

/** The parts of rg's `--json` messages read here. */
interface RipgrepMessage {
  type: string;
  data?: {
    path?: { text?: string; bytes?: string };
    lines?: { text?: string; bytes?: string };
    line_number?: number | null;
  };
}

/**
 * `search_code`: a regular expression search over the workspace with `rg --json`, one result per
 * matching line as `path:line:text`. Case follows the query (smart case) unless case_sensitive is
 * given. Ignored and hidden files are skipped as list_files skips them.
 */
export function createSearchCodeTool(options: RipgrepToolOptions = {}): ToolDefinition<SearchCodeArguments> {
  const executable = options.ripgrepPath ?? "rg";
  return {
    name: "search_code",
    description:
      "Searches the workspace's files for a regular expression (Rust regex syntax, like ripgrep) and lists matching lines " +
      "as path:line:text. Narrow with path (a directory or file) and glob (e.g. \"*.ts\"). Without case_sensitive, " +
      "a query in lowercase matches any case.",
    parameters: {
      type: "object",
      properties: {
        query: { type: "string", minLength: 1, description: "Regular expression to search for." },
        path: { type: "string", description: "Directory or file to search, relative to the workspace root (default: the root)." },
        glob: { type: "string", minLength: 1, description: "Only files matching this glob (a leading ! excludes)." },
        case_sensitive: { type: "boolean", description: "true: exact case; false: any case; unset: any case unless the query has capitals." },
        max_results: { type: "integer", minimum: 1, maximum: maxMaxResults, description: `Most matching lines shown (default ${defaultMaxResults}).` },
      },
      required: ["query"],
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
        // rg never gets the path: it follows symlinks in paths it is given, and one may have been swapped in
        // since resolve (see workspace/safe-open). A directory is its working directory, a file its stdin.
        opened = await openEntryInside(context.workspace, hostPath, "path");
      } catch (error) {
        if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR") return failure(`path: no such file or directory ${JSON.stringify(args.path)}`);
        throw error;
      }
      const directory = displayPath(context.workspace, hostPath);
      const isFile = opened.info.isFile();
      if (!isFile && !opened.info.isDirectory()) {
        await opened.handle.close();
        return failure(`path: ${where} is not a regular file or a directory`);
      }
      const user = await workspaceFileOwner(context.workspace).catch(async (error: unknown) => {
        await opened.handle.close();
        throw error;
      });
      const caseFlag = args.case_sensitive === undefined ? "--smart-case" : args.case_sensitive ? "--case-sensitive" : "--ignore-case";
      const matches: CodeMatch[] = [];
      const files = new Set<string>();
      let total = 0;
      const run = await runRipgrep({
        cwd: isFile ? "/" : pathThrough(opened.handle),
        ...(isFile ? { stdin: opened.handle.fd } : {}),
        user,
        executable,
        args: [
          "--json",
          "--no-require-git",
          "--sort",
          "path",
          caseFlag,
          ...(args.glob === undefined ? [] : ["--glob", args.glob]),
          // -e: a query that starts with "-" is a pattern, not an option.
          "-e",
          args.query,
          "--",
          isFile ? "-" : ".",
        ],
        timeoutMs: context.timeoutMs,
        signal: context.signal,
        onLine(line) {
          let message: RipgrepMessage;
          try {
            message = JSON.parse(line) as RipgrepMessage;
          } catch {
            return true;
          }
          if (message.type !== "match" || !message.data) return true;
          total += 1;
          // rg names stdin "<stdin>"; a searched directory's files relative to it.
          const path = isFile ? directory : workspacePathOf(directory, decodeText(message.data.path));
          files.add(path);
          if (matches.length < maxResults) {
            let text = decodeText(message.data.lines).replace(/\r?\n$/, "");
            if (text.length > maxLineChars) text = `${text.slice(0, maxLineChars)}… [line cut: ${text.length} characters]`;
            matches.push({ path, line: message.data.line_number ?? 0, text });
          }
          return total < maxCounted;
        },
      }).finally(() => opened.handle.close());
      if (run.stoppedBecause === "timeout") {
        return failure(`search timed out after ${context.timeoutMs} ms; narrow it with path or glob`);
      }
      // Exit 2 with matches: some files could not be read; what was found is still worth showing.
      if (run.exitCode === 2 && total === 0) {
        const message = ripgrepError(run.stderr);
        if (/regex parse error|error parsing regex/i.test(run.stderr)) throw new ToolArgumentError(`query: invalid regular expression (${message})`);
        if (args.glob !== undefined && /glob/i.test(message)) throw new ToolArgumentError(`glob: invalid glob ${JSON.stringify(args.glob)} (${message})`);
        return failure(`search failed: ${message}`);
      }
      if (total === 0) {
        return { success: true, output: `no matches for ${JSON.stringify(args.query)} in ${where}`, result: { matches: [], total_matches: 0 }, truncated: false };
      }
      const counted = run.stoppedBecause === "enough-output";
      const lines = matches.map((match) => `${match.path}:${match.line}:${match.text}`);
      const capped = total > matches.length;
      if (capped) {
        const more = counted ? `more than ${total - matches.length}` : String(total - matches.length);
        lines.push(`[${more} more matches not shown; narrow with path or glob, or raise max_results]`);
      } else {
        lines.push(`[${total} ${total === 1 ? "match" : "matches"} in ${files.size} ${files.size === 1 ? "file" : "files"}]`);
      }
      const cut = truncateMiddle(lines.join("\n"), context.outputLimitBytes);
      return {
        success: true,
        output: cut.text,
        result: { matches, total_matches: counted ? null : total },
        truncated: capped || cut.truncated,
      };
    },
  };
}

/** rg gives text as `text`, or as base64 `bytes` when it is not valid UTF-8. */
function decodeText(value: { text?: string; bytes?: string } | undefined): string {
  if (value?.text !== undefined) return value.text;
  if (value?.bytes !== undefined) return Buffer.from(value.bytes, "base64").toString("utf8");
  return "";
}
