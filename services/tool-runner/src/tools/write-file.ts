import { lstat } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { openDirectoryInside, pathThrough } from "../workspace/safe-open";
import { displayPath, errorCode, failure, workspaceFileOwner, writeFileAtomic } from "./file-helpers";
import type { ToolDefinition } from "./tool";

export interface WriteFileArguments {
  path: string;
  content: string;
}

/**
 * `write_file`: creates or replaces a file, creating its parent directories. The write is atomic
 * (a temporary file renamed over the target); a symlink inside the workspace is written through
 * to its target, and one leading outside is refused by Workspace.resolve.
 */
export function createWriteFileTool(): ToolDefinition<WriteFileArguments> {
  return {
    name: "write_file",
    description: "Creates a file, or replaces its whole content, creating parent directories as needed. To change part of a file, use edit_file.",
    parameters: {
      type: "object",
      properties: {
        path: { type: "string", minLength: 1, description: "File path relative to the workspace root." },
        content: { type: "string", description: "The complete new content of the file." },
      },
      required: ["path", "content"],
      additionalProperties: false,
    },
    readOnly: false,

    async execute(args, context) {
      const hostPath = await context.workspace.resolve(args.path, "path");
      const shown = JSON.stringify(displayPath(context.workspace, hostPath));
      if (hostPath === context.workspace.rootPath) return failure(`path: ${shown} is the workspace root, not a file`);
      const owner = await workspaceFileOwner(context.workspace);
      let directory;
      try {
        // Opened (and created) through directory handles, never by name: see workspace/safe-open.
        directory = await openDirectoryInside(context.workspace, dirname(hostPath), "path", { create: { owner } });
      } catch (error) {
        if (errorCode(error) === "EEXIST" || errorCode(error) === "ENOTDIR") return failure(`path: a parent of ${shown} is a file, not a directory`);
        throw error;
      }
      let mode: number | undefined;
      try {
        const name = basename(hostPath);
        const existing = await lstat(pathThrough(directory, name)).catch((error: unknown) => {
          if (errorCode(error) === "ENOENT") return undefined;
          throw error;
        });
        if (existing?.isDirectory()) return failure(`path: ${shown} is a directory`);
        // A replaced file keeps its mode (less setuid/setgid: this process is root, and a command may have set
        // them on a file of its own to get content of the caller's choosing run with them); anything else at
        // the name (a symlink swapped in) is replaced, never followed.
        mode = existing?.isFile() ? existing.mode & 0o1777 : undefined;
        await writeFileAtomic(directory, name, args.content, { signal: context.signal, owner, ...(mode === undefined ? {} : { mode }) });
      } finally {
        await directory.close();
      }
      const bytes = Buffer.byteLength(args.content);
      return {
        success: true,
        output: `${mode === undefined ? "Created" : "Replaced"} ${shown} (${bytes} bytes)`,
        result: { path: args.path, bytes, created: mode === undefined },
        truncated: false,
      };
    },
  };
}
