import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createLogger } from "@vlinders/service-runtime";
import { createHookRegistry, createHookRunner, type HookRunner } from "./hook-runner";
import type { HookPayload, HookTarget } from "./hook-types";

const logger = createLogger({ service: "orchestrator", level: "silent" });

const payload: HookPayload = {
  event: "pre_tool_use",
  runId: "run-1",
  parentRunId: "",
  agentType: "edit",
  iteration: 1,
  toolCall: { id: "call-1", name: "run_command", argumentsJson: '{"command":"rm -rf /"}' },
};

const result = { callId: "call-1", toolName: "read_file", success: true, output: "secret=hunter2", resultJson: "", error: "", exitCode: undefined, durationMs: 3, truncated: false };

/** Hooks as an agent type configures them: webhooks on a real local HTTP server, and in-process plugins. */
describe("hooks", () => {
  let server: Server;
  let base: string;
  const received: Array<Record<string, unknown>> = [];
  const routes: Record<string, (body: Record<string, unknown>, res: ServerResponse) => void> = {
    "/allow": (_, res) => res.end(JSON.stringify({ decision: "allow" })),
    "/empty": (_, res) => res.end(""),
    "/deny": (_, res) => res.end(JSON.stringify({ decision: "deny", reason: "no deleting everything" })),
    "/rewrite": (_, res) => res.end(JSON.stringify({ decision: "rewrite", arguments_json: '{"command":"ls"}' })),
    "/redact": (_, res) => res.end(JSON.stringify({ decision: "rewrite", result: { output: "secret=[redacted]" } })),
    "/error": (_, res) => {
      res.statusCode = 500;
      res.end("boom");
    },
    "/nonsense": (_, res) => res.end(JSON.stringify({ decision: "maybe" })),
    // Where a redirect would lead: it allows everything, so reaching it would be the bug.
    "/redirect": (_, res) => {
      res.statusCode = 307;
      res.setHeader("location", "/allow");
      res.end();
    },
    // A chunked answer with no length that never stops growing.
    "/flood": (_, res) => {
      const chunk = Buffer.alloc(64 * 1024, "a");
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once("drain", pump);
      };
      res.on("close", () => res.removeAllListeners("drain"));
      pump();
    },
    "/huge": (_, res) => {
      res.setHeader("content-length", String(50 * 1024 * 1024));
      res.write("{");
    },
    "/slow": (_, res) => {
      const timer = setTimeout(() => res.end(JSON.stringify({ decision: "allow" })), 5_000);
      res.on("close", () => clearTimeout(timer));
    },
  };
  const webhook = (path: string, timeoutMs?: number): HookTarget => ({ kind: "webhook", url: `${base}${path}`, timeoutMs });
  const plugin = (name: string): HookTarget => ({ kind: "plugin", plugin: name, timeoutMs: 200 });
  let hooks: HookRunner;

  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      let text = "";
      req.on("data", (chunk: Buffer) => (text += chunk.toString()));
      req.on("end", () => {
        const body = JSON.parse(text) as Record<string, unknown>;
        received.push(body);
        routes[req.url ?? ""]!(body, res);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const registry = createHookRegistry()
      .register("no-rm", (hookPayload) => (hookPayload.toolCall?.argumentsJson.includes("rm ") ? { decision: "deny", reason: "rm is not allowed" } : undefined))
      .register("hangs", () => new Promise(() => undefined))
      .register("throws", () => {
        throw new Error("plugin bug");
      });
    hooks = createHookRunner({ registry, logger, defaultTimeoutMs: 300 });
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("posts the event as snake_case JSON and allows on allow (or an empty answer)", async () => {
    received.length = 0;
    await expect(hooks.preToolUse([webhook("/allow"), webhook("/empty")], payload, AbortSignal.timeout(5_000))).resolves.toEqual({
      allowed: true,
      argumentsJson: '{"command":"rm -rf /"}',
    });
    expect(received[0]).toEqual({
      event: "pre_tool_use",
      run_id: "run-1",
      parent_run_id: "",
      agent_type: "edit",
      iteration: 1,
      tool_call: { id: "call-1", name: "run_command", arguments_json: '{"command":"rm -rf /"}' },
    });
  });

  it("denies with the hook's reason", async () => {
    const outcome = await hooks.preToolUse([webhook("/deny")], payload, AbortSignal.timeout(5_000));
    expect(outcome).toEqual({ allowed: false, reason: `denied by hook webhook ${base}/deny: no deleting everything` });
  });

  it("rewrites the arguments, and later hooks see the rewritten ones", async () => {
    received.length = 0;
    const outcome = await hooks.preToolUse([webhook("/rewrite"), webhook("/allow")], payload, AbortSignal.timeout(5_000));
    expect(outcome).toEqual({ allowed: true, argumentsJson: '{"command":"ls"}' });
    expect(received[1]).toMatchObject({ tool_call: { arguments_json: '{"command":"ls"}' } });
  });

  it.each([
    ["times out", "/slow", "timed out"],
    ["answers HTTP 500", "/error", "answered HTTP 500"],
    ["answers a decision it does not know", "/nonsense", 'answered decision "maybe"'],
    ["answers with a redirect (not followed)", "/redirect", "answered HTTP 307 (a redirect to /allow)"],
    ["answers a body that never ends", "/flood", "more than the 1048576 bytes"],
    ["declares a body too large to read", "/huge", "52428800 bytes, more than the 1048576"],
  ])("fails closed when a pre_tool_use webhook %s", async (_, path, reason) => {
    const startedAt = Date.now();
    const outcome = await hooks.preToolUse([webhook(path, 200)], payload, AbortSignal.timeout(5_000));
    expect(outcome).toMatchObject({ allowed: false, reason: expect.stringContaining(reason) });
    expect(Date.now() - startedAt).toBeLessThan(2_000);
  });

  it("runs in-process plugins, and fails closed when one throws, hangs or is not registered", async () => {
    const signal = AbortSignal.timeout(5_000);
    await expect(hooks.preToolUse([plugin("no-rm")], payload, signal)).resolves.toEqual({ allowed: false, reason: 'denied by hook plugin "no-rm": rm is not allowed' });
    await expect(hooks.preToolUse([plugin("throws")], payload, signal)).resolves.toMatchObject({ allowed: false, reason: expect.stringContaining("plugin bug") });
    await expect(hooks.preToolUse([plugin("hangs")], payload, signal)).resolves.toMatchObject({ allowed: false, reason: expect.stringContaining("timed out") });
    await expect(hooks.preToolUse([plugin("missing")], payload, signal)).resolves.toMatchObject({ allowed: false, reason: expect.stringContaining("is not registered") });
  });

  it("lets post_tool_use rewrite a result", async () => {
    const rewritten = await hooks.postToolUse([webhook("/allow"), webhook("/redact")], { ...payload, event: "post_tool_use" }, result, AbortSignal.timeout(5_000));
    expect(rewritten).toEqual({ ...result, output: "secret=[redacted]" });
  });

  it.each([
    ["errors", "/error", 2_000],
    ["times out", "/slow", 100],
  ])("withholds the tool's output when a post_tool_use webhook %s (fail closed)", async (_, path, timeoutMs) => {
    // The redacting hook comes after the failing one: the raw output must not get past the failure.
    const withheld = await hooks.postToolUse([webhook(path, timeoutMs), webhook("/redact")], { ...payload, event: "post_tool_use" }, result, AbortSignal.timeout(5_000));
    expect(withheld).toMatchObject({ callId: result.callId, toolName: result.toolName, success: false, output: "", resultJson: "" });
    expect(withheld.error).toContain("output is withheld");
    expect(JSON.stringify(withheld)).not.toContain("secret");
  });

  it("logs a failing on_finish hook and goes on", async () => {
    await expect(hooks.notify([webhook("/slow", 100), webhook("/allow")], { ...payload, event: "on_finish" }, AbortSignal.timeout(5_000))).resolves.toBeUndefined();
  });

  it("refuses two plugins under one name", () => {
    expect(() => createHookRegistry().register("a", () => undefined).register("a", () => undefined)).toThrow("already registered");
  });
});
