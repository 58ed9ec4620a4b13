/** A workspace directory `$WORKSPACE_ROOT/<workspace_id>` and the only way tools turn paths into host paths. */
export interface Workspace {
  readonly id: string;
  /** Absolute, symlink-free host path of the workspace directory. */
  readonly rootPath: string;
  /**
   * Resolves a path argument (relative to the workspace root; "" or "." is the root) to an absolute
   * host path inside the workspace. Refuses, with a ToolArgumentError naming `argumentName`,
   * absolute paths, `..` that climbs out, and symlinks (anywhere along the path) that lead outside.
   * The path need not exist (for writes); its existing part is checked with realpath.
   */
  resolve(path: string, argumentName: string): Promise<string>;
}
