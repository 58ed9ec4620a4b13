import type { Compaction } from "@vlinders/proto";
import { Counter, Histogram, type Registry } from "prom-client";

export interface ContextMetrics {
  recordCompactions(compactions: readonly Compaction[]): void;
  recordWindowServed(source: "cache" | "database"): void;
  recordCacheLookup(result: "hit" | "miss"): void;
  recordSummarization(outcome: "ok" | "failed"): void;
}

export function createContextMetrics(registry: Registry): ContextMetrics {
  const compactions = new Counter({
    name: "context_compactions_total",
    help: "Compaction stages run, by stage (mask_tool_output, summarize, drop_oldest)",
    labelNames: ["stage"] as const,
    registers: [registry],
  });
  const tokens = new Histogram({
    name: "context_compaction_tokens",
    help: "Window tokens before and after each compaction stage",
    labelNames: ["stage", "point"] as const,
    buckets: [256, 1_024, 4_096, 8_192, 16_384, 32_768, 65_536, 131_072, 262_144],
    registers: [registry],
  });
  const windows = new Counter({
    name: "context_windows_served_total",
    help: "Windows returned by AppendMessages and GetContext, by where they came from",
    labelNames: ["source"] as const,
    registers: [registry],
  });
  const lookups = new Counter({
    name: "context_window_cache_lookups_total",
    help: "Window cache lookups of GetContext, by result (hit, miss: absent, stale, for another budget, or the cache failed)",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const summarizations = new Counter({
    name: "context_summarizations_total",
    help: "Summaries asked of the summary model, by outcome (failed: the window fell back to dropping old messages)",
    labelNames: ["outcome"] as const,
    registers: [registry],
  });
  return {
    recordCompactions(done) {
      for (const compaction of done) {
        compactions.inc({ stage: compaction.stage });
        tokens.observe({ stage: compaction.stage, point: "before" }, compaction.tokensBefore);
        tokens.observe({ stage: compaction.stage, point: "after" }, compaction.tokensAfter);
      }
    },
    recordWindowServed: (source) => windows.inc({ source }),
    recordCacheLookup: (result) => lookups.inc({ result }),
    recordSummarization: (outcome) => summarizations.inc({ outcome }),
  };
}
