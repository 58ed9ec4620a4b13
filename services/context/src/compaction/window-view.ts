import type { ChatMessage } from "@vlinders/proto";
import type { StoredMessage, StoredSummary } from "../store/conversation-store";
import { estimateMessageTokens, type ModelFamily } from "../tokens/token-estimator";

/** How the window is cut out of a conversation's messages; what compaction changes and stores. */
export interface WindowPlan {
  /** Tool messages whose content the window replaces with a mask (stage 1). */
  maskedSeqs: ReadonlySet<number>;
  /** Stands for every non-system message up to its `throughSeq` (stage 2). */
  summary: StoredSummary | undefined;
  /** Non-system messages up to this seq are left out (stage 3). */
  droppedThroughSeq: number;
}

export interface RenderedWindow {
  messages: ChatMessage[];
  tokens: number;
}

/** What the window shows instead of a masked tool output: enough for the model to know what it had and how to get it back. */
export function maskText(toolName: string, tokens: number): string {
  return `[tool output of ${toolName} masked: ${tokens} tokens; ask again if needed]`;
}

/** The summary as the message that stands for the turns it replaces. */
export function summaryMessage(summary: Pick<StoredSummary, "text" | "messageCount">): ChatMessage {
  return {
    role: "system",
    content: `Summary of the ${summary.messageCount} earlier messages of this conversation:\n${summary.text}`,
    toolCalls: [],
    toolCallId: "",
    name: "",
  };
}

/** Non-system messages up to this seq are not shown as themselves. */
export function cutoffOf(plan: WindowPlan): number {
  return Math.max(plan.summary?.throughSeq ?? 0, plan.droppedThroughSeq);
}

/** The name of the tool a tool message answers: its own name, else the name in the assistant's call it answers. */
export function toolNameOf(message: StoredMessage, messages: readonly StoredMessage[]): string {
  if (message.name !== "") return message.name;
  for (const candidate of messages) {
    const call = candidate.toolCalls.find((toolCall) => toolCall.id === message.toolCallId);
    if (call) return call.name;
  }
  return "tool";
}

/**
 * The window: the system messages that precede the cut-off, the summary (a system message, so that
 * no model takes it for the user speaking), then every message after the cut-off, masked ones as
 * their mask. A masked message keeps its tool_call_id, so the assistant's call still has its answer.
 * Tokens are the stored count of each message shown whole, plus the count of each mask and of the summary.
 */
export function renderWindow(messages: readonly StoredMessage[], plan: WindowPlan, family: ModelFamily): RenderedWindow {
  const cutoff = cutoffOf(plan);
  const out: ChatMessage[] = [];
  let tokens = 0;
  const show = (message: StoredMessage): void => {
    const chat: ChatMessage = {
      role: message.role,
      content: message.content,
      toolCalls: message.toolCalls,
      toolCallId: message.toolCallId,
      name: message.name,
    };
    if (plan.maskedSeqs.has(message.seq)) {
      chat.content = maskText(toolNameOf(message, messages), message.tokens);
      tokens += estimateMessageTokens(family, chat);
    } else {
      tokens += message.tokens;
    }
    out.push(chat);
  };
  for (const message of messages) if (message.seq <= cutoff && message.role === "system") show(message);
  if (plan.summary) {
    out.push(summaryMessage(plan.summary));
    tokens += plan.summary.tokens;
  }
  for (const message of messages) if (message.seq > cutoff) show(message);
  return { messages: out, tokens };
}

/**
 * The non-system messages after the cut-off, in groups that must stay together: an assistant
 * message with the tool results that answer it (a result without its call, or a call without its
 * result, is refused by OpenAI-style APIs). Every other message is a group of its own.
 */
export function turnGroups(messages: readonly StoredMessage[], cutoff: number): StoredMessage[][] {
  const groups: StoredMessage[][] = [];
  for (const message of messages) {
    if (message.seq <= cutoff || message.role === "system") continue;
    const current = groups.at(-1);
    if (message.role === "tool" && current !== undefined) current.push(message);
    else groups.push([message]);
  }
  return groups;
}
