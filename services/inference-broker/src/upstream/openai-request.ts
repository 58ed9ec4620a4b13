import type { ChatMessage, ChatRequest } from "@vlinders/proto";

/** The body of POST /v1/chat/completions for a ChatRequest, with the model already resolved. */
export function toChatCompletionBody(request: ChatRequest, modelId: string, stream: boolean): Record<string, unknown> {
  const sampling = request.sampling;
  const body: Record<string, unknown> = {
    model: modelId,
    messages: request.messages.map(toOpenAiMessage),
    stream,
  };
  if (stream) body.stream_options = { include_usage: true };
  if (request.tools.length > 0) {
    body.tools = request.tools.map((tool) => ({
      type: "function",
      function: {
        name: tool.name,
        ...(tool.description ? { description: tool.description } : {}),
        parameters: tool.parametersJsonSchema ? (JSON.parse(tool.parametersJsonSchema) as unknown) : { type: "object", properties: {} },
      },
    }));
  }
  if (sampling?.maxTokens !== undefined) body.max_tokens = sampling.maxTokens;
  if (sampling?.temperature !== undefined) body.temperature = sampling.temperature;
  if (sampling?.topP !== undefined) body.top_p = sampling.topP;
  if (sampling && sampling.stop.length > 0) body.stop = sampling.stop;
  if (sampling?.seed !== undefined) body.seed = sampling.seed;
  if (request.userId) body.user = request.userId;
  return body;
}

function toOpenAiMessage(message: ChatMessage): Record<string, unknown> {
  const out: Record<string, unknown> = { role: message.role, content: message.content };
  if (message.toolCalls.length > 0) {
    // OpenAI's schema wants null content on an assistant message that only calls tools.
    if (message.content === "") out.content = null;
    out.tool_calls = message.toolCalls.map((call) => ({
      id: call.id,
      type: "function",
      function: { name: call.name, arguments: call.argumentsJson },
    }));
  }
  if (message.toolCallId) out.tool_call_id = message.toolCallId;
  if (message.name) out.name = message.name;
  return out;
}
