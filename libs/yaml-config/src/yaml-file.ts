import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from "yaml";
import type { z } from "zod";

/**
 * A parsed YAML configuration file that can point at the line of a key path in its errors, so that
 * a mistake in configs/*.yaml is reported as `configs/agents.yaml:12: agents.plan.tools.0: …`.
 */
export interface YamlFile {
  readonly value: unknown;
  /** A message naming the file, the key path and its line (the key's own line when `atKey`, else its value's). */
  describe(path: ReadonlyArray<string | number>, message: string, atKey?: boolean): string;
}

/** Parses `text`; a syntax error is returned as a message naming `source` and the line. */
export function parseYamlFile(text: string, source: string): { file: YamlFile } | { error: string } {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false });
  const first = document.errors[0];
  if (first) return { error: `${source}:${lineCounter.linePos(first.pos[0]).line}: not valid YAML: ${first.message}` };
  return {
    file: {
      value: document.toJS() as unknown,
      describe(path, message, atKey = false) {
        const offset = offsetOf(document, path, atKey);
        const where = offset === undefined ? "" : `:${lineCounter.linePos(offset).line}`;
        return `${source}${where}: ${path.join(".") || "(root)"}: ${message}`;
      },
    },
  };
}

/** Validates the file against `schema`; the first problem is returned with its key path and line. */
export function validateYamlFile<Schema extends z.ZodType>(schema: Schema, file: YamlFile): { data: z.infer<Schema> } | { error: string } {
  const result = schema.safeParse(file.value ?? {});
  if (result.success) return { data: result.data };
  const issue = result.error.issues[0]!;
  const path = issue.path.filter((part): part is string | number => typeof part !== "symbol");
  // The first problem only, with its line: people fix these files one problem at a time anyway.
  const more = result.error.issues.length > 1 ? ` (and ${result.error.issues.length - 1} more problems)` : "";
  // An unknown key is reported at the key itself, which is where the typo is.
  const unknownKey = issue.code === "unrecognized_keys" ? (issue as { keys?: string[] }).keys?.[0] : undefined;
  if (unknownKey !== undefined) return { error: file.describe([...path, unknownKey], `${issue.message}${more}`, true) };
  return { error: file.describe(path, `${issue.message}${more}`) };
}

/** The offset of the deepest node along `path` that exists: a missing key is reported at its parent. */
function offsetOf(document: Document, path: ReadonlyArray<string | number>, atKey: boolean): number | undefined {
  let node: unknown = document.contents;
  let offset = rangeStart(node);
  for (const key of path) {
    if (isMap(node)) {
      const pair = node.items.find((item) => (isScalar(item.key) ? item.key.value : item.key) === key);
      if (!pair) break;
      node = pair.value;
      offset = (atKey && key === path.at(-1) ? rangeStart(pair.key) : rangeStart(node)) ?? rangeStart(pair.key) ?? offset;
    } else if (isSeq(node) && typeof key === "number") {
      node = node.items[key];
      if (node === undefined) break;
      offset = rangeStart(node) ?? offset;
    } else {
      break;
    }
  }
  return offset;
}

function rangeStart(node: unknown): number | undefined {
  return (node as { range?: [number, number, number] } | null | undefined)?.range?.[0];
}
