import { parseToolCallInstructions, toolCallDeltas } from "./tool-calls";

describe("parseToolCallInstructions", () => {
  it("reads one call, keeping its JSON exactly as written", () => {
    expect(parseToolCallInstructions('call get_weather {"city": "Paris", "unit": "celsius"}')).toEqual([
      { name: "get_weather", argumentsJson: '{"city": "Paris", "unit": "celsius"}' },
    ]);
  });

  it("gives {} to a call without arguments", () => {
    expect(parseToolCallInstructions("  call ping  ")).toEqual([{ name: "ping", argumentsJson: "{}" }]);
  });

  it("reads calls separated by ' and ' or line breaks, even when an argument says 'and' or holds braces", () => {
    const text = 'call get_weather {"city":"Paris and Rome"} and call get_time {"tz":"CET","note":"}{"}\ncall ping\n\ncall search.web {"q":{"nested":[1,2]}}';
    expect(parseToolCallInstructions(text)).toEqual([
      { name: "get_weather", argumentsJson: '{"city":"Paris and Rome"}' },
      { name: "get_time", argumentsJson: '{"tz":"CET","note":"}{"}' },
      { name: "ping", argumentsJson: "{}" },
      { name: "search.web", argumentsJson: '{"q":{"nested":[1,2]}}' },
    ]);
  });

  it("reads an escaped quote inside a string", () => {
    expect(parseToolCallInstructions('call say {"text":"a \\"quoted\\" }"}')).toEqual([{ name: "say", argumentsJson: '{"text":"a \\"quoted\\" }"}' }]);
  });

  it.each([
    "hello there",
    "please call get_weather",
    "call",
    "call 9lives",
    'call f {"open": 1',
    "call a {} call b {}",
    "call a {} andcall b",
    "call a {} and",
    "call a trailing words",
    // Steps of a script are read by parseAgentScript, not here.
    "call a then call b",
  ])("gives undefined for anything else: %j", (text) => {
    expect(parseToolCallInstructions(text)).toBeUndefined();
  });
});

describe("toolCallDeltas", () => {
  const calls = [
    { id: "chatcmpl-tool-aaaa", name: "get_weather", argumentsJson: '{"city":"Paris","unit":"celsius"}' },
    { id: "chatcmpl-tool-bbbb", name: "get_time", argumentsJson: '{"tz":"CET"}' },
  ];

  it("streams each call as a header then argument fragments, in the current vLLM style", () => {
    const deltas = toolCallDeltas(calls.slice(0, 1), "current", false);
    expect(deltas[0]).toBe('{"tool_calls":[{"id":"chatcmpl-tool-aaaa","type":"function","index":0,"function":{"name":"get_weather","arguments":""}}]}');
    expect(deltas.slice(1)).toEqual(['{"city":', '"Paris",', '"unit":"', 'celsius"', "}"].map((fragment) => `{"tool_calls":[{"index":0,"function":{"arguments":${JSON.stringify(fragment)}}}]}`));
  });

  it("repeats id, type and name as null on continuation chunks in the legacy style", () => {
    const deltas = toolCallDeltas(calls.slice(1), "legacy", false);
    expect(deltas).toEqual([
      '{"tool_calls":[{"id":"chatcmpl-tool-bbbb","type":"function","index":0,"function":{"name":"get_time","arguments":""}}]}',
      '{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"{\\"tz\\":\\"C"}}]}',
      '{"tool_calls":[{"index":0,"id":null,"type":"function","function":{"name":null,"arguments":"ET\\"}"}}]}',
    ]);
  });

  const indexOf = (delta: string) => (JSON.parse(delta) as { tool_calls: Array<{ index: number }> }).tool_calls[0]?.index;

  it("numbers parallel calls 0, 1, … and sends them one after the other", () => {
    expect(toolCallDeltas(calls, "current", false).map(indexOf)).toEqual([0, 0, 0, 0, 0, 0, 1, 1, 1]);
  });

  it("takes turns between parallel calls when interleaving", () => {
    expect(toolCallDeltas(calls, "current", true).map(indexOf)).toEqual([0, 1, 0, 1, 0, 1, 0, 0, 0]);
  });
});
