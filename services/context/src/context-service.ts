import { validateMessages } from "@vlinders/chat-validation";
import { ContextServiceDefinition, type ChatMessage, type ContextServiceImplementation, type ContextWindow } from "@vlinders/proto";
import type { Logger } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import type { WindowCache } from "./cache/window-cache";
import { compactConversation, type CompactionSettings, type Summarize } from "./compaction/compactor";
import type { ContextMetrics } from "./context-metrics";
import { createKeyedSerializer } from "./keyed-serializer";
import type { MemoryStore } from "./memory/memory-store";
import type { AppendContext, ConversationStore, NewMessage } from "./store/conversation-store";
import { effectiveBudget, estimateMessageTokens, modelFamilyOf } from "./tokens/token-estimator";

export { ContextServiceDefinition };

export interface ContextServiceDependencies {
  conversations: ConversationStore;
  memories: MemoryStore;
  cache: WindowCache;
  summarize: Summarize;
  compaction: CompactionSettings;
  /** CONTEXT_DEFAULT_BUDGET_TOKENS: the budget when neither the conversation nor its model family gives one. */
  defaultBudgetTokens: number;
  metrics: ContextMetrics;
  logger: Logger;
}

const maxIdLength = 256;
const maxMessagesPerAppend = 1_000;
const maxMemoryChars = 16_000;
const defaultRecallLimit = 10;
const maxRecallLimit = 100;
/** "user:<id>" or "workspace:<id>". */
const scopePattern = /^(user|workspace):[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$/;

function invalid(field: string, problem: string): ServerError {
  return new ServerError(Status.INVALID_ARGUMENT, `${field}: ${problem}`);
}

function requireConversationId(value: string): string {
  if (value === "") throw invalid("conversation_id", "is required");
  if (value.length > maxIdLength) throw invalid("conversation_id", `must be at most ${maxIdLength} characters`);
  if (/[\u0000-\u001f\u007f]/.test(value)) throw invalid("conversation_id", "must not contain control characters");
  return value;
}

function checkModel(value: string): void {
  if (value.length > maxIdLength) throw invalid("model", `must be at most ${maxIdLength} characters`);
}

function checkScope(value: string): void {
  if (value === "") throw invalid("scope", 'is required ("user:<id>" or "workspace:<id>")');
  if (!scopePattern.test(value)) {
    throw invalid("scope", `must be "user:<id>" or "workspace:<id>" with an id of letters, digits, '_', '.', '@', ':' or '-' (got ${JSON.stringify(value.slice(0, 60))})`);
  }
}

/**
 * ContextService. Conversations live in PostgreSQL, and compaction is a view of them: it stores
 * masks, a summary and a drop point beside the original messages, never in their place. A window
 * is compacted when it passes the threshold after an append or at GetContext; the compactions a
 * call ran are in its answer. GetContext is served from the window cache when the conversation has
 * not changed since, which is why compactions are empty then.
 *
 * Calls on one conversation take turns within this replica (the database orders them across
 * replicas); calls on different conversations never wait for each other.
 */
export function createContextService(deps: ContextServiceDependencies): ContextServiceImplementation {
  const { conversations, memories, cache, metrics, logger } = deps;
  const serialize = createKeyedSerializer();
  const budgetOf = (model: string, budgetTokens: number): number => effectiveBudget(model, budgetTokens, deps.defaultBudgetTokens);
  const summarize: Summarize = async (request, signal) => {
    try {
      const summary = await deps.summarize(request, signal);
      metrics.recordSummarization("ok");
      return summary;
    } catch (error: unknown) {
      if (!signal.aborted) metrics.recordSummarization("failed");
      throw error;
    }
  };

  /** Loads the conversation, compacts its window if it is over the threshold, stores the compaction and caches the window. */
  async function serveFromDatabase(conversationId: string, signal: AbortSignal): Promise<ContextWindow> {
    const conversation = await conversations.load(conversationId, signal);
    if (conversation === undefined) throw new ServerError(Status.NOT_FOUND, `conversation_id: no conversation "${conversationId}"`);
    const budget = budgetOf(conversation.model, conversation.budgetTokens);
    const result = await compactConversation({
      conversation,
      family: modelFamilyOf(conversation.model),
      budget,
      settings: deps.compaction,
      summarize,
      logger,
      signal,
    });
    metrics.recordCompactions(result.compactions);
    let revision: number | undefined = conversation.revision;
    if (result.change) {
      revision = await conversations.saveCompaction(conversationId, conversation.revision, result.change, signal);
      if (revision === undefined) {
        logger.debug({ conversation_id: conversationId }, "the conversation changed while it was compacted; the next call compacts the newer state");
      }
    }
    if (revision !== undefined) {
      await cache.put(conversationId, { revision, model: conversation.model, budgetTokens: budget, messages: result.window.messages, tokens: result.window.tokens });
    }
    metrics.recordWindowServed("database");
    return { conversationId, messages: result.window.messages, tokens: result.window.tokens, budgetTokens: budget, compactions: result.compactions };
  }

  /** The messages of an append, counted for the conversation's model; refuses a budget that cannot hold the system messages and the last message. */
  function prepareMessages(messages: readonly ChatMessage[], requestedBudget: number, context: AppendContext): NewMessage[] {
    const family = modelFamilyOf(context.model);
    const prepared = messages.map((message) => ({
      role: message.role as NewMessage["role"],
      content: message.content,
      toolCalls: message.toolCalls,
      toolCallId: message.toolCallId,
      name: message.name,
      tokens: estimateMessageTokens(family, message),
    }));
    checkBudgetHolds(
      budgetOf(context.model, context.budgetTokens),
      requestedBudget,
      context.systemTokens + prepared.filter((message) => message.role === "system").reduce((sum, message) => sum + message.tokens, 0),
      prepared.at(-1),
    );
    return prepared;
  }

  return {
    async appendMessages(request, { signal }) {
      const conversationId = requireConversationId(request.conversationId);
      checkModel(request.model);
      if (request.messages.length === 0) throw invalid("messages", "must not be empty");
      if (request.messages.length > maxMessagesPerAppend) throw invalid("messages", `at most ${maxMessagesPerAppend} per append (got ${request.messages.length})`);
      validateMessages(request.messages);
      return serialize(conversationId, signal, async () => {
        const revision = await conversations.append(
          { conversationId, model: request.model, budgetTokens: request.budgetTokens },
          (context) => prepareMessages(request.messages, request.budgetTokens, context),
          signal,
        );
        await cache.invalidate(conversationId, revision);
        return serveFromDatabase(conversationId, signal);
      });
    },

    async getContext(request, { signal }) {
      const conversationId = requireConversationId(request.conversationId);
      checkModel(request.model);
      const cached = await cache.get(conversationId, signal);
      if (
        cached !== undefined &&
        (request.model === "" || request.model === cached.model) &&
        (request.budgetTokens === 0 || request.budgetTokens === cached.budgetTokens)
      ) {
        metrics.recordCacheLookup("hit");
        metrics.recordWindowServed("cache");
        return { conversationId, messages: cached.messages, tokens: cached.tokens, budgetTokens: cached.budgetTokens, compactions: [] };
      }
      metrics.recordCacheLookup("miss");
      return serialize(conversationId, signal, async () => {
        if (request.model !== "" || request.budgetTokens !== 0) {
          const conversation = await conversations.load(conversationId, signal);
          if (conversation === undefined) throw new ServerError(Status.NOT_FOUND, `conversation_id: no conversation "${conversationId}"`);
          if (request.budgetTokens !== 0) {
            const system = conversation.messages.filter((message) => message.role === "system");
            checkBudgetHolds(
              request.budgetTokens,
              request.budgetTokens,
              system.reduce((sum, message) => sum + message.tokens, 0),
              conversation.messages.at(-1),
            );
          }
          const revision = await conversations.updateSettings({ conversationId, model: request.model, budgetTokens: request.budgetTokens }, signal);
          if (revision !== undefined && revision !== conversation.revision) await cache.invalidate(conversationId, revision);
        }
        return serveFromDatabase(conversationId, signal);
      });
    },

    async deleteConversation(request, { signal }) {
      const conversationId = requireConversationId(request.conversationId);
      return serialize(conversationId, signal, async () => {
        const { deleted, revision } = await conversations.delete(conversationId, signal);
        await cache.invalidate(conversationId, revision);
        if (deleted) logger.info({ conversation_id: conversationId }, "conversation deleted");
        return { deleted };
      });
    },

    async remember(request, { signal }) {
      checkScope(request.scope);
      const text = request.text.trim();
      if (text === "") throw invalid("text", "is required");
      if (text.length > maxMemoryChars) throw invalid("text", `must be at most ${maxMemoryChars} characters (got ${text.length})`);
      return memories.remember(request.scope, text, signal);
    },

    async recall(request, { signal }) {
      checkScope(request.scope);
      if (request.limit > maxRecallLimit) throw invalid("limit", `must be at most ${maxRecallLimit} (got ${request.limit})`);
      if (request.query.length > maxMemoryChars) throw invalid("query", `must be at most ${maxMemoryChars} characters`);
      const limit = request.limit === 0 ? defaultRecallLimit : request.limit;
      return { memories: await memories.recall(request.scope, request.query, limit, signal) };
    },
  };
}

/**
 * Refuses a budget that cannot hold even the system messages and the last message: no compaction
 * could make a window of it. The field named is budget_tokens when the caller set the budget, else
 * messages (the default budget is not the caller's doing; its messages are).
 */
function checkBudgetHolds(budget: number, requestedBudget: number, systemTokens: number, last: { role: string; tokens: number } | undefined): void {
  const needed = systemTokens + (last === undefined || last.role === "system" ? 0 : last.tokens);
  if (needed <= budget) return;
  if (requestedBudget !== 0) {
    throw invalid("budget_tokens", `${budget} tokens cannot hold the system messages and the last message, which take ${needed} tokens`);
  }
  throw invalid("messages", `the system messages and the last message take ${needed} tokens, more than the conversation's budget of ${budget} tokens`);
}
