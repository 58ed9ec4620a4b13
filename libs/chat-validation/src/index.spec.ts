import { ChatRequest } from "@vlinders/proto";
import { ServerError, Status } from "nice-grpc-common";
import { isChatRole, validateChatRequest, validateMessages, validateSampling, validateTools } from "./index";

type RequestInput = Parameters<typeof ChatRequest.fromPartial>[0];

const validRequest: RequestInput = {
  model: "coder",
  messages: [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Weather in Ghent?" },
    { role: "assistant", content: "", toolCalls: [{ id: "call_1", name: "get_weather", argumentsJson: '{"city":"Ghent"}' }] },
    { role: "tool", content: '{"temperature_c":14}', toolCallId: "call_1" },
  ],
  tools: [
    {
      name: "get_weather",
      description: "Current weather",
      parametersJsonSchema: '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}',
    },
    { name: "list-files_v2", description: "", parametersJsonSchema: "" },
  ],
  sampling: { maxTokens: 1, temperature: 2, topP: 1, stop: ["\n\n"], seed: 0 },
};

function request(overrides: RequestInput): ChatRequest {
  return ChatRequest.fromPartial({ ...validRequest, ...overrides });
}

/** The INVALID_ARGUMENT details a caller would see for the request. */
function rejection(value: ChatRequest): string {
  try {
    validateChatRequest(value);
  } catch (error: unknown) {
    expect(error).toBeInstanceOf(ServerError);
    expect(Status[(error as ServerError).code]).toBe("INVALID_ARGUMENT");
    return (error as ServerError).details;
  }
  throw new Error("expected the request to be rejected");
}

describe("validateChatRequest", () => {
  it("accepts a valid conversation with tool calls, tools and sampling at the edges of their ranges", () => {
    expect(() => validateChatRequest(request({}))).not.toThrow();
  });

  it("accepts a request with only a user message and no sampling", () => {
    expect(() => validateChatRequest(ChatRequest.fromPartial({ messages: [{ role: "user", content: "hi" }] }))).not.toThrow();
  });

  it("rejects an empty messages list", () => {
    expect(rejection(request({ messages: [] }))).toBe("messages: must not be empty");
  });

  it("rejects an unknown role, naming the message and the role", () => {
    expect(rejection(request({ messages: [{ role: "user", content: "a" }, { role: "developer", content: "b" }] }))).toBe(
      'messages[1].role: must be one of system, user, assistant, tool (got "developer")',
    );
  });

  it("rejects an empty role", () => {
    expect(rejection(request({ messages: [{ role: "", content: "a" }] }))).toMatch(/^messages\[0\]\.role: .*\(got ""\)$/);
  });

  it("shortens a very long role in the message", () => {
    const details = rejection(request({ messages: [{ role: "x".repeat(500), content: "a" }] }));
    expect(details).toContain(`"${"x".repeat(40)}…"`);
    expect(details.length).toBeLessThan(200);
  });

  it("rejects a tool message without tool_call_id", () => {
    expect(rejection(request({ messages: [{ role: "user", content: "a" }, { role: "tool", content: "42" }] }))).toBe(
      'messages[1].tool_call_id: is required for role "tool"',
    );
  });

  it("rejects tool calls on a message that is not from the assistant", () => {
    expect(
      rejection(request({ messages: [{ role: "user", content: "a", toolCalls: [{ id: "call_1", name: "get_weather", argumentsJson: "{}" }] }] })),
    ).toBe('messages[0].tool_calls: only assistant messages carry tool calls (role is "user")');
  });

  it("rejects a tool call without an id", () => {
    expect(rejection(request({ messages: [{ role: "assistant", toolCalls: [{ id: "", name: "get_weather" }] }] }))).toBe(
      "messages[0].tool_calls[0].id: must not be empty",
    );
  });

  it("rejects a tool call with a bad name", () => {
    expect(
      rejection(request({ messages: [{ role: "assistant", toolCalls: [{ id: "a", name: "ok" }, { id: "b", name: "get weather" }] }] })),
    ).toBe('messages[0].tool_calls[1].name: must match ^[A-Za-z0-9_-]{1,64}$ (got "get weather")');
  });

  it.each([
    ["a space", "get weather"],
    ["a dot", "fs.read"],
    ["nothing", ""],
    ["65 characters", "a".repeat(65)],
  ])("rejects a tool name with %s", (_case, name) => {
    expect(rejection(request({ tools: [{ name }] }))).toMatch(/^tools\[0\]\.name: must match /);
  });

  it("accepts a tool name of 64 characters", () => {
    expect(() => validateChatRequest(request({ tools: [{ name: "a".repeat(64) }] }))).not.toThrow();
  });

  it("rejects two tools with the same name, naming the second", () => {
    expect(rejection(request({ tools: [{ name: "search" }, { name: "read" }, { name: "search" }] }))).toBe(
      'tools[2].name: duplicates another tool named "search"',
    );
  });

  it("rejects a parameters schema that is not JSON", () => {
    expect(rejection(request({ tools: [{ name: "search", parametersJsonSchema: "{type: object}" }] }))).toBe(
      "tools[0].parameters_json_schema: is not valid JSON",
    );
  });

  it.each([
    ["an array", '[{"type":"object"}]'],
    ["null", "null"],
    ["a string", '"object"'],
    ["a number", "1"],
  ])("rejects a parameters schema that is %s", (_case, schema) => {
    expect(rejection(request({ tools: [{ name: "search", parametersJsonSchema: schema }] }))).toBe(
      "tools[0].parameters_json_schema: must be a JSON object (a JSON schema)",
    );
  });

  it.each([
    [-0.1, "-0.1"],
    [2.01, "2.01"],
    [Number.NaN, "NaN"],
  ])("rejects temperature %d", (temperature, shown) => {
    expect(rejection(request({ sampling: { temperature } }))).toBe(`sampling.temperature: must be between 0 and 2 (got ${shown})`);
  });

  it("accepts temperature 0", () => {
    expect(() => validateChatRequest(request({ sampling: { temperature: 0 } }))).not.toThrow();
  });

  it.each([0, -0.5, 1.5])("rejects top_p %d", (topP) => {
    expect(rejection(request({ sampling: { topP } }))).toBe(`sampling.top_p: must be in (0, 1] (got ${topP})`);
  });

  it.each([0, -1])("rejects max_tokens %d", (maxTokens) => {
    expect(rejection(request({ sampling: { maxTokens } }))).toBe("sampling.max_tokens: must be at least 1 when set");
  });

  it("rejects an empty stop sequence, naming its position", () => {
    expect(rejection(request({ sampling: { stop: ["END", ""] } }))).toBe("sampling.stop[1]: must not be empty");
  });

  it("rejects more than 16 stop sequences and accepts 16", () => {
    const stops = Array.from({ length: 17 }, (_, index) => `s${index}`);
    expect(rejection(request({ sampling: { stop: stops } }))).toBe("sampling.stop: at most 16 stop sequences (got 17)");
    expect(() => validateChatRequest(request({ sampling: { stop: stops.slice(0, 16) } }))).not.toThrow();
  });

  it("reports messages before tools, and tools before sampling", () => {
    const everythingWrong = request({
      messages: [{ role: "robot", content: "" }],
      tools: [{ name: "bad name" }],
      sampling: { topP: 0 },
    });
    expect(rejection(everythingWrong)).toMatch(/^messages\[0\]\.role: /);
    expect(rejection(request({ tools: [{ name: "bad name" }], sampling: { topP: 0 } }))).toMatch(/^tools\[0\]\.name: /);
  });
});

describe("the validators' field names", () => {
  it("use the caller's name for the messages, as RunAgentRequest's history does", () => {
    expect(() => validateMessages([{ role: "bot", content: "", toolCalls: [], toolCallId: "", name: "" }], "history")).toThrow(
      /history\[0\]\.role: /,
    );
  });

  it("use the caller's name for tools and sampling", () => {
    expect(() => validateTools([{ name: "", description: "", parametersJsonSchema: "" }], "agent.tools")).toThrow(/agent\.tools\[0\]\.name: /);
    expect(() => validateSampling({ stop: [""] }, "agent.sampling")).toThrow(/agent\.sampling\.stop\[0\]: /);
  });

  it("accept unset sampling", () => {
    expect(() => validateSampling(undefined)).not.toThrow();
  });
});

describe("isChatRole", () => {
  it("knows the four OpenAI roles and nothing else", () => {
    expect(["system", "user", "assistant", "tool"].every(isChatRole)).toBe(true);
    expect(["developer", "function", "User", ""].some(isChatRole)).toBe(false);
  });
});
