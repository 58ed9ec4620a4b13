import { stat } from "node:fs/promises";
import { dirname } from "node:path";
import { displayPath, errorCode, existingMode, failure, makeDirectories, workspaceFileOwner, writeFileAtomic } from "./file-helpers";
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
      try {
        if ((await stat(hostPath)).isDirectory()) return failure(`path: ${shown} is a directory`);
      } catch (error) {
        if (errorCode(error) === "ENOTDIR") return failure(`path: a parent of ${shown} is a file, not a directory`);
        if (errorCode(error) !== "ENOENT") throw error;
      }
      const owner = await workspaceFileOwner(context.workspace);
      try {
        await makeDirectories(dirname(hostPath), owner);
      } catch (error) {
        if (errorCode(error) === "EEXIST" || errorCode(error) === "ENOTDIR") return failure(`path: a parent of ${shown} is a file, not a directory`);
        throw error;
      }
      const mode = await existingMode(hostPath);
      await writeFileAtomic(hostPath, args.content, { signal: context.signal, owner, ...(mode === undefined ? {} : { mode }) });
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
