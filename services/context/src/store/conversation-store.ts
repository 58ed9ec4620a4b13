import { connectWithSignal, queryWithSignal, type SignalledClient } from "@vlinders/database";
import type { ChatRole } from "@vlinders/chat-validation";
import type { ToolCall } from "@vlinders/proto";
import type { Pool } from "pg";

/** A message as stored: the original, with its token count and whether the window masks it. */
export interface StoredMessage {
  seq: number;
  role: ChatRole;
  content: string;
  toolCalls: ToolCall[];
  toolCallId: string;
  name: string;
  tokens: number;
  masked: boolean;
}

/** Stage 2's result: one text standing for every non-system message up to `throughSeq`. */
export interface StoredSummary {
  text: string;
  tokens: number;
  throughSeq: number;
  /** Non-system messages it stands for, earlier summaries' included. */
  messageCount: number;
}

/** How the window is cut out of the messages. */
export interface CompactionState {
  summary: StoredSummary | undefined;
  /** Non-system messages up to this seq are left out of the window (stage 3); 0: none. */
  droppedThroughSeq: number;
}

export interface Conversation extends CompactionState {
  id: string;
  /** '' when no request named one. */
  model: string;
  /** 0 when no request set one: the model family's context size, else the default, applies. */
  budgetTokens: number;
  /** Grows with every change; the window cache orders its entries by it. */
  revision: number;
  /** Every message ever appended, oldest first. */
  messages: StoredMessage[];
}

/** What an append inserts, counted by the caller for the conversation's model. */
export interface NewMessage {
  role: ChatRole;
  content: string;
  toolCalls: ToolCall[];
  toolCallId: string;
  name: string;
  tokens: number;
}

/** The conversation's settings as an append sees them, locked, before its messages go in. */
export interface AppendContext {
  model: string;
  budgetTokens: number;
  /** Tokens of the system messages already stored. */
  systemTokens: number;
}

export interface ConversationStore {
  /**
   * Appends messages in one transaction that holds the conversation's row lock, so that appends to
   * one conversation, from any replica, take turns and get consecutive seqs in commit order.
   * `prepare` runs under the lock with the settings the request leads to and returns the messages
   * to insert (counted); what it throws rolls everything back. A changed effective budget starts
   * the compaction state over. Resolves with the new revision.
   */
  append(
    request: { conversationId: string; model: string; budgetTokens: number },
    prepare: (context: AppendContext) => NewMessage[],
    signal: AbortSignal,
  ): Promise<number>;
  /** The conversation with all its messages, read in one snapshot; undefined when there is none. */
  load(conversationId: string, signal: AbortSignal): Promise<Conversation | undefined>;
  /**
   * Sets the model or budget a request named (empty / 0 keep the stored one). A changed effective
   * budget starts the compaction state over. Resolves with the revision, new or unchanged, or
   * undefined when the conversation does not exist.
   */
  updateSettings(request: { conversationId: string; model: string; budgetTokens: number }, signal: AbortSignal): Promise<number | undefined>;
  /**
   * Records a compaction computed from revision `basedOn`: masks added, the summary and the drop
   * point. Resolves with the new revision, or undefined when the conversation changed since (the
   * caller's window is still right for its call; the next one compacts from the newer state).
   */
  saveCompaction(
    conversationId: string,
    basedOn: number,
    change: CompactionState & { maskSeqs: readonly number[] },
    signal: AbortSignal,
  ): Promise<number | undefined>;
  /** Forgets the conversation and its messages. Resolves with whether it existed and a revision newer than any of its own. */
  delete(conversationId: string, signal: AbortSignal): Promise<{ deleted: boolean; revision: number }>;
}

interface ConversationRow {
  model: string;
  budget_tokens: number;
  summary: string | null;
  summary_tokens: number;
  summary_through_seq: number;
  summarized_messages: number;
  dropped_through_seq: number;
  revision: string;
}

interface MessageRow {
  seq: number;
  role: ChatRole;
  content: string;
  tool_calls_json: Array<{ id: string; name: string; arguments_json: string }>;
  tool_call_id: string;
  name: string;
  tokens: number;
  masked: boolean;
}

/** Clears the compaction state: used when the effective budget changes, since it was computed for the old one. */
const resetCompaction = "summary = NULL, summary_tokens = 0, summary_through_seq = 0, summarized_messages = 0, dropped_through_seq = 0";

/**
 * The conversations in PostgreSQL. Every statement runs with the call's signal; no connection is
 * held across anything but SQL (never across a summarization), because the embedded PGlite has a
 * single connection that every call shares.
 */
export function createConversationStore(options: {
  pool: Pool;
  /** The budget that applies to a conversation with this model and stored budget. */
  effectiveBudget: (model: string, budgetTokens: number) => number;
}): ConversationStore {
  const { pool, effectiveBudget } = options;

  /** Locks the row and applies the request's settings; resolves with them, or undefined without the row. */
  async function lockAndSettle(
    client: SignalledClient,
    request: { conversationId: string; model: string; budgetTokens: number },
  ): Promise<{ model: string; budgetTokens: number; changed: boolean; budgetChanged: boolean } | undefined> {
    const { rows } = await client.query<{ model: string; budget_tokens: number }>(
      "SELECT model, budget_tokens FROM conversations WHERE id = $1 FOR UPDATE",
      [request.conversationId],
    );
    const row = rows[0];
    if (row === undefined) return undefined;
    const model = request.model === "" ? row.model : request.model;
    const budgetTokens = request.budgetTokens === 0 ? row.budget_tokens : request.budgetTokens;
    return {
      model,
      budgetTokens,
      changed: model !== row.model || budgetTokens !== row.budget_tokens,
      budgetChanged: effectiveBudget(model, budgetTokens) !== effectiveBudget(row.model, row.budget_tokens),
    };
  }

  async function resetMasks(client: SignalledClient, conversationId: string): Promise<void> {
    await client.query("UPDATE messages SET masked = false WHERE conversation_id = $1 AND masked", [conversationId]);
  }

  return {
    async append(request, prepare, signal) {
      return inTransaction(pool, signal, "READ COMMITTED", async (client) => {
        // The row must exist before it can be locked; a losing racer's INSERT waits for the winner's commit.
        await client.query(
          "INSERT INTO conversations (id, revision) VALUES ($1, nextval('context_revisions')) ON CONFLICT (id) DO NOTHING",
          [request.conversationId],
        );
        const settled = await lockAndSettle(client, request);
        if (settled === undefined) throw new Error(`conversation ${request.conversationId} vanished while being appended to`);
        const { rows: system } = await client.query<{ tokens: string }>(
          "SELECT coalesce(sum(tokens), 0) AS tokens FROM messages WHERE conversation_id = $1 AND role = 'system'",
          [request.conversationId],
        );
        const messages = prepare({ model: settled.model, budgetTokens: settled.budgetTokens, systemTokens: Number(system[0]?.tokens ?? 0) });
        // Under the row lock, this statement's snapshot includes every earlier append's messages.
        await client.query(
          `INSERT INTO messages (conversation_id, seq, role, content, tool_calls_json, tool_call_id, name, tokens)
           SELECT $1, last.seq + m.ord, m.role, m.content, m.tool_calls::jsonb, m.tool_call_id, m.name, m.tokens
           FROM (SELECT coalesce(max(seq), 0) AS seq FROM messages WHERE conversation_id = $1) AS last,
                unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[])
                  WITH ORDINALITY AS m(role, content, tool_calls, tool_call_id, name, tokens, ord)`,
          [
            request.conversationId,
            messages.map((message) => message.role),
            messages.map((message) => message.content),
            messages.map((message) =>
              JSON.stringify(message.toolCalls.map((call) => ({ id: call.id, name: call.name, arguments_json: call.argumentsJson }))),
            ),
            messages.map((message) => message.toolCallId),
            messages.map((message) => message.name),
            messages.map((message) => message.tokens),
          ],
        );
        if (settled.budgetChanged) await resetMasks(client, request.conversationId);
        const { rows } = await client.query<{ revision: string }>(
          `UPDATE conversations SET model = $2, budget_tokens = $3, updated_at = now(), revision = nextval('context_revisions')
             ${settled.budgetChanged ? `, ${resetCompaction}` : ""}
           WHERE id = $1 RETURNING revision`,
          [request.conversationId, settled.model, settled.budgetTokens],
        );
        return Number(rows[0]?.revision);
      });
    },

    async load(conversationId, signal) {
      return inTransaction(pool, signal, "REPEATABLE READ", async (client) => {
        const { rows } = await client.query<ConversationRow>(
          `SELECT model, budget_tokens, summary, summary_tokens, summary_through_seq, summarized_messages, dropped_through_seq, revision
           FROM conversations WHERE id = $1`,
          [conversationId],
        );
        const row = rows[0];
        if (row === undefined) return undefined;
        const messages = await client.query<MessageRow>(
          `SELECT seq, role, content, tool_calls_json, tool_call_id, name, tokens, masked
           FROM messages WHERE conversation_id = $1 ORDER BY seq`,
          [conversationId],
        );
        return {
          id: conversationId,
          model: row.model,
          budgetTokens: row.budget_tokens,
          revision: Number(row.revision),
          summary:
            row.summary === null
              ? undefined
              : { text: row.summary, tokens: row.summary_tokens, throughSeq: row.summary_through_seq, messageCount: row.summarized_messages },
          droppedThroughSeq: row.dropped_through_seq,
          messages: messages.rows.map((message) => ({
            seq: message.seq,
            role: message.role,
            content: message.content,
            toolCalls: message.tool_calls_json.map((call) => ({ id: call.id, name: call.name, argumentsJson: call.arguments_json })),
            toolCallId: message.tool_call_id,
            name: message.name,
            tokens: message.tokens,
            masked: message.masked,
          })),
        };
      });
    },

    async updateSettings(request, signal) {
      return inTransaction(pool, signal, "READ COMMITTED", async (client) => {
        const settled = await lockAndSettle(client, request);
        if (settled === undefined) return undefined;
        if (!settled.changed) {
          const { rows } = await client.query<{ revision: string }>("SELECT revision FROM conversations WHERE id = $1", [request.conversationId]);
          return Number(rows[0]?.revision);
        }
        if (settled.budgetChanged) await resetMasks(client, request.conversationId);
        const { rows } = await client.query<{ revision: string }>(
          `UPDATE conversations SET model = $2, budget_tokens = $3, updated_at = now(), revision = nextval('context_revisions')
             ${settled.budgetChanged ? `, ${resetCompaction}` : ""}
           WHERE id = $1 RETURNING revision`,
          [request.conversationId, settled.model, settled.budgetTokens],
        );
        return Number(rows[0]?.revision);
      });
    },

    async saveCompaction(conversationId, basedOn, change, signal) {
      return inTransaction(pool, signal, "READ COMMITTED", async (client) => {
        const { summary } = change;
        const { rows } = await client.query<{ revision: string }>(
          `UPDATE conversations
           SET summary = $3, summary_tokens = $4, summary_through_seq = $5, summarized_messages = $6, dropped_through_seq = $7,
               updated_at = now(), revision = nextval('context_revisions')
           WHERE id = $1 AND revision = $2
           RETURNING revision`,
          [
            conversationId,
            basedOn,
            summary?.text ?? null,
            summary?.tokens ?? 0,
            summary?.throughSeq ?? 0,
            summary?.messageCount ?? 0,
            change.droppedThroughSeq,
          ],
        );
        if (rows[0] === undefined) return undefined;
        if (change.maskSeqs.length > 0) {
          await client.query("UPDATE messages SET masked = true WHERE conversation_id = $1 AND seq = ANY($2::int[])", [
            conversationId,
            change.maskSeqs,
          ]);
        }
        return Number(rows[0].revision);
      });
    },

    async delete(conversationId, signal) {
      const deleted = await queryWithSignal(pool, "DELETE FROM conversations WHERE id = $1", [conversationId], signal);
      const { rows } = await queryWithSignal<{ revision: string }>(pool, "SELECT nextval('context_revisions') AS revision", [], signal);
      return { deleted: (deleted.rowCount ?? 0) > 0, revision: Number(rows[0]?.revision) };
    },
  };
}

/** Runs `work` in a transaction on one connection tied to `signal`; rolls back when it throws. */
async function inTransaction<T>(
  pool: Pool,
  signal: AbortSignal,
  isolation: "READ COMMITTED" | "REPEATABLE READ",
  work: (client: SignalledClient) => Promise<T>,
): Promise<T> {
  const client = await connectWithSignal(pool, signal);
  try {
    await client.query(`BEGIN ISOLATION LEVEL ${isolation}`);
    let result: T;
    try {
      result = await work(client);
    } catch (error: unknown) {
      // After an abort the connection is already gone, and with it the transaction.
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    }
    await client.query("COMMIT");
    return result;
  } finally {
    client.release();
  }
}
