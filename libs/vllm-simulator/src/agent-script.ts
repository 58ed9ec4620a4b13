import { readToolCalls, skipWhitespace, startsWord, type ToolCallInstruction } from "./tool-calls";

/**
 * One turn of a scripted agent: call tools (several in parallel), or answer in plain text.
 * `text` undefined means a bare `answer`: answer from the tool results.
 */
export type AgentStep = { kind: "call"; calls: ToolCallInstruction[] } | { kind: "answer"; text: string | undefined };

/** Characters of each tool result quoted in an answer from the results: enough to recognise a file. */
export const quotedResultLength = 200;

/**
 * Reads a script of agent steps separated by ` then `: `call NAME {json}` (parallel calls joined by
 * ` and ` or line breaks), `answer` or `answer TEXT`, e.g.
 * `call read_file {"path":"a.txt"} then call search_code {"query":"x"} then answer`.
 * TEXT runs up to the next ` then `; a `then` inside a call's JSON does not split it. Returns
 * undefined when the text is anything else, so that the simulator echoes it as before.
 */
export function parseAgentScript(text: string): AgentStep[] | undefined {
  const steps: AgentStep[] = [];
  let index = skipWhitespace(text, 0).index;
  for (;;) {
    let end: number;
    if (text.startsWith("call", index)) {
      const read = readToolCalls(text, index);
      if (read === undefined) return undefined;
      steps.push({ kind: "call", calls: read.calls });
      end = read.end;
    } else if (text.startsWith("answer", index) && (index + 6 === text.length || /\s/.test(text[index + 6] as string))) {
      const separator = /\s+then\s+/g;
      separator.lastIndex = index + 6;
      // A bare `answer` directly followed by ` then ` must not take `then …` as its text.
      const next = separator.exec(text);
      end = next === null ? text.length : next.index;
      const answer = text.slice(index + 6, end).trim();
      steps.push({ kind: "answer", text: answer === "" ? undefined : answer });
    } else {
      return undefined;
    }
    const separator = skipWhitespace(text, end);
    if (separator.index === text.length) return steps;
    if (!startsWord(text, separator.index, end, "then")) return undefined;
    index = skipWhitespace(text, separator.index + 4).index;
  }
}

/** What the simulator needs of a message to play a script. */
export interface ScriptMessage {
  role?: unknown;
  name?: unknown;
  tool_call_id?: unknown;
  tool_calls?: unknown;
}

/** The calls of an assistant message, or [] when it made none. */
function toolCallsOf(message: ScriptMessage): unknown[] {
  return message.role === "assistant" && Array.isArray(message.tool_calls) ? message.tool_calls : [];
}

/**
 * Which step the script is at: the agent loop sends back one assistant message with tool calls per
 * step played, so counting them after the instruction says how far it got without any state here.
 */
export function scriptStepIndex(messagesAfterInstruction: readonly ScriptMessage[]): number {
  return messagesAfterInstruction.filter((message) => toolCallsOf(message).length > 0).length;
}

/**
 * The answer a model gives from the tool results it was sent: `Based on NAME: CONTENT` for each
 * tool message after the instruction, CONTENT cut to its first characters. Deterministic, so that a
 * test can assert that the answer holds what a tool read.
 */
export function answerFromToolResults(messagesAfterInstruction: readonly ScriptMessage[], textOf: (message: ScriptMessage) => string): string {
  // Tool messages need not carry `name` (OpenAI's schema has none); the call they answer does.
  const callNames = new Map<string, string>();
  for (const message of messagesAfterInstruction) {
    for (const call of toolCallsOf(message)) {
      const { id, function: fn } = call as { id?: unknown; function?: { name?: unknown } };
      if (typeof id === "string" && typeof fn?.name === "string") callNames.set(id, fn.name);
    }
  }
  const parts = messagesAfterInstruction
    .filter((message) => message.role === "tool")
    .map((message) => {
      const name =
        typeof message.name === "string" && message.name !== ""
          ? message.name
          : (callNames.get(typeof message.tool_call_id === "string" ? message.tool_call_id : "") ?? "a tool");
      // By code points, so that a cut never splits a surrogate pair into invalid UTF-16.
      const content = Array.from(textOf(message)).slice(0, quotedResultLength).join("");
      return `Based on ${name}: ${content}`;
    });
  return parts.length > 0 ? parts.join("\n") : "I have no tool results to answer from.";
}
