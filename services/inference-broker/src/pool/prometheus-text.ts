/**
 * Sums the samples of the named metrics in a Prometheus text exposition (all label sets added up,
 * e.g. one per model_name). Metrics that are absent are absent from the result. Only what the
 * router needs: no types, no timestamps, no histograms.
 */
export function sumPrometheusSamples(text: string, names: readonly string[]): Map<string, number> {
  const wanted = new Set(names);
  const sums = new Map<string, number>();
  let lineStart = 0;
  while (lineStart < text.length) {
    let lineEnd = text.indexOf("\n", lineStart);
    if (lineEnd === -1) lineEnd = text.length;
    if (text.charCodeAt(lineStart) !== 35 /* # */) {
      const line = text.slice(lineStart, lineEnd).trim();
      const nameEnd = line.search(/[{\s]/);
      const name = nameEnd === -1 ? line : line.slice(0, nameEnd);
      if (wanted.has(name)) {
        const afterLabels = line[nameEnd] === "{" ? endOfLabels(line, nameEnd) : nameEnd;
        const value = Number.parseFloat(line.slice(afterLabels).trim().split(/\s+/)[0] ?? "");
        if (Number.isFinite(value)) sums.set(name, (sums.get(name) ?? 0) + value);
      }
    }
    lineStart = lineEnd + 1;
  }
  return sums;
}

/** Index just past the label set's closing brace; label values are quoted and may hold braces, spaces and \" escapes. */
function endOfLabels(line: string, openBrace: number): number {
  let inQuotes = false;
  for (let index = openBrace + 1; index < line.length; index += 1) {
    const character = line[index];
    if (inQuotes) {
      if (character === "\\") index += 1;
      else if (character === '"') inQuotes = false;
    } else if (character === '"') {
      inQuotes = true;
    } else if (character === "}") {
      return index + 1;
    }
  }
  return line.length;
}
