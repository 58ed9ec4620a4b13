import type { ChatMessage } from "@vlinders/proto";

/**
 * How a model family turns text into tokens, estimated without its tokenizer. Loading the real
 * tokenizers (hundreds of megabytes of vocabularies, a native dependency each) for a count that
 * only decides when to compact is not worth it: the threshold leaves a quarter of the budget as
 * margin, and the estimates below lean towards counting too many tokens, which compacts a little
 * early rather than overflowing a worker.
 */
export interface ModelFamily {
  name: string;
  /**
   * ASCII characters per token on English prose and source code. Byte-pair vocabularies of about
   * 100k entries (cl100k, Llama 3, Qwen 2) average 4 to 4.5 on prose and 3.5 to 4 on code; the
   * 32k-entry SentencePiece vocabularies (Llama 2, Mistral v1-v2) about 3.3. The figures here sit
   * at the code end of each range.
   */
  charsPerToken: number;
  /**
   * Tokens of the chat template around each message: role headers and end markers, e.g. Llama 3's
   * `<|start_header_id|>user<|end_header_id|>\n\n … <|eot_id|>` (5), ChatML's
   * `<|im_start|>user\n … <|im_end|>\n` (5, Qwen), OpenAI's documented 3 plus 1 for a name.
   */
  messageOverheadTokens: number;
  /** The context size of the family's current models, the budget of a conversation that names none; undefined: unknown. */
  contextTokens: number | undefined;
}

/** Tokens a tool call costs besides its name and arguments: the call's id and the JSON wrapper the template adds. */
const toolCallOverheadTokens = 8;

/**
 * Families by model name prefix (lower case, matched against the name and against what follows its
 * last "/", so that "Qwen/Qwen2.5-Coder-32B-Instruct" is "qwen"). Longer prefixes win.
 */
const families: ReadonlyArray<{ prefix: string; family: ModelFamily }> = [
  { prefix: "llama-2", family: { name: "llama-2", charsPerToken: 3.3, messageOverheadTokens: 6, contextTokens: 4_096 } },
  { prefix: "llama", family: { name: "llama", charsPerToken: 3.8, messageOverheadTokens: 5, contextTokens: 131_072 } },
  { prefix: "qwen", family: { name: "qwen", charsPerToken: 3.7, messageOverheadTokens: 5, contextTokens: 32_768 } },
  { prefix: "mistral", family: { name: "mistral", charsPerToken: 3.4, messageOverheadTokens: 4, contextTokens: 32_768 } },
  { prefix: "mixtral", family: { name: "mistral", charsPerToken: 3.4, messageOverheadTokens: 4, contextTokens: 32_768 } },
  { prefix: "codestral", family: { name: "mistral", charsPerToken: 3.4, messageOverheadTokens: 4, contextTokens: 32_768 } },
  { prefix: "deepseek", family: { name: "deepseek", charsPerToken: 3.6, messageOverheadTokens: 5, contextTokens: 65_536 } },
  { prefix: "gemma", family: { name: "gemma", charsPerToken: 4.0, messageOverheadTokens: 5, contextTokens: 8_192 } },
  { prefix: "gpt", family: { name: "gpt", charsPerToken: 4.0, messageOverheadTokens: 4, contextTokens: 128_000 } },
  { prefix: "o1", family: { name: "gpt", charsPerToken: 4.0, messageOverheadTokens: 4, contextTokens: 128_000 } },
];

/**
 * Models of no known family (the simulator, a fine-tune with a custom name): the most cautious
 * figures of the table, and the configured default budget.
 */
export const defaultModelFamily: ModelFamily = { name: "default", charsPerToken: 3.3, messageOverheadTokens: 6, contextTokens: undefined };

const byLongestPrefix = [...families].sort((a, b) => b.prefix.length - a.prefix.length);

/** The family whose prefix the model name (or its part after the last "/") starts with; the default family otherwise. */
export function modelFamilyOf(model: string): ModelFamily {
  const name = model.toLowerCase();
  const base = name.slice(name.lastIndexOf("/") + 1);
  const found = byLongestPrefix.find(({ prefix }) => base.startsWith(prefix)) ?? byLongestPrefix.find(({ prefix }) => name.startsWith(prefix));
  return found?.family ?? defaultModelFamily;
}

/**
 * Tokens of a text. ASCII is counted at the family's characters per token; every other code point
 * as a whole token, because CJK ideographs take one token or more each in these vocabularies and
 * accented letters often split a word's merges (counting them whole leans high, as intended).
 */
export function estimateTextTokens(family: ModelFamily, text: string): number {
  let ascii = 0;
  let other = 0;
  for (const char of text) {
    if (char.charCodeAt(0) < 128) ascii += 1;
    else other += 1;
  }
  return Math.ceil(ascii / family.charsPerToken) + other;
}

/** Tokens one message takes in a prompt: its text, its tool calls, its name and tool call id, and the template around it. */
export function estimateMessageTokens(family: ModelFamily, message: Pick<ChatMessage, "content" | "toolCalls" | "toolCallId" | "name">): number {
  let tokens = family.messageOverheadTokens + estimateTextTokens(family, message.content);
  if (message.name !== "") tokens += 1 + estimateTextTokens(family, message.name);
  if (message.toolCallId !== "") tokens += estimateTextTokens(family, message.toolCallId);
  for (const call of message.toolCalls) {
    tokens += toolCallOverheadTokens + estimateTextTokens(family, call.name) + estimateTextTokens(family, call.argumentsJson);
  }
  return tokens;
}

/** The budget of a conversation: the one it was given, else its model family's context size, else `defaultBudget`. */
export function effectiveBudget(model: string, budgetTokens: number, defaultBudget: number): number {
  if (budgetTokens > 0) return budgetTokens;
  return modelFamilyOf(model).contextTokens ?? defaultBudget;
}
