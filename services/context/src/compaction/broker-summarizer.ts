import type { InferenceServiceDefinition } from "@vlinders/proto";
import type { DeadlineOptions } from "@vlinders/service-runtime";
import type { Client } from "nice-grpc";
import type { Summarize } from "./compactor";

/** What the summary model is told; the transcript follows as the user message. */
export const summaryInstructions = [
  "You summarize the earlier part of a conversation between a user, an AI coding assistant and the tools it called,",
  "so that the assistant can carry on without it. Keep every fact, decision, file path, identifier, command, error",
  "and open task; drop pleasantries and repetition. Write plain prose or a short list, and nothing but the summary.",
].join(" ");

/**
 * Summaries from a small model through the inference-broker's InferenceService Complete, with a
 * deadline of its own and the call's signal, at temperature 0 (a deterministic request the broker
 * may cache).
 */
export function createBrokerSummarizer(options: {
  inference: Client<typeof InferenceServiceDefinition, DeadlineOptions>;
  /** '' asks for the broker's default model. */
  model: string;
  deadlineMs: number;
}): Summarize {
  const { inference, model, deadlineMs } = options;
  return async ({ transcript, maxTokens }, signal) => {
    const response = await inference.complete(
      {
        model,
        messages: [
          { role: "system", content: summaryInstructions, toolCalls: [], toolCallId: "", name: "" },
          { role: "user", content: transcript, toolCalls: [], toolCallId: "", name: "" },
        ],
        tools: [],
        sampling: { maxTokens, temperature: 0, stop: [] },
        userId: "",
        sessionId: "",
        bypassCache: false,
      },
      { signal, deadline: deadlineMs },
    );
    return response.message?.content ?? "";
  };
}
