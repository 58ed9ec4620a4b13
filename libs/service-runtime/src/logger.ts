import { trace } from "@opentelemetry/api";
import pino, { type Logger } from "pino";

export type { Logger } from "pino";

/**
 * Structured JSON logs on stdout, one object per line, with the service name and, inside a traced
 * call, the trace and span ids so that logs of one request can be found across services.
 */
export function createLogger(options: { service: string; level: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      level: options.level,
      base: { service: options.service },
      messageKey: "msg",
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      mixin() {
        const spanContext = trace.getActiveSpan()?.spanContext();
        return spanContext ? { trace_id: spanContext.traceId, span_id: spanContext.spanId } : {};
      },
      redact: { paths: ["secret", "*.secret", "apiKey", "*.apiKey", "authorization", "*.authorization"], censor: "[redacted]" },
    },
    options.destination ?? standardOutput(),
  );
}

/** What stdout may hold back while it cannot keep up; lines beyond it are dropped, not queued. */
const maxPendingLogBytes = 16 * 1024 * 1024;
let sharedStandardOutput: pino.DestinationStream | undefined;

/**
 * stdout, asynchronously: a line is handed to the kernel from libuv's thread pool, and lines
 * logged while a write is under way go out together, instead of a write(2) on the event loop per
 * line (an access-log line per call is otherwise a visible share of a busy service's CPU). pino
 * flushes what is pending, synchronously, when the process exits, fatal errors included. One
 * stream per process, so that the loggers of services run in one process (tests) never interleave
 * their writes; and bounded, so that a reader of stdout that stalls costs log lines, not memory.
 */
function standardOutput(): pino.DestinationStream {
  sharedStandardOutput ??= pino.destination({ sync: false, maxLength: maxPendingLogBytes });
  return sharedStandardOutput;
}
