import { ChatRequest } from "@vlinders/proto";
import { toChatCompletionBody } from "./openai-request";

const weatherSchema = {
  type: "object",
  properties: { city: { type: "string", description: "City name" } },
  required: ["city"],
};

function request(partial: Parameters<typeof ChatRequest.fromPartial>[0] = {}): ChatRequest {
  return ChatRequest.fromPartial({ messages: [{ role: "user", content: "Hello" }], ...partial });
}

describe("toChatCompletionBody", () => {
  it("sends the resolved model, the messages and nothing unset", () => {
    expect(toChatCompletionBody(request({ model: "chat" }), "Qwen/Qwen2.5-Coder-32B-Instruct", false)).toEqual({
      model: "Qwen/Qwen2.5-Coder-32B-Instruct",
      messages: [{ role: "user", content: "Hello" }],
      stream: false,
    });
  });

  it("asks for usage in the stream only when streaming", () => {
    const streamed = toChatCompletionBody(request(), "m", true);
    expect(streamed.stream).toBe(true);
    expect(streamed.stream_options).toEqual({ include_usage: true });
    expect(toChatCompletionBody(request(), "m", false)).not.toHaveProperty("stream_options");
  });

  it("maps tools to OpenAI function tools with the parsed JSON schema as parameters", () => {
    const body = toChatCompletionBody(
      request({
        tools: [
          { name: "get_weather", description: "Current weather for a city", parametersJsonSchema: JSON.stringify(weatherSchema) },
          { name: "list_files", description: "", parametersJsonSchema: "" },
        ],
      }),
      "m",
      true,
    );
    expect(body.tools).toEqual([
      { type: "function", function: { name: "get_weather", description: "Current weather for a city", parameters: weatherSchema } },
      // No description key at all, and an empty object schema when none was given.
      { type: "function", function: { name: "list_files", parameters: { type: "object", properties: {} } } },
    ]);
  });

  it("sends no tools key when there are no tools", () => {
    expect(toChatCompletionBody(request(), "m", true)).not.toHaveProperty("tools");
  });

  it("sends null content, and the tool calls, for an assistant message that only calls tools", () => {
    const body = toChatCompletionBody(
      request({
        messages: [
          { role: "user", content: "Weather in Ghent?" },
          { role: "assistant", content: "", toolCalls: [{ id: "call_1", name: "get_weather", argumentsJson: '{"city":"Ghent"}' }] },
          { role: "tool", content: '{"temperature_c":14}', toolCallId: "call_1", name: "get_weather" },
        ],
      }),
      "m",
      false,
    );
    expect(body.messages).toEqual([
      { role: "user", content: "Weather in Ghent?" },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Ghent"}' } }],
      },
      { role: "tool", content: '{"temperature_c":14}', tool_call_id: "call_1", name: "get_weather" },
    ]);
  });

  it("keeps the text of an assistant message that also calls tools", () => {
    const body = toChatCompletionBody(
      request({
        messages: [{ role: "assistant", content: "Let me check.", toolCalls: [{ id: "call_1", name: "get_weather", argumentsJson: "{}" }] }],
      }),
      "m",
      false,
    );
    expect(body.messages).toEqual([
      {
        role: "assistant",
        content: "Let me check.",
        tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: "{}" } }],
      },
    ]);
  });

  it("keeps an empty string as the content of a message without tool calls", () => {
    const body = toChatCompletionBody(request({ messages: [{ role: "assistant", content: "" }] }), "m", false);
    expect(body.messages).toEqual([{ role: "assistant", content: "" }]);
  });

  it("maps every sampling field that is set", () => {
    const body = toChatCompletionBody(
      request({ sampling: { maxTokens: 256, temperature: 0.7, topP: 0.9, stop: ["</answer>", "\n\n"], seed: 42 } }),
      "m",
      false,
    );
    expect(body).toMatchObject({ max_tokens: 256, temperature: 0.7, top_p: 0.9, stop: ["</answer>", "\n\n"], seed: 42 });
  });

  it("sends zero values that were set (temperature 0 is greedy decoding, seed 0 is a seed)", () => {
    const body = toChatCompletionBody(request({ sampling: { temperature: 0, seed: 0 } }), "m", false);
    expect(body.temperature).toBe(0);
    expect(body.seed).toBe(0);
  });

  it("sends no sampling field that is unset, and no empty stop list", () => {
    for (const sampling of [undefined, {}, { stop: [] }]) {
      const body = toChatCompletionBody(request({ sampling }), "m", false);
      for (const key of ["max_tokens", "temperature", "top_p", "stop", "seed"]) expect(body).not.toHaveProperty(key);
    }
  });

  it("sends the user id as user, and no user key without one", () => {
    expect(toChatCompletionBody(request({ userId: "user-123" }), "m", false).user).toBe("user-123");
    expect(toChatCompletionBody(request({ userId: "" }), "m", false)).not.toHaveProperty("user");
  });

  it("does not send the session id to the worker", () => {
    expect(JSON.stringify(toChatCompletionBody(request({ sessionId: "session-9" }), "m", false))).not.toContain("session-9");
  });
});
