import { parseAgentScript } from "./agent-script";
import { chatBody, rawRequest, ssePayloads } from "./raw-http-client";
import { VllmSimulator } from "./simulator";

describe("parseAgentScript", () => {
  it("reads steps joined by ' then ': calls (parallel ones joined by ' and '), answer and answer TEXT", () => {
    expect(parseAgentScript('call read_file {"path":"a.txt"} then call a {} and call b then answer then answer All done.')).toEqual([
      { kind: "call", calls: [{ name: "read_file", argumentsJson: '{"path":"a.txt"}' }] },
      {
        kind: "call",
        calls: [
          { name: "a", argumentsJson: "{}" },
          { name: "b", argumentsJson: "{}" },
        ],
      },
      { kind: "answer", text: undefined },
      { kind: "answer", text: "All done." },
    ]);
  });

  it("does not split on a 'then' inside a call's JSON, nor on words that merely start with it", () => {
    expect(parseAgentScript('call search {"q":"if x then y"} then answer thenceforth and so on')).toEqual([
      { kind: "call", calls: [{ name: "search", argumentsJson: '{"q":"if x then y"}' }] },
      { kind: "answer", text: "thenceforth and so on" },
    ]);
  });

  it("reads a single call as a one-step script, as the simulator always did", () => {
    expect(parseAgentScript('call get_weather {"city":"Paris"}')).toEqual([{ kind: "call", calls: [{ name: "get_weather", argumentsJson: '{"city":"Paris"}' }] }]);
  });

  it.each(["hello there", "answers are here", "call a then", "call a then hello", "then call a", "call a {} then then answer", 'call f {"open": 1 then answer'])(
    "gives undefined for anything else: %j",
    (text) => {
      expect(parseAgentScript(text)).toBeUndefined();
    },
  );
});

interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

interface Completion {
  choices: Array<{ message: { role: string; content: string | null; tool_calls: ToolCall[] }; finish_reason: string }>;
  usage: { completion_tokens: number };
}

type Message = { role: "user" | "assistant" | "tool" | "system"; content: string | null; tool_calls?: ToolCall[]; tool_call_id?: string; name?: string };

const tools = ["read_file", "search_code", "get_weather", "get_time"].map((name) => ({ type: "function", function: { name, parameters: { type: "object" } } }));

describe("the simulator plays agent scripts over several requests", () => {
  const simulator = new VllmSimulator({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1 });
  let url: string;

  beforeAll(async () => {
    ({ url } = await simulator.listen(0));
  });

  afterAll(async () => {
    await simulator.close();
  });

  afterEach(() => {
    simulator.configure({ timeToFirstTokenMs: 1, interTokenLatencyMs: 1 });
  });

  async function complete(messages: Message[], extra: Record<string, unknown> = {}): Promise<Completion> {
    const exchange = await rawRequest(url, "/v1/chat/completions", { body: { model: "vlinders-sim-chat", messages, tools, stream: false, ...extra } });
    expect(exchange).toMatchObject({ status: 200, ending: "end" });
    return JSON.parse(exchange.body) as Completion;
  }

  /** What an agent loop sends back after a tool-call turn: the assistant's calls, then one result each. */
  function feedBack(completion: Completion, results: (call: ToolCall) => string): Message[] {
    const calls = completion.choices[0]?.message.tool_calls ?? [];
    return [
      { role: "assistant", content: null, tool_calls: calls },
      ...calls.map((call): Message => ({ role: "tool", content: results(call), tool_call_id: call.id })),
    ];
  }

  const fileContent = "export const answer = 42;\n".repeat(20);
  const toolResult = (call: ToolCall) => (call.function.name === "read_file" ? fileContent : `matches for ${call.function.arguments}`);

  it("plays a 3-step script one step per request, then answers from the tool results", async () => {
    const messages: Message[] = [
      { role: "system", content: "You are a coding agent." },
      { role: "user", content: 'call read_file {"path":"a.txt"} then call search_code {"query":"answer"} then answer' },
    ];

    const first = await complete(messages);
    expect(first.choices[0]).toMatchObject({
      finish_reason: "tool_calls",
      message: { content: null, tool_calls: [{ type: "function", function: { name: "read_file", arguments: '{"path":"a.txt"}' } }] },
    });
    messages.push(...feedBack(first, toolResult));

    const second = await complete(messages);
    expect(second.choices[0]).toMatchObject({
      finish_reason: "tool_calls",
      message: { tool_calls: [{ function: { name: "search_code", arguments: '{"query":"answer"}' } }] },
    });
    messages.push(...feedBack(second, toolResult));

    const third = await complete(messages);
    expect(third.choices[0]?.finish_reason).toBe("stop");
    expect(third.choices[0]?.message.tool_calls).toEqual([]);
    expect(third.choices[0]?.message.content).toBe(
      `Based on read_file: ${fileContent.slice(0, 200)}\nBased on search_code: matches for {"query":"answer"}`,
    );
  });

  it("answers from the results, named by the tool message or by the call it answers, each cut to 200 characters", async () => {
    const content = "A".repeat(150) + " " + "B".repeat(100);
    const completion = await complete([
      { role: "user", content: 'call read_file {"path":"big.txt"}' },
      { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "read_file", arguments: '{"path":"big.txt"}' } }] },
      { role: "tool", content, tool_call_id: "call_1" },
    ]);
    expect(completion.choices[0]?.message.content).toBe(`Based on read_file: ${content.slice(0, 200)}`);
    expect(completion.choices[0]?.message.content).not.toContain("B".repeat(50));

    const named = await complete([
      { role: "user", content: "call lookup" },
      { role: "assistant", content: null, tool_calls: [{ id: "call_2", type: "function", function: { name: "lookup", arguments: "{}" } }] },
      { role: "tool", content: "found it", tool_call_id: "call_2", name: "lookup_v2" },
    ]);
    expect(named.choices[0]?.message.content).toBe("Based on lookup_v2: found it");
  });

  it("counts only the tool-call turns after the last user message", async () => {
    const earlier: Message[] = [
      { role: "user", content: "call read_file" },
      { role: "assistant", content: null, tool_calls: [{ id: "old", type: "function", function: { name: "read_file", arguments: "{}" } }] },
      { role: "tool", content: "old content", tool_call_id: "old" },
      { role: "assistant", content: "Based on read_file: old content" },
    ];
    const completion = await complete([...earlier, { role: "user", content: 'call get_time {"tz":"CET"}' }]);
    expect(completion.choices[0]?.message.tool_calls.map((call) => call.function.name)).toEqual(["get_time"]);
  });

  it("makes parallel calls in one step, then answers from all their results", async () => {
    const messages: Message[] = [{ role: "user", content: 'call get_weather {"city":"Paris"} and call get_time {"tz":"CET"} then answer' }];
    const first = await complete(messages);
    expect(first.choices[0]?.message.tool_calls.map((call) => [call.function.name, call.function.arguments])).toEqual([
      ["get_weather", '{"city":"Paris"}'],
      ["get_time", '{"tz":"CET"}'],
    ]);
    messages.push(...feedBack(first, (call) => `${call.function.name} result`));
    const second = await complete(messages);
    expect(second.choices[0]?.message.content).toBe("Based on get_weather: get_weather result\nBased on get_time: get_time result");
  });

  it("echoes TEXT for `answer TEXT`, as the first step or after calls", async () => {
    expect((await complete([{ role: "user", content: "answer The build is green." }])).choices[0]?.message.content).toBe("The build is green.");

    const messages: Message[] = [{ role: "user", content: "call read_file then answer I read it." }];
    messages.push(...feedBack(await complete(messages), toolResult));
    const completion = await complete(messages);
    expect(completion.choices[0]).toMatchObject({ finish_reason: "stop", message: { content: "I read it.", tool_calls: [] } });
  });

  it("passes malformed JSON arguments through unvalidated, at any step", async () => {
    const messages: Message[] = [{ role: "user", content: 'call read_file {"path": "a.txt",} then call search_code {"query": nope} then answer' }];
    const first = await complete(messages);
    expect(first.choices[0]?.message.tool_calls[0]?.function.arguments).toBe('{"path": "a.txt",}');
    messages.push(...feedBack(first, toolResult));
    const second = await complete(messages);
    expect(second.choices[0]?.message.tool_calls[0]?.function.arguments).toBe('{"query": nope}');
  });

  it("keeps the single call of old on the first turn, streamed, and answers from its result on the next", async () => {
    const first = await rawRequest(url, "/v1/chat/completions", { body: chatBody('call get_weather {"city":"Paris"}', { tools }) });
    const payloads = ssePayloads(first.body);
    expect(payloads.filter((payload) => payload.includes('"tool_calls"')).length).toBeGreaterThan(1);
    expect(payloads.at(-2)).toContain('"finish_reason":"tool_calls"');
    const id = /"id":"(chatcmpl-tool-[0-9a-f]{32})"/.exec(first.body)?.[1] ?? "";

    const second = await complete([
      { role: "user", content: 'call get_weather {"city":"Paris"}' },
      { role: "assistant", content: null, tool_calls: [{ id, type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }] },
      { role: "tool", content: '{"temperature_c":14}', tool_call_id: id },
    ]);
    expect(second.choices[0]).toMatchObject({ finish_reason: "stop", message: { content: 'Based on get_weather: {"temperature_c":14}', tool_calls: [] } });
  });

  it("keeps echoing a script when the request offers no tools", async () => {
    const completion = await complete([{ role: "user", content: "call read_file then answer done" }], { tools: undefined });
    expect(completion.choices[0]?.message.content).toBe("call read_file then answer done");
  });

  it("paces an answer like an echo: streamed token by token at the inter-token latency, cut by max_tokens", async () => {
    simulator.configure({ timeToFirstTokenMs: 1, interTokenLatencyMs: 30 });
    const arrivals: number[] = [];
    const exchange = await rawRequest(url, "/v1/chat/completions", {
      body: chatBody("answer one two three four five", { tools, max_tokens: 4, stream_options: { include_usage: true } }),
      onData: () => arrivals.push(performance.now()),
    });
    const chunks = ssePayloads(exchange.body)
      .slice(0, -1)
      .map((payload) => JSON.parse(payload) as { choices: Array<{ delta: { content?: string }; finish_reason: string | null }>; usage?: { completion_tokens: number } });
    expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? null)).toEqual(["", "one", " two", " three", " four", "", null]);
    expect(chunks.at(-2)?.choices[0]?.finish_reason).toBe("length");
    expect(chunks.at(-1)?.usage?.completion_tokens).toBe(4);
    // Three gaps of 30 ms between the four tokens at least.
    expect((arrivals.at(-1) ?? 0) - (arrivals[0] ?? 0)).toBeGreaterThan(60);
  });
});
