import type { Migration } from "@vlinders/database";

/** The orchestrator's rows in schema_migrations. */
export const orchestratorMigrationScope = "orchestrator";

/**
 * The orchestrator's schema history. Released migrations are never edited: a change is a new
 * migration appended with the next version.
 */
export const orchestratorMigrations: readonly Migration[] = [
  {
    version: 1,
    name: "agent executions and tool calls",
    // Statuses are text (the proto enum's names without the prefix, lower case) so that a reader of
    // the table, and a release that adds a status, need no number mapping.
    //
    // heartbeat_at is only ever compared with the database's own now(): replicas' clocks disagree,
    // and a sweep that trusted them could interrupt a live run.
    //
    // tool_calls keeps arguments and results as text, not jsonb: a model may emit malformed JSON,
    // which is recorded as it came (the run goes on with the error as the tool's result).
    sql: `
      CREATE TABLE agent_executions (
        id text PRIMARY KEY,
        agent_type text NOT NULL,
        parent_run_id text,
        user_id text NOT NULL DEFAULT '',
        instruction text NOT NULL,
        workspace_id text NOT NULL DEFAULT '',
        model text NOT NULL DEFAULT '',
        status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
        stop_reason text NOT NULL DEFAULT '',
        response text NOT NULL DEFAULT '',
        error text NOT NULL DEFAULT '',
        iterations integer NOT NULL DEFAULT 0,
        prompt_tokens bigint NOT NULL DEFAULT 0,
        completion_tokens bigint NOT NULL DEFAULT 0,
        total_tokens bigint NOT NULL DEFAULT 0,
        cached_prompt_tokens bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        duration_ms bigint,
        owner text NOT NULL,
        heartbeat_at timestamptz NOT NULL DEFAULT now()
      );
      -- GetAgentStats: one agent type (or all) over a recent window.
      CREATE INDEX agent_executions_type_created_at ON agent_executions (agent_type, created_at);
      -- The sweep of runs whose replica stopped beating, and the restart of a replica (its own runs):
      -- partial, so they stay as small as the number of runs in flight.
      CREATE INDEX agent_executions_running_heartbeat ON agent_executions (heartbeat_at) WHERE status = 'running';
      CREATE INDEX agent_executions_running_owner ON agent_executions (owner) WHERE status = 'running';
      -- A parent's sub-agents.
      CREATE INDEX agent_executions_parent ON agent_executions (parent_run_id) WHERE parent_run_id IS NOT NULL;

      CREATE TABLE tool_calls (
        execution_id text NOT NULL REFERENCES agent_executions (id) ON DELETE CASCADE,
        id text NOT NULL,
        iteration integer NOT NULL,
        tool_name text NOT NULL,
        arguments_json text NOT NULL,
        result_json text NOT NULL,
        -- What the loop handed over, in bytes (UTF-8), before the store capped it.
        arguments_bytes integer NOT NULL,
        result_bytes integer NOT NULL,
        arguments_truncated boolean NOT NULL DEFAULT false,
        result_truncated boolean NOT NULL DEFAULT false,
        success boolean NOT NULL,
        duration_ms integer NOT NULL,
        started_at timestamptz NOT NULL,
        finished_at timestamptz NOT NULL,
        -- Its leading column also serves the join of the stats and a run's listing.
        PRIMARY KEY (execution_id, id)
      )`,
  },
];
