import type { ChatMessage, Compaction, ContextServiceClient } from "@vlinders/proto";
import type { DeadlineOptions } from "@vlinders/service-runtime";

/**
 * One run's conversation: what the loop has said and heard, and what to send to the model next.
 * The loop adds messages as they happen; `window` hands them over and answers the messages for the
 * next model call.
 */
export interface RunConversation {
  /** Adds messages (the assistant's turn, tool results, a note); they reach the context service at the next window or flush. */
  add(...messages: ChatMessage[]): void;
  /** The messages to send to the model now. Rejects only when `signal` is aborted. */
  window(signal: AbortSignal): Promise<readonly ChatMessage[]>;
  /** Hands over messages added since the last window (the run's last turn); never rejects. */
  flush(signal: AbortSignal): Promise<void>;
}

/** A conversation the run keeps itself, whole: what the loop did before the context service. */
export function createLocalConversation(initial: readonly ChatMessage[]): RunConversation {
  const messages = [...initial];
  return {
    add: (...added) => void messages.push(...added),
    window: () => Promise.resolve(messages),
    flush: () => Promise.resolve(),
  };
}

export interface ContextConversationOptions {
  /** An internal client (createInternalClient): it takes a deadline per call. */
  readonly client: ContextServiceClient<DeadlineOptions>;
  /** The run id. */
  readonly conversationId: string;
  /** The model the window is for (its family decides how tokens are counted); empty: the broker's default. */
  readonly model: string;
  readonly budgetTokens: number;
  /** Deadline of each call to the context service. */
  readonly deadlineMs: number;
  /** Told of every compaction a call reports, in order. */
  readonly onCompaction: (compaction: Compaction) => Promise<void>;
  /** Told once, when the context service fails and the run goes on with its own messages. */
  readonly onFallback: (error: unknown) => void;
  /**
   * The run hands its conversation to the service only once it may need compacting: past this
   * share of the budget by a rough, generous count (default 0.5; 0 hands it over from the start).
   */
  readonly engageAtShare?: number;
}

/** Roughly three characters a token, plus a few for each message's framing: more than any family counts, so the service is engaged early rather than late. */
function roughTokens(messages: readonly ChatMessage[]): number {
  let characters = 0;
  for (const message of messages) {
    characters += message.content.length + 12;
    for (const call of message.toolCalls) characters += call.name.length + call.argumentsJson.length;
  }
  return Math.ceil(characters / 3);
}

/**
 * A conversation kept in the context service (conversation_id = run id), which compacts it past
 * 75 % of the budget: the model is sent the window the service answers. The run also keeps every
 * message itself, so that when a call to the service fails (unreachable, a deadline, a refusal) the
 * run goes on with its whole conversation, as without the service, instead of failing. It does not
 * go back to the service after that: the service's copy would lack the messages that failed.
 *
 * Until the conversation nears the point where compaction starts (engageAtShare of the budget),
 * the service is not called at all: there is nothing to compact yet, and the run's own record
 * (agent_executions, tool_calls) already holds what happened. Most short runs never call it, which
 * keeps a hundred runs at once from queueing on its database.
 */
export function createContextConversation(initial: readonly ChatMessage[], options: ContextConversationOptions): RunConversation {
  const own = [...initial];
  let pending = [...initial];
  let window: readonly ChatMessage[] | undefined;
  let failed = false;
  const engageAtTokens = options.budgetTokens * (options.engageAtShare ?? 0.5);
  let engaged = engageAtTokens <= 0;

  async function append(signal: AbortSignal): Promise<void> {
    if (!engaged) engaged = roughTokens(own) >= engageAtTokens;
    if (failed || !engaged || pending.length === 0) return;
    const messages = pending;
    pending = [];
    let compactions: readonly Compaction[];
    try {
      const answer = await options.client.appendMessages(
        { conversationId: options.conversationId, messages, model: options.model, budgetTokens: options.budgetTokens },
        { signal, deadline: options.deadlineMs },
      );
      window = answer.messages;
      compactions = answer.compactions;
    } catch (error: unknown) {
      // The run's own cancel or deadline is the run's business, not a failure of the service.
      if (signal.aborted) throw error;
      failed = true;
      window = undefined;
      options.onFallback(error);
      return;
    }
    for (const compaction of compactions) await options.onCompaction(compaction);
  }

  return {
    add(...added) {
      own.push(...added);
      if (!failed) pending.push(...added);
    },
    async window(signal) {
      await append(signal);
      return failed || window === undefined ? own : window;
    },
    async flush(signal) {
      try {
        await append(signal);
      } catch {
        // Aborted: the run is ending anyway, and its records are elsewhere.
      }
    },
  };
}
