import type { Compaction } from "@vlinders/proto";
import type { Logger } from "@vlinders/service-runtime";
import type { Conversation, StoredMessage, StoredSummary } from "../store/conversation-store";
import { estimateMessageTokens, estimateTextTokens, type ModelFamily } from "../tokens/token-estimator";
import { cutoffOf, maskText, renderWindow, summaryMessage, toolNameOf, turnGroups, type RenderedWindow, type WindowPlan } from "./window-view";

/** The stages, in the order they run; each runs only while the window is still over the threshold. */
export const compactionStages = ["mask_tool_output", "summarize", "drop_oldest"] as const;
export type CompactionStage = (typeof compactionStages)[number];

export interface CompactionSettings {
  /** Share of the budget past which the window is compacted, and under which compaction stops (0.75). */
  threshold: number;
  /** Stage 1 keeps this many of the most recent tool outputs whole. */
  keepToolOutputs: number;
  /** Stage 2 keeps this many of the most recent non-system messages out of the summary (more to keep a tool call with its results). */
  keepLastMessages: number;
  /** Longest summary asked for; also capped at a fifth of the budget. */
  summaryMaxTokens: number;
}

/** Writes a summary of a transcript in at most about `maxTokens` tokens. Rejects when it cannot. */
export type Summarize = (request: { transcript: string; maxTokens: number }, signal: AbortSignal) => Promise<string>;

export interface CompactionResult {
  window: RenderedWindow;
  /** The stages that ran, in order. */
  compactions: Compaction[];
  /** What to store, or undefined when the plan did not change. */
  change: { maskSeqs: number[]; summary: StoredSummary | undefined; droppedThroughSeq: number } | undefined;
}

/**
 * Measures the conversation's window and, when it is over `threshold` of `budget`, compacts it in
 * stages, measuring again after each: (1) mask old tool outputs, (2) replace the oldest turns by a
 * summary from a small model, (3) drop the oldest turns until it fits, keeping the summary. The
 * messages themselves are never changed: the result is a new plan for viewing them.
 *
 * A summarization that fails (broker unreachable, deadline, an empty answer) is logged and stage 3
 * does the work instead; only the call's own abort is passed on.
 */
export async function compactConversation(input: {
  conversation: Conversation;
  family: ModelFamily;
  budget: number;
  settings: CompactionSettings;
  summarize: Summarize;
  logger: Logger;
  signal: AbortSignal;
}): Promise<CompactionResult> {
  const { conversation, family, budget, settings, logger } = input;
  const { messages } = conversation;
  const limit = Math.floor(budget * settings.threshold);
  const masked = new Set(messages.filter((message) => message.masked).map((message) => message.seq));
  let plan: WindowPlan = { maskedSeqs: masked, summary: conversation.summary, droppedThroughSeq: conversation.droppedThroughSeq };
  let window = renderWindow(messages, plan, family);
  const compactions: Compaction[] = [];
  const newMasks: number[] = [];
  const record = (stage: CompactionStage, next: WindowPlan): void => {
    const tokensBefore = window.tokens;
    plan = next;
    window = renderWindow(messages, plan, family);
    compactions.push({ stage, tokensBefore, tokensAfter: window.tokens });
  };
  if (window.tokens <= limit) return { window, compactions, change: undefined };

  // Stage 1: every tool output after the cut-off but the most recent few becomes a short mask.
  const cutoff = cutoffOf(plan);
  const toolMessages = messages.filter((message) => message.seq > cutoff && message.role === "tool");
  const older = toolMessages.slice(0, Math.max(0, toolMessages.length - settings.keepToolOutputs));
  for (const message of older) {
    if (masked.has(message.seq)) continue;
    const mask = maskText(toolNameOf(message, messages), message.tokens);
    // A mask longer than the output it replaces would only cost tokens.
    if (estimateMessageTokens(family, { ...message, content: mask }) >= message.tokens) continue;
    newMasks.push(message.seq);
  }
  if (newMasks.length > 0) record("mask_tool_output", { ...plan, maskedSeqs: new Set([...masked, ...newMasks]) });

  // Stage 2: the oldest turns, all but the last few messages, become one summary.
  if (window.tokens > limit) {
    const region = summaryRegion(messages, cutoffOf(plan), settings.keepLastMessages);
    if (region.length > 0) {
      const summary = await summarizeRegion(input, plan, region, budget).catch((error: unknown) => {
        if (input.signal.aborted) throw error;
        logger.warn(
          { err: error, conversation_id: conversation.id, messages: region.length },
          "summarization failed; compacting by dropping the oldest messages instead",
        );
        return undefined;
      });
      if (summary) record("summarize", { ...plan, summary });
    }
  }

  // Stage 3: drop the oldest turns, whole, until under the threshold; the last turn always stays.
  if (window.tokens > limit) {
    const groups = turnGroups(messages, cutoffOf(plan));
    let droppedThroughSeq = plan.droppedThroughSeq;
    let dropped = { ...plan };
    let tokens = window.tokens;
    for (const group of groups.slice(0, -1)) {
      if (tokens <= limit) break;
      droppedThroughSeq = group.at(-1)?.seq ?? droppedThroughSeq;
      dropped = { ...dropped, droppedThroughSeq };
      tokens = renderWindow(messages, dropped, family).tokens;
    }
    // Only the system messages, the summary and the last turn are left: if that is still more than
    // the whole budget, the summary goes too (the messages it stands for stay out of the window).
    if (tokens > budget && dropped.summary !== undefined) {
      logger.warn({ conversation_id: conversation.id, tokens, budget }, "the window is over its budget even without old turns; leaving the summary out");
      dropped = { ...dropped, summary: undefined, droppedThroughSeq: Math.max(droppedThroughSeq, dropped.summary.throughSeq) };
    }
    if (dropped.droppedThroughSeq !== plan.droppedThroughSeq || dropped.summary !== plan.summary) record("drop_oldest", dropped);
  }

  if (compactions.length === 0) return { window, compactions, change: undefined };
  return { window, compactions, change: { maskSeqs: newMasks, summary: plan.summary, droppedThroughSeq: plan.droppedThroughSeq } };
}

/** The non-system messages after the cut-off but the last `keep`, moved back so that a kept tool result keeps its call. */
function summaryRegion(messages: readonly StoredMessage[], cutoff: number, keep: number): StoredMessage[] {
  const candidates = messages.filter((message) => message.seq > cutoff && message.role !== "system");
  let boundary = candidates.length - keep;
  while (boundary > 0 && candidates[boundary]?.role === "tool") boundary -= 1;
  return boundary > 0 ? candidates.slice(0, boundary) : [];
}

async function summarizeRegion(
  input: { conversation: Conversation; family: ModelFamily; settings: CompactionSettings; summarize: Summarize; signal: AbortSignal },
  plan: WindowPlan,
  region: StoredMessage[],
  budget: number,
): Promise<StoredSummary | undefined> {
  const { conversation, family } = input;
  const maxTokens = Math.max(16, Math.min(input.settings.summaryMaxTokens, Math.floor(budget / 5)));
  const rendered = renderWindow(conversation.messages, { ...plan, summary: undefined, droppedThroughSeq: 0 }, family).messages;
  const bySeq = new Map(region.map((message) => [message.seq, message]));
  // The region as the window shows it (masks included): the summary is of what the model saw.
  const shown = conversation.messages
    .map((message, index) => ({ message, chat: rendered[index] }))
    .filter(({ message }) => bySeq.has(message.seq));
  const lines = shown.map(({ message, chat }) => transcriptLine(message, chat?.content ?? message.content, conversation.messages));
  const previous = plan.summary ? `Summary of the conversation before these messages:\n${plan.summary.text}\n\n` : "";
  const text = (await input.summarize({ transcript: `${previous}${lines.join("\n")}`, maxTokens }, input.signal)).trim();
  if (text === "") throw new Error("the summary model answered with an empty summary");
  const capped = capToTokens(family, text, maxTokens);
  const messageCount = (plan.summary?.messageCount ?? 0) + region.length;
  const lastSeq = region.at(-1)?.seq ?? 0;
  return { text: capped, tokens: estimateMessageTokens(family, summaryMessage({ text: capped, messageCount })), throughSeq: lastSeq, messageCount };
}

function transcriptLine(message: StoredMessage, content: string, messages: readonly StoredMessage[]): string {
  const calls = message.toolCalls.map((call) => ` [called ${call.name}(${call.argumentsJson})]`).join("");
  if (message.role === "tool") return `tool ${toolNameOf(message, messages)}: ${content}`;
  return `${message.role}: ${content}${calls}`;
}

/** The text cut to at most `maxTokens` by this family's estimate: a model may write more than it was asked for. */
function capToTokens(family: ModelFamily, text: string, maxTokens: number): string {
  if (estimateTextTokens(family, text) <= maxTokens) return text;
  let length = Math.floor(maxTokens * family.charsPerToken);
  let cut = text.slice(0, length);
  while (length > 0 && estimateTextTokens(family, `${cut}…`) > maxTokens) {
    length = Math.floor(length * 0.9);
    cut = text.slice(0, length);
  }
  return `${cut}…`;
}
