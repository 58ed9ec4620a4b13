import type { ChatEvent, ChatRequest, ChatResponse, InferenceServiceImplementation } from "@vlinders/proto";
import { validateChatRequest } from "@vlinders/chat-validation";
import { ServerError, Status } from "nice-grpc-common";
import type { ModelRegistry } from "./registry/model-registry";
import type { WorkerPicker } from "./routing/round-robin";
import { ChatChunkTranslator, toFinishReason, toUsage, type ChatCompletionChunk, type OpenAiUsage } from "./upstream/chat-chunk-translator";
import { toChatCompletionBody } from "./upstream/openai-request";
import type { WorkerClient } from "./upstream/worker-client";

export interface InferenceServiceDependencies {
  registry: ModelRegistry;
  picker: WorkerPicker;
  workers: WorkerClient;
}

interface ChatCompletionBody {
  choices?: Array<{
    message?: {
      content?: string | null;
      tool_calls?: Array<{ id?: string; function?: { name?: string; arguments?: string } }> | null;
    };
    finish_reason?: string | null;
  }>;
  usage?: OpenAiUsage;
}

interface EmbeddingsBody {
  data?: Array<{ index?: number; embedding?: number[] }>;
  usage?: OpenAiUsage;
}

/** InferenceService over the workers of the registry. */
export function createInferenceService(deps: InferenceServiceDependencies): InferenceServiceImplementation {
  const { registry, picker, workers } = deps;

  return {
    async *chat(request, context): AsyncGenerator<ChatEvent, void, undefined> {
      validateChatRequest(request);
      const model = registry.resolve(request.model);
      const worker = picker.pick(model);
      const translator = new ChatChunkTranslator(worker.id);
      const chunks = workers.streamJson(worker, "/v1/chat/completions", toChatCompletionBody(request, model.id, true), context.signal);
      for await (const chunk of chunks) {
        for (const event of translator.translate(chunk as ChatCompletionChunk)) yield { ...event, model: model.id };
      }
      if (!translator.sawFinish) {
        throw new ServerError(Status.UNAVAILABLE, `worker ${worker.id} ended the stream without a finish reason`);
      }
      const usage = translator.takeUsage();
      if (usage) yield { event: { $case: "usage", value: usage }, model: model.id };
    },

    async complete(request: ChatRequest, context): Promise<ChatResponse> {
      validateChatRequest(request);
      const model = registry.resolve(request.model);
      const worker = picker.pick(model);
      const body = (await workers.postJson(
        worker,
        "/v1/chat/completions",
        toChatCompletionBody(request, model.id, false),
        context.signal,
      )) as ChatCompletionBody;
      const choice = body.choices?.[0];
      if (!choice?.message) throw new ServerError(Status.INTERNAL, `worker ${worker.id} answered without a choice`);
      return {
        model: model.id,
        message: {
          role: "assistant",
          content: choice.message.content ?? "",
          toolCalls: (choice.message.tool_calls ?? []).map((call) => ({
            id: call.id ?? "",
            name: call.function?.name ?? "",
            argumentsJson: call.function?.arguments ?? "",
          })),
          toolCallId: "",
          name: "",
        },
        finishReason: toFinishReason(choice.finish_reason),
        usage: toUsage(body.usage ?? {}),
      };
    },

    async embed(request, context) {
      if (request.inputs.length === 0) throw new ServerError(Status.INVALID_ARGUMENT, "inputs: must not be empty");
      const model = registry.resolve(request.model, "embedding");
      const worker = picker.pick(model);
      const body = (await workers.postJson(
        worker,
        "/v1/embeddings",
        { model: model.id, input: request.inputs, ...(request.userId ? { user: request.userId } : {}) },
        context.signal,
      )) as EmbeddingsBody;
      const data = [...(body.data ?? [])].sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
      if (data.length !== request.inputs.length) {
        throw new ServerError(Status.INTERNAL, `worker ${worker.id} returned ${data.length} embeddings for ${request.inputs.length} inputs`);
      }
      return {
        model: model.id,
        embeddings: data.map((item) => ({ values: item.embedding ?? [] })),
        usage: toUsage(body.usage ?? {}),
      };
    },

    async listModels() {
      return {
        models: registry.list().map((model) => ({
          id: model.id,
          aliases: model.aliases,
          maxContextTokens: model.maxContextTokens,
          workerCount: model.workers.length,
        })),
      };
    },
  };
}
