import type { Stats } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { openDirectoryInside, openEntryIn, type OpenedEntry } from "../workspace/safe-open";
import { displayPath, errorCode, failure, looksBinary, readOpenedFile, writeFileAtomic } from "./file-helpers";
import { ToolArgumentError, type ToolDefinition, type ToolOutcome } from "./tool";

export interface EditFileArguments {
  path: string;
  old_string: string;
  new_string: string;
  replace_all?: boolean;
}

/** Files larger than this are not edited in memory (64 MiB). */
const maxFileBytes = 64 * 1024 * 1024;

/**
 * `edit_file`: replaces an exact piece of text in a file. The piece must occur exactly once unless
 * replace_all is set, so that a model never edits a place it did not mean; the file is rewritten
 * atomically and keeps its mode.
 */
export function createEditFileTool(): ToolDefinition<EditFileArguments> {
  return {
    name: "edit_file",
    description:
      "Replaces old_string with new_string in a file. old_string must match the file exactly, including whitespace and " +
      "indentation, and occur exactly once (include surrounding lines to make it unique), unless replace_all is true.",
    parameters: {
      type: "object",
      properties: {
        path: { type: "string", minLength: 1, description: "File path relative to the workspace root." },
        old_string: { type: "string", minLength: 1, description: "The exact text to replace." },
        new_string: { type: "string", description: "The text to put in its place." },
        replace_all: { type: "boolean", description: "Replace every occurrence (default false: exactly one must exist)." },
      },
      required: ["path", "old_string", "new_string"],
      additionalProperties: false,
    },
    readOnly: false,

    async execute(args, context) {
      if (args.old_string === args.new_string) throw new ToolArgumentError("new_string: is the same as old_string; the edit would change nothing");
      const hostPath = await context.workspace.resolve(args.path, "path");
      const shown = JSON.stringify(displayPath(context.workspace, hostPath));
      const notFound = failure(`path: no such file ${JSON.stringify(args.path)}; to create a file, use write_file`);
      if (hostPath === context.workspace.rootPath) return failure(`path: ${shown} is a directory`);
      let directory: FileHandle;
      try {
        // The file and its directory are opened through handles, never by name again: see workspace/safe-open.
        directory = await openDirectoryInside(context.workspace, dirname(hostPath), "path");
      } catch (error) {
        if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR") return notFound;
        throw error;
      }
      try {
        const name = basename(hostPath);
        let file: OpenedEntry;
        try {
          file = await openEntryIn(directory, name, "path", shown);
        } catch (error) {
          if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR") return notFound;
          throw error;
        }
        let bytes: Buffer | undefined;
        const { info } = file;
        try {
          if (info.isDirectory()) return failure(`path: ${shown} is a directory`);
          // A FIFO would block the read forever; devices and sockets are no text to edit either.
          if (!info.isFile()) return failure(`path: ${shown} is not a regular file`);
          if (info.size > maxFileBytes) return failure(`path: ${shown} is too large to edit (${info.size} bytes; at most ${maxFileBytes})`);
          bytes = await readOpenedFile(file.handle, maxFileBytes, context.signal);
        } finally {
          await file.handle.close();
        }
        if (bytes === undefined) return failure(`path: ${shown} is too large to edit (more than ${maxFileBytes} bytes)`);
        return await applyEdit(args, shown, bytes, info, directory, name, context.signal);
      } finally {
        await directory.close();
      }
    },
  };
}

/** Replaces old_string in the file read as `bytes` and writes it back atomically into `directory`. */
async function applyEdit(
  args: EditFileArguments,
  shown: string,
  bytes: Buffer,
  info: Stats,
  directory: FileHandle,
  name: string,
  signal: AbortSignal,
): Promise<ToolOutcome> {
  if (looksBinary(bytes)) return failure(`path: ${shown} is a binary file; edit_file edits text files only`);
  const content = bytes.toString("utf8");
  const positions = occurrences(content, args.old_string);
  if (positions.length === 0) return failure(`old_string: not found in ${shown}. ${notFoundHint(content, args.old_string)}`);
  if (positions.length > 1 && !args.replace_all) {
    return failure(
      `old_string: found ${positions.length} times in ${shown} (lines ${positions.map((index) => lineOf(content, index)).join(", ")}); ` +
        "include more surrounding lines to make it unique, or set replace_all to replace every one",
    );
  }
  // split/join, not String.replace: "$&" or "$1" in new_string must stay literal.
  const edited = content.split(args.old_string).join(args.new_string);
  // The rename puts a new file in place; it keeps the old one's owner (when this process may set it) as well as its
  // mode, less setuid/setgid (see write_file).
  const owner = process.getuid?.() === 0 ? { uid: info.uid, gid: info.gid } : undefined;
  await writeFileAtomic(directory, name, edited, { mode: info.mode & 0o1777, owner, signal });
  const lines = positions.map((index) => lineOf(content, index));
  const count = positions.length;
  return {
    success: true,
    output: `Replaced ${count} ${count === 1 ? "occurrence" : "occurrences"} in ${shown} (line${count === 1 ? "" : "s"} ${lines.join(", ")})`,
    result: { path: args.path, replacements: count, lines },
    truncated: false,
  };
}

/** Start indices of the non-overlapping occurrences of `needle`, as split() counts them. */
function occurrences(haystack: string, needle: string): number[] {
  const found: number[] = [];
  for (let index = haystack.indexOf(needle); index >= 0; index = haystack.indexOf(needle, index + needle.length)) found.push(index);
  return found;
}

function lineOf(content: string, index: number): number {
  let line = 1;
  for (let position = content.indexOf("\n"); position >= 0 && position < index; position = content.indexOf("\n", position + 1)) line += 1;
  return line;
}

/** Why a model's old_string most often fails to match, when it can be told. */
function notFoundHint(content: string, needle: string): string {
  if (content.includes("\r\n") && needle.includes("\n") && !needle.includes("\r\n") && content.includes(needle.replace(/\n/g, "\r\n"))) {
    return "The file has CRLF line endings; old_string must have them too.";
  }
  const squeeze = (text: string): string => text.replace(/\s+/g, " ").trim();
  if (squeeze(content).includes(squeeze(needle))) {
    return "A match differs only in whitespace or indentation: copy the text exactly as read_file shows it (without the line numbers).";
  }
  return "It must match the file exactly, including whitespace and indentation; read the file again with read_file.";
}
