import type { Logger } from "@vlinders/service-runtime";
import { Redis } from "ioredis";

/** How a Redis connection on the request path behaves; every field has a default fit for that path. */
export interface RedisConnectionOptions {
  logger: Logger;
  /** Names the connection in logs and in Redis' CLIENT LIST (e.g. "broker-cache"). */
  name: string;
  /** A command without a reply within this time fails, so a slow Redis never stalls a request (500). */
  commandTimeoutMs?: number;
  /** Time allowed to open the TCP connection (2000). */
  connectTimeoutMs?: number;
  /** Reconnections a command may wait through before it fails (1). */
  maxRetriesPerRequest?: number;
  /** Upper bound of the delay between reconnection attempts, which grows from 50 ms (2000). */
  maxReconnectDelayMs?: number;
}

/** One ioredis client and the way to close it. */
export interface RedisConnection {
  /** The client. Commands fail at once while it is disconnected instead of queueing. */
  readonly redis: Redis;
  /**
   * Resolves true once the connection is ready, false if it is not within `timeoutMs`. Never
   * rejects: a composition root may wait a moment at start so that the first requests find Redis
   * connected, and go on without it otherwise.
   */
  ready(timeoutMs: number): Promise<boolean>;
  /** Sends QUIT (pending replies arrive first), then disconnects; stops reconnecting. Never rejects. */
  close(): Promise<void>;
}

/**
 * Lets one log line through per interval and counts those held back, so that an outage of a shared
 * dependency logs once per interval rather than once per request. Call it when something would be
 * logged: it returns the number of lines suppressed since the last one let through, or undefined
 * when this one should be suppressed too.
 */
export function createLogThrottle(intervalMs = 30_000, now: () => number = Date.now): () => number | undefined {
  let lastLoggedAt = -Infinity;
  let suppressed = 0;
  return () => {
    const time = now();
    if (time - lastLoggedAt < intervalMs) {
      suppressed += 1;
      return undefined;
    }
    lastLoggedAt = time;
    const count = suppressed;
    suppressed = 0;
    return count;
  };
}

/** The URL without its credentials, fit for logs. */
export function describeRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname === "/" ? "" : parsed.pathname}`;
  } catch {
    return "(unparsable REDIS_URL)";
  }
}

/**
 * An ioredis client for the request path (cache, quotas). Redis there is an optimisation and a
 * shared counter, never a reason to fail or stall a request, so the client fails fast: commands
 * time out after `commandTimeoutMs`, are not queued while the connection is down
 * (`enableOfflineQueue: false`) and wait through at most `maxRetriesPerRequest` reconnections.
 * The client keeps reconnecting in the background, with a capped backoff, until `close()`.
 *
 * Connection errors are logged (once per 30 s while they last, with the number held back) instead
 * of escaping as unhandled 'error' events, which would crash the process.
 */
export function createRedisConnection(url: string, options: RedisConnectionOptions): RedisConnection {
  const { logger, name } = options;
  const maxReconnectDelayMs = options.maxReconnectDelayMs ?? 2000;
  const where = describeRedisUrl(url);
  const log = logger.child({ redis: name, url: where });
  const errorThrottle = createLogThrottle();

  const redis = new Redis(url, {
    connectionName: name,
    // Connect explicitly below, once the listeners are attached; with the offline queue disabled a
    // first command sent to a lazy client that has not connected would fail anyway.
    lazyConnect: true,
    enableOfflineQueue: false,
    commandTimeout: options.commandTimeoutMs ?? 500,
    connectTimeout: options.connectTimeoutMs ?? 2000,
    maxRetriesPerRequest: options.maxRetriesPerRequest ?? 1,
    // A command cut off by a lost connection has already failed its caller (who moved on: a miss,
    // an admission); sending it again after reconnecting would count a quota twice.
    autoResendUnfulfilledCommands: false,
    // How long disconnect() lets a socket end gracefully before destroying it. close() has already
    // waited for QUIT; and ioredis arms this timer even when the socket is long gone (between two
    // reconnection attempts), where ioredis' default of 2 s would keep the process alive after close().
    disconnectTimeout: 200,
    retryStrategy: (attempt) => Math.min(50 * 2 ** Math.min(attempt, 16), maxReconnectDelayMs),
  });

  let wasReady = false;
  redis.on("ready", () => {
    wasReady = true;
    log.info("redis connected");
  });
  redis.on("error", (error: Error) => {
    const suppressed = errorThrottle();
    if (suppressed !== undefined) log.warn({ err: error, suppressed }, "redis connection error; requests go on without it");
  });
  redis.on("close", () => {
    if (!wasReady || closing) return;
    wasReady = false;
    log.warn("redis connection lost; reconnecting");
  });

  let closing: Promise<void> | undefined;

  // The 'error' listener above reports the failure; the promise only has to be settled.
  redis.connect().catch(() => undefined);

  return {
    redis,

    async ready(timeoutMs) {
      if (redis.status === "ready") return true;
      return new Promise<boolean>((resolve) => {
        const done = (value: boolean): void => {
          clearTimeout(timer);
          redis.off("ready", onReady);
          resolve(value);
        };
        const onReady = (): void => done(true);
        const timer = setTimeout(() => done(false), timeoutMs);
        redis.on("ready", onReady);
      });
    },

    close() {
      closing ??= (async () => {
        if (redis.status === "ready") {
          // QUIT lets the replies already on their way arrive; commandTimeout bounds the wait.
          await redis.quit().catch(() => undefined);
        }
        // Unless QUIT has ended it: stops the reconnection timer, and ends a connection QUIT could
        // not. Between two attempts ("reconnecting") there is no socket, hence no 'end' to wait for.
        if (redis.status !== "end") {
          const socketOpen = redis.status !== "reconnecting" && redis.status !== "wait";
          const ended = socketOpen ? waitForEnd(redis, 1000) : Promise.resolve();
          redis.disconnect();
          await ended;
        }
        log.info("redis connection closed");
      })();
      return closing;
    },
  };
}

/** Resolves on the client's 'end' event, or after `timeoutMs` at the latest. */
function waitForEnd(redis: Redis, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      redis.off("end", done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    redis.once("end", done);
  });
}
