import { randomBytes } from "node:crypto";
import type { ToolCallStyle } from "./options";

/** A tool call the simulated model was told to make. */
export interface ToolCallInstruction {
  name: string;
  /** The JSON object as written in the instruction, verbatim; `{}` when none was given. */
  argumentsJson: string;
}

/** A tool call as the simulator emits it. */
export interface EmittedToolCall extends ToolCallInstruction {
  id: string;
}

const namePattern = /[A-Za-z_][\w.-]*/y;

export function skipWhitespace(text: string, from: number): { index: number; newline: boolean } {
  let index = from;
  let newline = false;
  while (index < text.length && /\s/.test(text[index] as string)) {
    if (text[index] === "\n") newline = true;
    index += 1;
  }
  return { index, newline };
}

/** The end (exclusive) of the JSON object starting at `start`, or -1 if its braces never close. */
function endOfObject(text: string, start: number): number {
  let depth = 0;
  let inString = false;
  for (let index = start; index < text.length; index += 1) {
    const char = text[index];
    if (inString) {
      if (char === "\\") index += 1;
      else if (char === '"') inString = false;
    } else if (char === '"') inString = true;
    else if (char === "{") depth += 1;
    else if (char === "}" && --depth === 0) return index + 1;
  }
  return -1;
}

/**
 * Reads the simulator's tool-call grammar: `call NAME {json}`, the object optional, repeated and
 * separated by ` and ` or line breaks (`call a {"x":1} and call b {}`). Returns undefined when the
 * text is anything else, in which case the simulator echoes it. The JSON is not validated, so that
 * tests can make the model write broken arguments.
 */
export function parseToolCallInstructions(text: string): ToolCallInstruction[] | undefined {
  const read = readToolCalls(text, skipWhitespace(text, 0).index);
  return read !== undefined && skipWhitespace(text, read.end).index === text.length ? read.calls : undefined;
}

/**
 * Reads the calls of one step, from `start` (which must be at `call`) up to the end of the text or
 * up to the whitespace before a ` then ` that starts the next step of a script; `end` is where the
 * last call ends. Undefined when the calls are malformed.
 */
export function readToolCalls(text: string, start: number): { calls: ToolCallInstruction[]; end: number } | undefined {
  const calls: ToolCallInstruction[] = [];
  let index = start;
  for (;;) {
    if (!text.startsWith("call", index)) return undefined;
    const afterKeyword = skipWhitespace(text, index + 4);
    if (afterKeyword.index === index + 4) return undefined;
    namePattern.lastIndex = afterKeyword.index;
    const name = namePattern.exec(text)?.[0];
    if (name === undefined) return undefined;
    index = afterKeyword.index + name.length;
    let argumentsJson = "{}";
    const beforeArguments = skipWhitespace(text, index);
    if (text[beforeArguments.index] === "{") {
      const end = endOfObject(text, beforeArguments.index);
      if (end === -1) return undefined;
      argumentsJson = text.slice(beforeArguments.index, end);
      index = end;
    }
    calls.push({ name, argumentsJson });
    const separator = skipWhitespace(text, index);
    if (separator.index === text.length || startsWord(text, separator.index, index, "then")) return { calls, end: index };
    if (startsWord(text, separator.index, index, "and")) {
      index = skipWhitespace(text, separator.index + 3).index;
    } else if (separator.newline) {
      index = separator.index;
    } else {
      return undefined;
    }
  }
}

/**
 * Whether `word` stands at `at` as a separator: whitespace before it (it starts after `from`) and
 * whitespace after it, so that `andy` or `thenceforth` are not separators.
 */
export function startsWord(text: string, at: number, from: number, word: string): boolean {
  return at > from && text.startsWith(word, at) && skipWhitespace(text, at + word.length).index > at + word.length;
}

/** vLLM's tool-call ids: `chatcmpl-tool-` and 32 hex digits. */
export function newToolCallId(): string {
  return `chatcmpl-tool-${randomBytes(16).toString("hex")}`;
}

/** Characters of arguments per streamed fragment, about what a tokenizer gives for JSON. */
const fragmentLength = 8;

/**
 * The `delta` objects (as JSON) that stream the calls: for each call a first chunk with its id,
 * type, name and empty arguments, then argument fragments. `current` vLLM sends only the index and
 * the arguments in a fragment; `legacy` vLLM repeats `"id":null,"type":"function"` and `"name":null`.
 * Calls follow one another, or take turns when `interleave` is set.
 */
export function toolCallDeltas(calls: readonly EmittedToolCall[], style: ToolCallStyle, interleave: boolean): string[] {
  const perCall = calls.map((call, index) => {
    const deltas = [JSON.stringify({ tool_calls: [{ id: call.id, type: "function", index, function: { name: call.name, arguments: "" } }] })];
    for (let offset = 0; offset < call.argumentsJson.length; offset += fragmentLength) {
      const fragment = call.argumentsJson.slice(offset, offset + fragmentLength);
      const toolCall =
        style === "legacy"
          ? { index, id: null, type: "function", function: { name: null, arguments: fragment } }
          : { index, function: { arguments: fragment } };
      deltas.push(JSON.stringify({ tool_calls: [toolCall] }));
    }
    return deltas;
  });
  if (!interleave) return perCall.flat();
  const deltas: string[] = [];
  const longest = Math.max(0, ...perCall.map((list) => list.length));
  for (let round = 0; round < longest; round += 1) {
    for (const list of perCall) {
      const delta = list[round];
      if (delta !== undefined) deltas.push(delta);
    }
  }
  return deltas;
}
