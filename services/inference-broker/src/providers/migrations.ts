import type { Migration } from "@vlinders/database";

/** The broker's rows in schema_migrations. */
export const brokerMigrationScope = "inference-broker";

/**
 * The broker's schema history. Released migrations are never edited: a change is a new migration
 * appended with the next version.
 */
export const brokerMigrations: readonly Migration[] = [
  {
    version: 1,
    name: "provider keys",
    // One key per remote provider, sealed with AES-256-GCM: the ciphertext, its IV and tag, and the
    // id of the master key that sealed it, checked before any decryption is attempted.
    sql: `
      CREATE TABLE provider_keys (
        provider text PRIMARY KEY,
        ciphertext bytea NOT NULL,
        iv bytea NOT NULL,
        auth_tag bytea NOT NULL,
        key_suffix text NOT NULL,
        master_key_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        rotated_at timestamptz
      )`,
  },
  {
    version: 2,
    name: "provider usage",
    // Rows are aggregates over one flush interval of one replica, summed again when reported.
    sql: `
      CREATE TABLE provider_usage (
        id bigserial PRIMARY KEY,
        provider text NOT NULL,
        model text NOT NULL,
        requests integer NOT NULL,
        prompt_tokens bigint NOT NULL,
        completion_tokens bigint NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX provider_usage_provider_model_recorded_at ON provider_usage (provider, model, recorded_at)`,
  },
];
