/** One iteration's tool calls, as the detector sees them. */
export interface IterationCalls {
  /** name + canonical arguments of each call, in order. */
  readonly signatures: readonly string[];
  /** Whether every call failed (false when there were none). */
  readonly allFailed: boolean;
}

/** What to do about the run after an iteration. */
export type StuckVerdict = { readonly kind: "ok" } | { readonly kind: "redirect"; readonly why: string } | { readonly kind: "stop"; readonly why: string };

/** Per run: watches the iterations' tool calls for loops. */
export interface StuckDetector {
  observe(iteration: IterationCalls): StuckVerdict;
}

/** Iterations that must repeat, or fail in a row, before the run counts as stuck. */
const repeatLimit = 3;

/**
 * Detects a run going in circles: the same calls (name and canonical arguments) three iterations
 * in a row, an A-B-A-B alternation, or three iterations in a row whose calls all failed. The first
 * time, the verdict is "redirect" (the loop tells the model); if the next iteration still fits a
 * pattern, "stop". Patterns are checked over whole iterations: parallel calls of one iteration are one step.
 */
export function createStuckDetector(): StuckDetector {
  const steps: string[] = [];
  let failuresInARow = 0;
  let redirected = false;

  function detect(): string | undefined {
    const last = steps.slice(-4);
    if (last.length >= repeatLimit && last.slice(-repeatLimit).every((step) => step === last.at(-1))) {
      return `it made the same tool call ${repeatLimit} times in a row`;
    }
    if (last.length === 4 && last[0] === last[2] && last[1] === last[3] && last[0] !== last[1]) {
      return "it alternates between the same two tool calls";
    }
    if (failuresInARow >= repeatLimit) return `every tool call failed ${repeatLimit} iterations in a row`;
    return undefined;
  }

  return {
    observe(iteration) {
      if (iteration.signatures.length === 0) return { kind: "ok" };
      steps.push(JSON.stringify(iteration.signatures));
      failuresInARow = iteration.allFailed ? failuresInARow + 1 : 0;
      const why = detect();
      if (why === undefined) return { kind: "ok" };
      if (redirected) return { kind: "stop", why };
      // Not reset: one more step of the same pattern after the note means the model went on regardless.
      redirected = true;
      return { kind: "redirect", why };
    },
  };
}

/** A tool call's identity for loop detection: the name and the arguments with keys sorted (invalid JSON as written). */
export function callSignature(name: string, argumentsJson: string): string {
  try {
    return `${name} ${canonicalJson(JSON.parse(argumentsJson) as unknown)}`;
  } catch {
    return `${name} ${argumentsJson.trim()}`;
  }
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonicalJson(item)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}
