import type { Migration } from "@vlinders/database";

/**
 * The context service's schema (scope "context"). Released migrations are never edited; new ones
 * are appended.
 *
 * Compaction never deletes or rewrites a message: `messages` keeps every original, and the window
 * is a view of it described by state beside it (a message's `masked` flag, the conversation's
 * summary and the seq it covers, the seq up to which old messages were dropped).
 */
export const contextMigrations: readonly Migration[] = [
  {
    version: 1,
    name: "conversations, messages and memories",
    sql: `
      -- Every change of a conversation takes a new revision from here. One sequence for all
      -- conversations, so that revisions only grow, even across a delete and a re-creation: the
      -- window cache relies on it to never accept an entry older than an invalidation.
      CREATE SEQUENCE context_revisions;

      CREATE TABLE conversations (
        id text PRIMARY KEY,
        -- The model the window is for ('' when never named); its family decides how tokens are counted.
        model text NOT NULL DEFAULT '',
        -- 0: the model family's context size, else the configured default.
        budget_tokens integer NOT NULL DEFAULT 0,
        -- Stage 2: one summary replacing every non-system message up to summary_through_seq.
        summary text,
        summary_tokens integer NOT NULL DEFAULT 0,
        summary_through_seq integer NOT NULL DEFAULT 0,
        summarized_messages integer NOT NULL DEFAULT 0,
        -- Stage 3: non-system messages up to this seq are left out of the window.
        dropped_through_seq integer NOT NULL DEFAULT 0,
        revision bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      );

      CREATE TABLE messages (
        conversation_id text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        seq integer NOT NULL,
        role text NOT NULL,
        content text NOT NULL,
        -- [{"id","name","arguments_json"}]; arguments_json is kept as the model wrote it, valid JSON or not.
        tool_calls_json jsonb NOT NULL DEFAULT '[]',
        tool_call_id text NOT NULL DEFAULT '',
        name text NOT NULL DEFAULT '',
        -- Counted once, at append, for the conversation's model at that time.
        tokens integer NOT NULL,
        -- Stage 1: the window shows a short mask instead of this (tool) message's content.
        masked boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (conversation_id, seq)
      );

      CREATE TABLE memories (
        id text PRIMARY KEY,
        scope text NOT NULL,
        text text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX memories_scope_created_at ON memories (scope, created_at DESC);
    `,
  },
];
