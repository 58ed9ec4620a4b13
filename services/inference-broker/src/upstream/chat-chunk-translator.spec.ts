import { FinishReason, type ChatEvent } from "@vlinders/proto";
import { ServerError, Status } from "nice-grpc-common";
import {
  ChatChunkTranslator,
  apiKeyRejectedError,
  maxWorkerMessageCharacters,
  statusForWorkerErrorCode,
  toFinishReason,
  toUsage,
  type ChatCompletionChunk,
} from "./chat-chunk-translator";

// The envelope vLLM puts around every streamed delta.
function vllmChunk(delta: object, finishReason: string | null = null): ChatCompletionChunk {
  return JSON.parse(
    JSON.stringify({
      id: "chatcmpl-9f1c2b",
      object: "chat.completion.chunk",
      created: 1_735_000_000,
      model: "Qwen/Qwen2.5-Coder-32B-Instruct",
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason, stop_reason: null }],
    }),
  ) as ChatCompletionChunk;
}

function parse(json: string): ChatCompletionChunk {
  return JSON.parse(json) as ChatCompletionChunk;
}

function translateAll(translator: ChatChunkTranslator, chunks: readonly ChatCompletionChunk[]): ChatEvent[] {
  return chunks.flatMap((chunk) => translator.translate(chunk));
}

function caught(run: () => unknown): unknown {
  try {
    run();
  } catch (error: unknown) {
    return error;
  }
  throw new Error("expected the call to throw");
}

function expectServerError(error: unknown, code: Status): ServerError {
  expect(error).toBeInstanceOf(ServerError);
  const serverError = error as ServerError;
  expect(Status[serverError.code]).toBe(Status[code]);
  return serverError;
}

describe("ChatChunkTranslator", () => {
  describe("content", () => {
    it("produces no event for vLLM's role-only first chunk", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      expect(translator.translate(vllmChunk({ role: "assistant", content: "" }))).toEqual([]);
    });

    it("turns each content delta into a contentDelta event", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const events = translateAll(translator, [
        vllmChunk({ role: "assistant", content: "" }),
        vllmChunk({ content: "Hello" }),
        vllmChunk({ content: ", wor" }),
        vllmChunk({ content: "ld 🦋" }),
      ]);
      expect(events).toEqual([
        { event: { $case: "contentDelta", value: "Hello" }, model: "" },
        { event: { $case: "contentDelta", value: ", wor" }, model: "" },
        { event: { $case: "contentDelta", value: "ld 🦋" }, model: "" },
      ]);
    });

    it("produces no event for a null content or a reasoning-only delta", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      expect(translator.translate(vllmChunk({ content: null }))).toEqual([]);
      expect(translator.translate(vllmChunk({ reasoning_content: "Let me think" }))).toEqual([]);
    });

    it("sends the content of a chunk before its finish reason", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      expect(translator.translate(vllmChunk({ content: "." }, "stop"))).toEqual([
        { event: { $case: "contentDelta", value: "." }, model: "" },
        { event: { $case: "finishReason", value: FinishReason.FINISH_REASON_STOP }, model: "" },
      ]);
    });

    it("uses only the choice with index 0", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const chunk = parse(
        '{"choices":[{"index":1,"delta":{"content":"other"},"finish_reason":null},{"index":0,"delta":{"content":"first"},"finish_reason":null}]}',
      );
      expect(translator.translate(chunk)).toEqual([{ event: { $case: "contentDelta", value: "first" }, model: "" }]);
    });
  });

  describe("tool calls", () => {
    it("accumulates fragments by index when continuations carry \"id\":null,\"type\":\"function\" (older vLLM)", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const events = translateAll(translator, [
        vllmChunk({ role: "assistant", content: "" }),
        parse(
          '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"chatcmpl-tool-1a2b","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}',
        ),
        parse(
          '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"{\\"city\\": "}}]},"finish_reason":null}]}',
        ),
        parse(
          '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"arguments":"\\"Ghent\\"}"}}]},"finish_reason":null}]}',
        ),
        parse('{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}'),
      ]);
      expect(events).toEqual([
        { event: { $case: "toolCallDelta", value: { index: 0, id: "chatcmpl-tool-1a2b", name: "get_weather", argumentsJsonDelta: "" } }, model: "" },
        { event: { $case: "toolCallDelta", value: { index: 0, id: "", name: "", argumentsJsonDelta: '{"city": ' } }, model: "" },
        { event: { $case: "toolCallDelta", value: { index: 0, id: "", name: "", argumentsJsonDelta: '"Ghent"}' } }, model: "" },
        { event: { $case: "finishReason", value: FinishReason.FINISH_REASON_TOOL_CALLS }, model: "" },
      ]);
      expect(translator.completedToolCalls()).toEqual([
        { index: 0, id: "chatcmpl-tool-1a2b", name: "get_weather", arguments: '{"city": "Ghent"}' },
      ]);
    });

    it("accumulates fragments by index when continuations omit id and type (current vLLM)", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const events = translateAll(translator, [
        parse(
          '{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-77","type":"function","index":0,"function":{"name":"search_code"}}]},"finish_reason":null}]}',
        ),
        parse('{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"query\\": \\"Abort"}}]},"finish_reason":null}]}'),
        parse('{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"Signal\\"}"}}]},"finish_reason":null}]}'),
      ]);
      expect(events.map((event) => event.event)).toEqual([
        { $case: "toolCallDelta", value: { index: 0, id: "chatcmpl-tool-77", name: "search_code", argumentsJsonDelta: "" } },
        { $case: "toolCallDelta", value: { index: 0, id: "", name: "", argumentsJsonDelta: '{"query": "Abort' } },
        { $case: "toolCallDelta", value: { index: 0, id: "", name: "", argumentsJsonDelta: 'Signal"}' } },
      ]);
      expect(translator.completedToolCalls()).toEqual([
        { index: 0, id: "chatcmpl-tool-77", name: "search_code", arguments: '{"query": "AbortSignal"}' },
      ]);
      expect(JSON.parse(translator.completedToolCalls()[0]?.arguments ?? "")).toEqual({ query: "AbortSignal" });
    });

    it("emits the id and name only once per index when the server repeats them on every chunk", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const fragment = (args: string) =>
        vllmChunk({ tool_calls: [{ index: 0, id: "call_abc", type: "function", function: { name: "read_file", arguments: args } }] });
      const events = translateAll(translator, [fragment('{"path":'), fragment(' "README.md"'), fragment("}")]);
      expect(events.map((event) => event.event)).toEqual([
        { $case: "toolCallDelta", value: { index: 0, id: "call_abc", name: "read_file", argumentsJsonDelta: '{"path":' } },
        { $case: "toolCallDelta", value: { index: 0, id: "", name: "", argumentsJsonDelta: ' "README.md"' } },
        { $case: "toolCallDelta", value: { index: 0, id: "", name: "", argumentsJsonDelta: "}" } },
      ]);
      expect(translator.completedToolCalls()).toEqual([{ index: 0, id: "call_abc", name: "read_file", arguments: '{"path": "README.md"}' }]);
    });

    it("produces no event for a repeated id and name with no new arguments", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const repeat = vllmChunk({ tool_calls: [{ index: 0, id: "call_abc", type: "function", function: { name: "read_file", arguments: "" } }] });
      expect(translator.translate(repeat)).toHaveLength(1);
      expect(translator.translate(repeat)).toEqual([]);
    });

    it("keeps parallel tool calls apart when their fragments interleave", () => {
      const translator = new ChatChunkTranslator("gpu-1");
      const events = translateAll(translator, [
        vllmChunk({ tool_calls: [{ index: 0, id: "call_0", type: "function", function: { name: "get_weather", arguments: "" } }] }),
        vllmChunk({ tool_calls: [{ index: 1, id: "call_1", type: "function", function: { name: "get_time", arguments: "" } }] }),
        vllmChunk({ tool_calls: [{ index: 0, function: { arguments: '{"city":' } }] }),
        vllmChunk({ tool_calls: [{ index: 1, function: { arguments: '{"zone":' } }] }),
        // One chunk may carry fragments of both calls.
        vllmChunk({
          tool_calls: [
            { index: 1, function: { arguments: '"Europe/Brussels"}' } },
            { index: 0, function: { arguments: '"Ghent"}' } },
          ],
        }),
        vllmChunk({}, "tool_calls"),
      ]);
      const deltas = events.flatMap((event) => (event.event?.$case === "toolCallDelta" ? [event.event.value] : []));
      expect(deltas.map((delta) => [delta.index, delta.id, delta.name, delta.argumentsJsonDelta])).toEqual([
        [0, "call_0", "get_weather", ""],
        [1, "call_1", "get_time", ""],
        [0, "", "", '{"city":'],
        [1, "", "", '{"zone":'],
        [1, "", "", '"Europe/Brussels"}'],
        [0, "", "", '"Ghent"}'],
      ]);
      expect(translator.completedToolCalls()).toEqual([
        { index: 0, id: "call_0", name: "get_weather", arguments: '{"city":"Ghent"}' },
        { index: 1, id: "call_1", name: "get_time", arguments: '{"zone":"Europe/Brussels"}' },
      ]);
    });

    it("lists completed tool calls by index even when index 1 starts first", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      translateAll(translator, [
        vllmChunk({ tool_calls: [{ index: 1, id: "call_b", function: { name: "b", arguments: "{}" } }] }),
        vllmChunk({ tool_calls: [{ index: 0, id: "call_a", function: { name: "a", arguments: "{}" } }] }),
      ]);
      expect(translator.completedToolCalls().map((call) => call.index)).toEqual([0, 1]);
    });

    it("has no completed tool calls for a plain text answer", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      translateAll(translator, [vllmChunk({ content: "hi" }), vllmChunk({}, "stop")]);
      expect(translator.completedToolCalls()).toEqual([]);
    });
  });

  describe("finish and usage", () => {
    it.each([
      ["stop", FinishReason.FINISH_REASON_STOP],
      ["length", FinishReason.FINISH_REASON_LENGTH],
      ["tool_calls", FinishReason.FINISH_REASON_TOOL_CALLS],
      ["abort", FinishReason.FINISH_REASON_ABORT],
      ["content_filter", FinishReason.FINISH_REASON_CONTENT_FILTER],
      ["something_new", FinishReason.FINISH_REASON_UNSPECIFIED],
    ])('translates finish_reason "%s"', (reason, expected) => {
      const translator = new ChatChunkTranslator("gpu-0");
      expect(translator.sawFinish).toBe(false);
      expect(translator.translate(vllmChunk({}, reason))).toEqual([{ event: { $case: "finishReason", value: expected }, model: "" }]);
      expect(translator.sawFinish).toBe(true);
    });

    it("does not count a null finish_reason as a finish", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      translator.translate(vllmChunk({ content: "x" }, null));
      expect(translator.sawFinish).toBe(false);
    });

    it("keeps the usage of the final chunk with empty choices, and produces no event for it", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      translator.translate(vllmChunk({ content: "hi" }, "stop"));
      expect(translator.takeUsage()).toBeUndefined();
      const usageChunk = parse(
        '{"id":"chatcmpl-9f1c2b","object":"chat.completion.chunk","created":1735000000,"model":"m","choices":[],"usage":{"prompt_tokens":1200,"total_tokens":1242,"completion_tokens":42,"prompt_tokens_details":{"cached_tokens":1024}}}',
      );
      expect(translator.translate(usageChunk)).toEqual([]);
      expect(translator.takeUsage()).toEqual({ promptTokens: 1200, completionTokens: 42, totalTokens: 1242, cachedPromptTokens: 1024 });
    });

    it("reads prompt_tokens_details: null as no cached tokens", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      translator.translate(parse('{"choices":[],"usage":{"prompt_tokens":10,"total_tokens":15,"completion_tokens":5,"prompt_tokens_details":null}}'));
      expect(translator.takeUsage()).toEqual({ promptTokens: 10, completionTokens: 5, totalTokens: 15, cachedPromptTokens: 0 });
    });

    it("keeps the latest usage when every chunk carries one (continuous usage stats)", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      translator.translate({ ...vllmChunk({ content: "a" }), usage: { prompt_tokens: 10, completion_tokens: 1, total_tokens: 11 } });
      translator.translate({ ...vllmChunk({ content: "b" }), usage: { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 } });
      expect(translator.takeUsage()?.completionTokens).toBe(2);
    });
  });

  describe("errors inside the stream", () => {
    it("throws INTERNAL naming the worker and the message for a 500 error chunk", () => {
      const translator = new ChatChunkTranslator("gpu-3");
      translator.translate(vllmChunk({ content: "partial" }));
      const error = expectServerError(
        caught(() =>
          translator.translate(parse('{"error":{"message":"CUDA out of memory","type":"InternalServerError","param":null,"code":500}}')),
        ),
        Status.INTERNAL,
      );
      expect(error.details).toBe("worker gpu-3 failed mid-stream: CUDA out of memory");
    });

    it("throws INVALID_ARGUMENT for an error chunk with code 400", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const error = expectServerError(
        caught(() =>
          translator.translate(
            parse(
              '{"error":{"message":"This model\'s maximum context length is 8192 tokens","type":"BadRequestError","param":null,"code":400}}',
            ),
          ),
        ),
        Status.INVALID_ARGUMENT,
      );
      expect(error.details).toContain("worker gpu-0");
      expect(error.details).toContain("maximum context length is 8192 tokens");
    });

    it("reads the error nested the way older vLLM nests it ({\"error\":{\"object\":\"error\",…}})", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const error = expectServerError(
        caught(() =>
          translator.translate(
            parse('{"error":{"object":"error","message":"bad grammar","type":"BadRequestError","param":null,"code":400}}'),
          ),
        ),
        Status.INVALID_ARGUMENT,
      );
      expect(error.details).toBe("worker gpu-0 failed mid-stream: bad grammar");
    });

    it('throws for the top-level {"object":"error","message":…} form', () => {
      const translator = new ChatChunkTranslator("gpu-2");
      const error = caught(() => translator.translate(parse('{"object":"error","message":"engine dead","type":"InternalServerError","code":500}')));
      expect(error).toBeInstanceOf(ServerError);
      expect((error as ServerError).details).toBe("worker gpu-2 failed mid-stream: engine dead");
    });

    it("throws for an error given as a bare string", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const error = expectServerError(caught(() => translator.translate(parse('{"error":"upstream closed"}'))), Status.INTERNAL);
      expect(error.details).toBe("worker gpu-0 failed mid-stream: upstream closed");
    });

    it("accepts a numeric code sent as a string", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      expectServerError(caught(() => translator.translate(parse('{"error":{"message":"slow down","code":"429"}}'))), Status.RESOURCE_EXHAUSTED);
    });

    it.each([
      ["null", '{"error":{"message":"boom","type":"server_error","param":null,"code":null}}'],
      ["missing", '{"error":{"message":"boom","type":"server_error"}}'],
      ["not numeric", '{"error":{"message":"boom","type":"server_error","code":"server_error"}}'],
      ["an empty string", '{"error":{"message":"boom","type":"server_error","code":""}}'],
    ])("throws INTERNAL when the code is %s", (_name, json) => {
      const translator = new ChatChunkTranslator("gpu-0");
      const error = expectServerError(caught(() => translator.translate(parse(json))), Status.INTERNAL);
      expect(error.details).toBe("worker gpu-0 failed mid-stream: boom");
    });

    it.each([
      ["401", 401],
      ["403", 403],
    ])("throws FAILED_PRECONDITION for an error chunk with code %s, without the worker's message, which may quote the key", (_name, code) => {
      const translator = new ChatChunkTranslator("gpu-4");
      const chunk = parse(`{"error":{"message":"Incorrect API key provided: sk-live-0123456789","type":"invalid_request_error","code":${code}}}`);
      const error = expectServerError(caught(() => translator.translate(chunk)), Status.FAILED_PRECONDITION);
      expect(error.details).toContain("worker gpu-4");
      expect(error.details).toContain("rejected the API key");
      expect(error.details).toContain("admin API");
      expect(error.details).not.toContain("sk-live");
      expect(error.details).not.toContain("Incorrect API key");
    });

    it('reads the code of the top-level {"object":"error",…} form', () => {
      const translator = new ChatChunkTranslator("gpu-2");
      const error = expectServerError(
        caught(() => translator.translate(parse('{"object":"error","message":"bad grammar","type":"BadRequestError","code":400}'))),
        Status.INVALID_ARGUMENT,
      );
      expect(error.details).toBe("worker gpu-2 failed mid-stream: bad grammar");
      expectServerError(caught(() => translator.translate(parse('{"object":"error","message":"no","code":401}'))), Status.FAILED_PRECONDITION);
    });

    it("cuts a long message, so that the status fits in a trailer", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const long = "x".repeat(100_000);
      const error = expectServerError(caught(() => translator.translate({ error: { message: long, code: 500 } })), Status.INTERNAL);
      expect(error.details.startsWith(`worker gpu-0 failed mid-stream: ${"x".repeat(maxWorkerMessageCharacters)}…`)).toBe(true);
      expect(error.details.length).toBeLessThan(maxWorkerMessageCharacters + 100);
    });

    it("says so when the error has no message", () => {
      const translator = new ChatChunkTranslator("gpu-0");
      const error = expectServerError(caught(() => translator.translate(parse('{"error":{"code":500}}'))), Status.INTERNAL);
      expect(error.details).toBe("worker gpu-0 failed mid-stream: unknown error");
    });
  });
});

describe("toFinishReason", () => {
  it("maps the OpenAI reasons, including the legacy function_call", () => {
    expect(toFinishReason("stop")).toBe(FinishReason.FINISH_REASON_STOP);
    expect(toFinishReason("function_call")).toBe(FinishReason.FINISH_REASON_TOOL_CALLS);
  });

  it("maps missing and unknown reasons to UNSPECIFIED", () => {
    expect(toFinishReason(null)).toBe(FinishReason.FINISH_REASON_UNSPECIFIED);
    expect(toFinishReason(undefined)).toBe(FinishReason.FINISH_REASON_UNSPECIFIED);
    expect(toFinishReason("")).toBe(FinishReason.FINISH_REASON_UNSPECIFIED);
    expect(toFinishReason("STOP")).toBe(FinishReason.FINISH_REASON_UNSPECIFIED);
    // An inherited property name must not be mistaken for a known reason.
    expect(toFinishReason("toString")).toBe(FinishReason.FINISH_REASON_UNSPECIFIED);
  });
});

describe("toUsage", () => {
  it("copies the counts and the cached prompt tokens", () => {
    expect(toUsage({ prompt_tokens: 100, completion_tokens: 20, total_tokens: 120, prompt_tokens_details: { cached_tokens: 64 } })).toEqual({
      promptTokens: 100,
      completionTokens: 20,
      totalTokens: 120,
      cachedPromptTokens: 64,
    });
  });

  it("adds prompt and completion tokens when total_tokens is missing", () => {
    expect(toUsage({ prompt_tokens: 7, completion_tokens: 3 }).totalTokens).toBe(10);
  });

  it("reads missing counts and a null cached_tokens as zero", () => {
    expect(toUsage({ prompt_tokens_details: { cached_tokens: null } })).toEqual({
      promptTokens: 0,
      completionTokens: 0,
      totalTokens: 0,
      cachedPromptTokens: 0,
    });
  });
});

describe("statusForWorkerErrorCode", () => {
  it.each([
    [400, "INVALID_ARGUMENT"],
    [422, "INVALID_ARGUMENT"],
    [413, "INVALID_ARGUMENT"],
    [404, "NOT_FOUND"],
    [429, "RESOURCE_EXHAUSTED"],
    // The broker's API key was refused: the operator must fix it, and the worker is not at fault.
    [401, "FAILED_PRECONDITION"],
    [403, "FAILED_PRECONDITION"],
    [500, "UNAVAILABLE"],
    [503, "UNAVAILABLE"],
    [418, "UNKNOWN"],
  ])("maps HTTP %d to %s", (code, status) => {
    expect(Status[statusForWorkerErrorCode(code)]).toBe(status);
  });
});

describe("apiKeyRejectedError", () => {
  it("names the worker and its provider, and says where the key is stored", () => {
    const error = apiKeyRejectedError({ id: "openai-0", provider: "openai" }, 401, true);
    expect(Status[error.code]).toBe("FAILED_PRECONDITION");
    expect(error.details).toBe(
      'worker openai-0: provider "openai" rejected the API key (HTTP 401); store or rotate it through the admin API (InferenceAdminService.StoreProviderKey or RotateProviderKey)',
    );
  });

  it("says that no key was sent when none was", () => {
    const error = apiKeyRejectedError({ id: "gpu-0" }, 403, false);
    expect(Status[error.code]).toBe("FAILED_PRECONDITION");
    expect(error.details).toContain("worker gpu-0 wants an API key (HTTP 403) and none was sent");
    expect(error.details).toContain("admin API");
  });
});
