const levelColours: Record<string, string> = { fatal: "31", error: "31", warn: "33", info: "32", debug: "90", trace: "90" };
const serviceColours = ["36", "35", "34", "33", "32"];
const omitted = new Set(["level", "time", "service", "msg", "pid", "hostname"]);

/**
 * Turns a JSON log line into one readable line: `[service] 21:56:28 info message key=value …`.
 * Lines that are not JSON are shown as they are.
 */
export function formatLogLine(service: string, line: string, options: { colour: boolean; width: number; serviceIndex: number }): string {
  const paint = (code: string, text: string) => (options.colour ? `\u001b[${code}m${text}\u001b[0m` : text);
  const prefix = paint(serviceColours[options.serviceIndex % serviceColours.length] ?? "36", `[${service}]`.padEnd(options.width + 2));
  let record: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(line);
    if (typeof parsed !== "object" || parsed === null) return `${prefix} ${line}`;
    record = parsed as Record<string, unknown>;
  } catch {
    return `${prefix} ${line}`;
  }
  const time = typeof record.time === "string" ? record.time.slice(11, 19) : "";
  const level = typeof record.level === "string" ? record.level : "info";
  const fields = Object.entries(record)
    .filter(([key]) => !omitted.has(key))
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join(" ");
  return `${prefix} ${time} ${paint(levelColours[level] ?? "0", level.padEnd(5))} ${String(record.msg ?? "")}${fields ? ` ${paint("90", fields)}` : ""}`;
}
