import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { createNoneSandbox } from "../sandbox/create-command-sandbox";
import { createWorkspace } from "../workspace/workspaces";
import type { ToolContext } from "./tool";
import { createWebSearchTool } from "./web-search";

let server: Server;
let baseUrl: string;
let handler: (request: IncomingMessage, response: ServerResponse) => void;
const requests: string[] = [];

beforeAll(async () => {
  server = createServer((request, response) => {
    requests.push(request.url ?? "");
    handler(request, response);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(() => {
  requests.length = 0;
});

function json(body: unknown, status = 200): (request: IncomingMessage, response: ServerResponse) => void {
  return (_request, response) => {
    response.writeHead(status, { "content-type": "application/json" });
    response.end(JSON.stringify(body));
  };
}

function context(overrides: Partial<ToolContext> = {}): ToolContext {
  return {
    // web_search touches no workspace files and runs no command.
    workspace: createWorkspace("ws", "/nonexistent"),
    agentType: "plan",
    mayWrite: false,
    timeoutMs: 5000,
    outputLimitBytes: 64 * 1024,
    sandbox: createNoneSandbox("web_search runs no commands"),
    signal: new AbortController().signal,
    ...overrides,
  };
}

const results = [
  { title: "Node.js AbortSignal", url: "https://nodejs.org/api/globals.html#class-abortsignal", snippet: "A signal object that allows you to communicate with a DOM request." },
  { title: "MDN: AbortController", url: "https://developer.mozilla.org/en-US/docs/Web/API/AbortController", snippet: "Abort one or more Web requests." },
  { title: "Third", url: "https://example.com/3", snippet: "three" },
];

describe("web_search", () => {
  it("fails saying how to turn it on when WEB_SEARCH_URL is unset", async () => {
    expect(await createWebSearchTool().execute({ query: "x" }, context())).toEqual({
      success: false,
      output: "",
      error: "web_search is not configured: set WEB_SEARCH_URL",
      truncated: false,
    });
  });

  it("asks GET ?q=<query> and lists the results with title, URL and snippet", async () => {
    handler = json({ results });
    const tool = createWebSearchTool({ url: `${baseUrl}/search?lang=en` });
    const outcome = await tool.execute({ query: "abort signal & fetch", max_results: 2 }, context());
    expect(requests).toEqual(["/search?lang=en&q=abort+signal+%26+fetch"]);
    expect(outcome).toEqual({
      success: true,
      output:
        "1. Node.js AbortSignal\n   https://nodejs.org/api/globals.html#class-abortsignal\n   A signal object that allows you to communicate with a DOM request.\n\n" +
        "2. MDN: AbortController\n   https://developer.mozilla.org/en-US/docs/Web/API/AbortController\n   Abort one or more Web requests.",
      result: { results: results.slice(0, 2) },
      truncated: false,
    });
  });

  it("says so when there are no results", async () => {
    handler = json({ results: [] });
    expect(await createWebSearchTool({ url: baseUrl }).execute({ query: "zzz" }, context())).toMatchObject({ success: true, output: 'no results for "zzz"' });
  });

  it.each<[string, (request: IncomingMessage, response: ServerResponse) => void, string]>([
    ["an HTTP error", json({ error: "down" }, 503), "web search service answered HTTP 503"],
    ["a body that is not JSON", (_request, response) => response.end("<html>"), "web search service answered with something that is not JSON"],
    ["JSON of another shape", json({ items: [] }), 'web search service answered JSON without a "results" list of {title, url, snippet}'],
    ["a body that is too large", json({ results, padding: "x".repeat(5000) }), "web search service answered with more than 1000 bytes"],
  ])("fails clearly on %s", async (_, serve, error) => {
    handler = serve;
    expect(await createWebSearchTool({ url: baseUrl, maxResponseBytes: 1000 }).execute({ query: "q" }, context())).toMatchObject({ success: false, error });
  });

  it("gives up on a slow service at the call's timeout", async () => {
    handler = () => undefined; // never answers
    const started = Date.now();
    const outcome = await createWebSearchTool({ url: baseUrl }).execute({ query: "slow" }, context({ timeoutMs: 200 }));
    expect(outcome).toMatchObject({ success: false, error: "web search timed out after 200 ms" });
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("rejects with the call's reason when the caller cancels", async () => {
    handler = () => undefined;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Error("client cancelled")), 100);
    try {
      await expect(createWebSearchTool({ url: baseUrl }).execute({ query: "q" }, context({ signal: controller.signal }))).rejects.toThrow("client cancelled");
    } finally {
      clearTimeout(timer);
    }
  });

  it("fails naming the cause when the service is unreachable", async () => {
    const closed = createServer();
    closed.listen(0, "127.0.0.1");
    await once(closed, "listening");
    const { port } = closed.address() as AddressInfo;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const outcome = await createWebSearchTool({ url: `http://127.0.0.1:${port}/` }).execute({ query: "q" }, context());
    expect(outcome.success).toBe(false);
    expect(outcome.error).toMatch(/^web search service unreachable: .*ECONNREFUSED/);
  });
});
