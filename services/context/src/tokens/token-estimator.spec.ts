import { defaultModelFamily, effectiveBudget, estimateMessageTokens, estimateTextTokens, modelFamilyOf } from "./token-estimator";

describe("token estimates per model family", () => {
  it("finds the family by name prefix, after an organisation's slash too, longest prefix first", () => {
    expect(modelFamilyOf("Qwen/Qwen2.5-Coder-32B-Instruct").name).toBe("qwen");
    expect(modelFamilyOf("meta-llama/Llama-3.1-8B-Instruct").name).toBe("llama");
    expect(modelFamilyOf("meta-llama/Llama-2-7b-chat-hf").name).toBe("llama-2");
    expect(modelFamilyOf("mistralai/Mistral-7B-Instruct-v0.3").name).toBe("mistral");
    expect(modelFamilyOf("gpt-4o-mini").name).toBe("gpt");
    expect(modelFamilyOf("vlinders-sim-chat")).toBe(defaultModelFamily);
    expect(modelFamilyOf("")).toBe(defaultModelFamily);
  });

  it("counts ASCII at the family's characters per token and other code points one each", () => {
    const gpt = modelFamilyOf("gpt-4o");
    expect(estimateTextTokens(gpt, "")).toBe(0);
    expect(estimateTextTokens(gpt, "abcdefgh")).toBe(2);
    expect(estimateTextTokens(gpt, "abcdefghi")).toBe(3);
    expect(estimateTextTokens(gpt, "日本語")).toBe(3);
    // The cautious default counts more than a 100k-vocabulary family for the same text.
    const text = "export function parse(input: string): Ast { return new Parser(input).parse(); }";
    expect(estimateTextTokens(defaultModelFamily, text)).toBeGreaterThan(estimateTextTokens(gpt, text));
  });

  it("adds the template's overhead per message and counts tool calls, names and tool call ids", () => {
    const qwen = modelFamilyOf("qwen2.5");
    const bare = { content: "hello", toolCalls: [], toolCallId: "", name: "" };
    expect(estimateMessageTokens(qwen, bare)).toBe(qwen.messageOverheadTokens + 2);
    const withCall = { ...bare, toolCalls: [{ id: "call-1", name: "read_file", argumentsJson: '{"path":"a.ts"}' }] };
    expect(estimateMessageTokens(qwen, withCall)).toBeGreaterThan(estimateMessageTokens(qwen, bare) + 8);
    expect(estimateMessageTokens(qwen, { ...bare, toolCallId: "call-1", name: "read_file" })).toBeGreaterThan(estimateMessageTokens(qwen, bare));
  });

  it("takes the conversation's budget, else the family's context size, else the default", () => {
    expect(effectiveBudget("qwen2.5", 4_000, 8_192)).toBe(4_000);
    expect(effectiveBudget("qwen2.5", 0, 8_192)).toBe(32_768);
    expect(effectiveBudget("vlinders-sim-chat", 0, 8_192)).toBe(8_192);
  });
});
