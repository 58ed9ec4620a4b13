import { linkSignals, readLimitedBody } from "@vlinders/service-runtime";
import { failure } from "./file-helpers";
import type { ToolDefinition } from "./tool";
import { truncateMiddle } from "./truncate-output";

export interface WebSearchArguments {
  query: string;
  max_results?: number;
}

/** One search result, as the search service returns it. */
export interface WebSearchResult {
  readonly title: string;
  readonly url: string;
  readonly snippet: string;
}

export interface WebSearchOptions {
  /**
   * WEB_SEARCH_URL: an endpoint answering `GET <url>?q=<query>` with JSON
   * `{"results": [{"title": "…", "url": "…", "snippet": "…"}]}`. Unset, the tool is listed but
   * every call fails saying how to turn it on.
   */
  readonly url?: string;
  /** Bytes of the answer read; a larger one is refused (1 MiB). */
  readonly maxResponseBytes?: number;
}

const defaultMaxResults = 5;

/**
 * `web_search`: asks the configured search service. The request carries the call's signal and
 * its timeout, so that neither a cancelled call nor a slow service holds the call.
 */
export function createWebSearchTool(options: WebSearchOptions = {}): ToolDefinition<WebSearchArguments> {
  const maxResponseBytes = options.maxResponseBytes ?? 1024 * 1024;
  return {
    name: "web_search",
    description: "Searches the web and returns the top results (title, URL and a snippet of each).",
    parameters: {
      type: "object",
      properties: {
        query: { type: "string", minLength: 1, description: "What to search for." },
        max_results: { type: "integer", minimum: 1, maximum: 20, description: `Results returned (default ${defaultMaxResults}).` },
      },
      required: ["query"],
      additionalProperties: false,
    },
    readOnly: true,
    // The web is no part of a workspace: a caller need not have one to search.
    needsWorkspace: false,

    async execute(args, context) {
      if (options.url === undefined) return failure("web_search is not configured: set WEB_SEARCH_URL");
      const url = new URL(options.url);
      url.searchParams.set("q", args.query);
      const timeout = new AbortController();
      const timer = setTimeout(() => timeout.abort(new Error("timed out")), context.timeoutMs);
      const { signal, dispose } = linkSignals(context.signal, timeout.signal);
      let body: unknown;
      try {
        const response = await fetch(url, { signal, headers: { accept: "application/json" }, redirect: "follow" });
        if (!response.ok) {
          await response.body?.cancel();
          return failure(`web search service answered HTTP ${response.status}`);
        }
        const text = await readLimitedBody(response, maxResponseBytes);
        if (text === undefined) return failure(`web search service answered with more than ${maxResponseBytes} bytes`);
        try {
          body = JSON.parse(text);
        } catch {
          return failure("web search service answered with something that is not JSON");
        }
      } catch (error) {
        context.signal.throwIfAborted();
        if (timeout.signal.aborted) return failure(`web search timed out after ${context.timeoutMs} ms`);
        return failure(`web search service unreachable: ${describeFetchError(error)}`);
      } finally {
        clearTimeout(timer);
        dispose();
      }
      const results = parseResults(body);
      if (!results) return failure('web search service answered JSON without a "results" list of {title, url, snippet}');
      const shown = results.slice(0, args.max_results ?? defaultMaxResults);
      if (shown.length === 0) return { success: true, output: `no results for ${JSON.stringify(args.query)}`, result: { results: [] }, truncated: false };
      const output = shown.map((result, index) => `${index + 1}. ${result.title}\n   ${result.url}\n   ${result.snippet}`).join("\n\n");
      const cut = truncateMiddle(output, context.outputLimitBytes);
      return { success: true, output: cut.text, result: { results: shown }, truncated: cut.truncated };
    },
  };
}

function parseResults(body: unknown): WebSearchResult[] | undefined {
  const list = (body as { results?: unknown } | null)?.results;
  if (!Array.isArray(list)) return undefined;
  const results: WebSearchResult[] = [];
  for (const item of list as unknown[]) {
    if (typeof item !== "object" || item === null) return undefined;
    const { title, url, snippet } = item as Record<string, unknown>;
    if (typeof url !== "string") return undefined;
    results.push({ title: typeof title === "string" ? title : url, url, snippet: typeof snippet === "string" ? snippet : "" });
  }
  return results;
}

function describeFetchError(error: unknown): string {
  // fetch says only "fetch failed"; the reason (ECONNREFUSED, a DNS failure) is its cause.
  const cause = (error as { cause?: { message?: unknown } } | undefined)?.cause;
  if (typeof cause?.message === "string") return cause.message;
  return error instanceof Error ? error.message : String(error);
}
