// An orchestrator plugin, loaded with ORCHESTRATOR_PLUGINS=configs/plugins/example-plugin.cjs:
// an in-process hook, an in-process tool and an agent type that uses both. A plugin module is
// CommonJS or ESM and exports `register`, called once at start (see
// services/orchestrator/src/plugins/plugin-modules.ts for the types).
"use strict";

exports.register = ({ hooks, tools, agentTypes }) => {
  // pre_tool_use: return nothing to allow, { decision: "deny", reason } to refuse, or
  // { decision: "rewrite", argumentsJson } to change the call. A hook that throws denies.
  hooks.register("no-dotenv", ({ toolCall }) =>
    /\.env\b/.test(toolCall?.argumentsJson ?? "") ? { decision: "deny", reason: ".env files hold secrets" } : undefined,
  );

  tools.registerTool(
    {
      name: "word_count",
      description: "Counts the words of a text.",
      parametersJsonSchema: JSON.stringify({ type: "object", properties: { text: { type: "string" } }, required: ["text"] }),
    },
    async (args) => ({ success: true, output: String(String(args.text ?? "").split(/\s+/).filter(Boolean).length) }),
    { agentTypes: ["counter"] },
  );

  // Tool-runner permissions are borrowed from a type of agents.yaml (toolAgentType); this one
  // uses no tool-runner tool at all (tools: []), only the plugin's.
  agentTypes.register({
    name: "counter",
    description: "Counts words with an in-process tool; never reads .env files.",
    maxIterations: 2,
    toolAgentType: "explore",
    tools: [],
    hooks: { pre_tool_use: [{ kind: "plugin", plugin: "no-dotenv", timeoutMs: undefined }], post_tool_use: [], on_iteration: [], on_finish: [] },
  });
};
