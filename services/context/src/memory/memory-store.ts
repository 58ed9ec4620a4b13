import { randomUUID } from "node:crypto";
import { queryWithSignal } from "@vlinders/database";
import type { Memory } from "@vlinders/proto";
import type { Pool } from "pg";
import { keywordsOf, rankByOverlap } from "./keyword-ranking";

export interface MemoryStore {
  remember(scope: string, text: string, signal: AbortSignal): Promise<Memory>;
  /** The best keyword matches for `query`, or the most recent memories when it has no keywords. */
  recall(scope: string, query: string, limit: number, signal: AbortSignal): Promise<Memory[]>;
}

/** Memories read per Recall to rank: the newest that contain a keyword at all. */
const candidateLimit = 2_000;

/** Long-term memory per scope in PostgreSQL. */
export function createMemoryStore(pool: Pool): MemoryStore {
  return {
    async remember(scope, text, signal) {
      const id = randomUUID();
      await queryWithSignal(pool, "INSERT INTO memories (id, scope, text) VALUES ($1, $2, $3)", [id, scope, text], signal);
      return { id, scope, text };
    },

    async recall(scope, query, limit, signal) {
      const keywords = keywordsOf(query);
      if (keywords.length === 0) {
        const { rows } = await queryWithSignal<{ id: string; text: string }>(
          pool,
          "SELECT id, text FROM memories WHERE scope = $1 ORDER BY created_at DESC, id LIMIT $2",
          [scope, limit],
          signal,
        );
        return rows.map((row) => ({ id: row.id, scope, text: row.text }));
      }
      // The database narrows to memories containing some keyword; the ranking decides on whole words.
      const patterns = keywords.map((keyword) => `%${keyword.replace(/[\\%_]/g, (char) => `\\${char}`)}%`);
      const { rows } = await queryWithSignal<{ id: string; text: string; created_at: Date }>(
        pool,
        "SELECT id, text, created_at FROM memories WHERE scope = $1 AND text ILIKE ANY($2::text[]) ORDER BY created_at DESC LIMIT $3",
        [scope, patterns, candidateLimit],
        signal,
      );
      const ranked = rankByOverlap(
        query,
        rows.map((row) => ({ id: row.id, text: row.text, createdAt: row.created_at })),
        limit,
      );
      return ranked.map((memory) => ({ id: memory.id, scope, text: memory.text }));
    },
  };
}
