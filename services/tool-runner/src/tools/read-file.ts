import { stat } from "node:fs/promises";
import { openEntryInside, type OpenedEntry } from "../workspace/safe-open";
import { displayPath, errorCode, failure, looksBinary, readOpenedFile } from "./file-helpers";
import { ToolArgumentError, type ToolDefinition } from "./tool";

export interface ReadFileArguments {
  path: string;
  start_line?: number;
  end_line?: number;
}

export interface ReadFileOptions {
  /** Lines shown when the caller names no end_line (2000). */
  readonly windowLines?: number;
  /** Characters of one line shown; a longer line (minified code) is cut (2000). */
  readonly maxLineChars?: number;
  /** Larger files are refused: reading them whole to show a window would cost too much (64 MiB). */
  readonly maxFileBytes?: number;
}

/**
 * `read_file`: a window of a text file with line numbers (`   12\tline`), by default its first
 * 2000 lines, and never more than the output limit; the output says how to read on when cut.
 */
export function createReadFileTool(options: ReadFileOptions = {}): ToolDefinition<ReadFileArguments> {
  const windowLines = options.windowLines ?? 2000;
  const maxLineChars = options.maxLineChars ?? 2000;
  const maxFileBytes = options.maxFileBytes ?? 64 * 1024 * 1024;
  return {
    name: "read_file",
    description:
      `Reads a text file of the workspace and shows it with line numbers. Shows at most ${windowLines} lines at a time: ` +
      "give start_line and end_line (1-based, inclusive) to read another part.",
    parameters: {
      type: "object",
      properties: {
        path: { type: "string", description: "File path relative to the workspace root." },
        start_line: { type: "integer", minimum: 1, description: "First line to show (1-based; default 1)." },
        end_line: { type: "integer", minimum: 1, description: "Last line to show, inclusive." },
      },
      required: ["path"],
      additionalProperties: false,
    },
    readOnly: true,

    async cacheFingerprint(args, workspace) {
      try {
        const info = await stat(await workspace.resolve(args.path, "path"));
        // An edit made outside the tool-runner (an editor, git) changes at least one of these.
        return `${info.ino}:${info.size}:${info.mtimeMs}`;
      } catch {
        return undefined;
      }
    },

    async execute(args, context) {
      const startLine = args.start_line ?? 1;
      if (args.end_line !== undefined && args.end_line < startLine) {
        throw new ToolArgumentError(`end_line: ${args.end_line} is before start_line ${startLine}`);
      }
      const hostPath = await context.workspace.resolve(args.path, "path");
      const shown = JSON.stringify(displayPath(context.workspace, hostPath));
      let opened: OpenedEntry;
      try {
        // Through directory handles, never by name again (see workspace/safe-open), and without blocking on a FIFO.
        opened = await openEntryInside(context.workspace, hostPath, "path");
      } catch (error) {
        if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR") return failure(`path: no such file ${JSON.stringify(args.path)}`);
        throw error;
      }
      let content: Buffer | undefined;
      try {
        const { info } = opened;
        if (info.isDirectory()) return failure(`path: ${shown} is a directory; use list_files to see what it holds`);
        // A FIFO would block the read (in libuv's threadpool, where no signal reaches it); devices and sockets hold no text.
        if (!info.isFile()) return failure(`path: ${shown} is not a regular file`);
        if (info.size > maxFileBytes) {
          return failure(`path: ${shown} is too large to read (${info.size} bytes; at most ${maxFileBytes}); use search_code to find the part you need`);
        }
        // Capped: the file may grow after the size was checked.
        content = await readOpenedFile(opened.handle, maxFileBytes, context.signal);
      } finally {
        await opened.handle.close();
      }
      if (content === undefined) {
        return failure(`path: ${shown} is too large to read (more than ${maxFileBytes} bytes); use search_code to find the part you need`);
      }
      if (looksBinary(content)) return failure(`path: ${shown} is a binary file (it contains NUL bytes); read_file shows text files only`);

      const lines = content.toString("utf8").split("\n");
      // A final newline ends the last line; it does not start another.
      if (lines.at(-1) === "") lines.pop();
      const totalLines = lines.length;
      if (totalLines === 0) {
        return { success: true, output: `(${shown} is empty)`, result: { path: args.path, start_line: 1, end_line: 0, total_lines: 0 }, truncated: false };
      }
      if (startLine > totalLines) {
        return failure(`start_line: ${startLine} is past the end of ${shown}, which has ${totalLines} lines`);
      }

      const wantedEnd = Math.min(args.end_line ?? startLine + windowLines - 1, totalLines);
      const numberWidth = Math.max(6, String(wantedEnd).length + 1);
      // Leave room for the note that says how to read on.
      const budget = context.outputLimitBytes - 200;
      const shownLines: string[] = [];
      let bytes = 0;
      let endLine = startLine - 1;
      for (let number = startLine; number <= wantedEnd; number += 1) {
        let text = lines[number - 1]!.replace(/\r$/, "");
        if (text.length > maxLineChars) text = `${text.slice(0, maxLineChars)}… [line cut: ${text.length} characters]`;
        const formatted = `${String(number).padStart(numberWidth)}\t${text}`;
        const lineBytes = Buffer.byteLength(formatted) + 1;
        if (bytes + lineBytes > budget && shownLines.length > 0) break;
        shownLines.push(formatted);
        bytes += lineBytes;
        endLine = number;
      }
      const truncated = endLine < totalLines && (args.end_line === undefined || endLine < args.end_line);
      let output = shownLines.join("\n");
      if (endLine < totalLines) {
        output += `\n[showing lines ${startLine}-${endLine} of ${totalLines}; read on with start_line=${endLine + 1}]`;
      }
      return {
        success: true,
        output,
        result: { path: args.path, start_line: startLine, end_line: endLine, total_lines: totalLines },
        truncated,
      };
    },
  };
}
