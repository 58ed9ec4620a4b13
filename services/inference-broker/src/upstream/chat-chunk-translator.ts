import { FinishReason, type ChatEvent, type ToolCallDelta, type Usage } from "@vlinders/proto";
import { ServerError, Status } from "nice-grpc-common";

/** A streamed chunk of /v1/chat/completions, as vLLM and other OpenAI-compatible servers send it. */
export interface ChatCompletionChunk {
  choices?: Array<{
    index?: number;
    delta?: {
      role?: string | null;
      content?: string | null;
      reasoning_content?: string | null;
      tool_calls?: Array<{
        index?: number;
        id?: string | null;
        type?: string | null;
        function?: { name?: string | null; arguments?: string | null } | null;
      }> | null;
    } | null;
    finish_reason?: string | null;
  }>;
  usage?: OpenAiUsage | null;
  error?: { message?: string; type?: string; code?: number | string | null } | string;
  object?: string;
  message?: string;
  /** The code of the top-level {"object":"error",…} form. */
  code?: number | string | null;
}

export interface OpenAiUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  prompt_tokens_details?: { cached_tokens?: number | null } | null;
}

const finishReasons: Record<string, FinishReason> = {
  stop: FinishReason.FINISH_REASON_STOP,
  length: FinishReason.FINISH_REASON_LENGTH,
  tool_calls: FinishReason.FINISH_REASON_TOOL_CALLS,
  function_call: FinishReason.FINISH_REASON_TOOL_CALLS,
  abort: FinishReason.FINISH_REASON_ABORT,
  content_filter: FinishReason.FINISH_REASON_CONTENT_FILTER,
};

export function toFinishReason(reason: string | null | undefined): FinishReason {
  // hasOwn: a worker's "toString" or "constructor" must not find Object.prototype's members.
  if (!reason || !Object.hasOwn(finishReasons, reason)) return FinishReason.FINISH_REASON_UNSPECIFIED;
  return finishReasons[reason] ?? FinishReason.FINISH_REASON_UNSPECIFIED;
}

export function toUsage(usage: OpenAiUsage): Usage {
  const promptTokens = usage.prompt_tokens ?? 0;
  const completionTokens = usage.completion_tokens ?? 0;
  return {
    promptTokens,
    completionTokens,
    totalTokens: usage.total_tokens ?? promptTokens + completionTokens,
    cachedPromptTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
  };
}

/** Status of an error a worker reports, by the HTTP-like code it gives. */
export function statusForWorkerErrorCode(code: number): Status {
  if (code === 400 || code === 422) return Status.INVALID_ARGUMENT;
  if (code === 404) return Status.NOT_FOUND;
  if (code === 413) return Status.INVALID_ARGUMENT;
  if (code === 429) return Status.RESOURCE_EXHAUSTED;
  // The broker's API key was refused: the operator must store or rotate it. Neither the caller's
  // request nor the worker is at fault (see failure-classification.ts).
  if (isApiKeyRejection(code)) return Status.FAILED_PRECONDITION;
  if (code >= 500) return Status.UNAVAILABLE;
  return Status.UNKNOWN;
}

/** Is this HTTP-like code a refusal of the credentials the broker sent (or did not send)? */
export function isApiKeyRejection(code: number): boolean {
  return code === 401 || code === 403;
}

/**
 * The error for a worker that refused the broker's credentials (HTTP 401 or 403). The worker's own
 * message is left out on purpose: providers quote the key, or part of it, in it ("Incorrect API
 * key provided: sk-…"), and status details travel to callers and into their logs.
 */
export function apiKeyRejectedError(worker: { id: string; provider?: string | undefined }, code: number, keySent: boolean): ServerError {
  const hint = "store or rotate it through the admin API (InferenceAdminService.StoreProviderKey or RotateProviderKey)";
  if (!keySent) {
    return new ServerError(
      Status.FAILED_PRECONDITION,
      `worker ${worker.id} wants an API key (HTTP ${code}) and none was sent: a worker gets the key of the provider the models file names for it; ${hint}`,
    );
  }
  const whose = worker.provider === undefined ? "the provider" : `provider "${worker.provider}"`;
  return new ServerError(Status.FAILED_PRECONDITION, `worker ${worker.id}: ${whose} rejected the API key (HTTP ${code}); ${hint}`);
}

/** Characters of a worker's error message kept in a status's details. */
export const maxWorkerMessageCharacters = 1_000;

/**
 * A worker's error message as it may go into a status's details: cut to a bounded length. Details
 * travel percent-encoded in the grpc-message trailer, and an HTTP/2 peer refuses a header block
 * beyond its limit (a few KiB to tens of KiB) with an error of its own that hides this one.
 */
export function boundedWorkerMessage(message: string): string {
  return message.length <= maxWorkerMessageCharacters ? message : `${message.slice(0, maxWorkerMessageCharacters)}… (${message.length} characters)`;
}

/**
 * Turns the chunks of one streamed completion into ChatEvents. Tool-call fragments are tracked by
 * index: a call's id and name are sent once, with its first fragment, whether the worker repeats
 * them on continuation chunks, sends `"id":null,"type":"function"` (older vLLM) or omits them
 * (current vLLM). A `{"error":…}` chunk (vLLM's way of failing after HTTP 200) becomes a ServerError.
 */
export class ChatChunkTranslator {
  private readonly toolCalls = new Map<number, { id: string; name: string; arguments: string }>();
  private finished = false;
  private usage: Usage | undefined;

  constructor(private readonly workerId: string) {}

  translate(chunk: ChatCompletionChunk): ChatEvent[] {
    if (chunk.error !== undefined || chunk.object === "error") throw this.streamError(chunk);
    const events: Array<ChatEvent["event"]> = [];
    // Only the first choice is used: the mesh never asks for n > 1.
    const choice = chunk.choices?.find((candidate) => (candidate.index ?? 0) === 0);
    const delta = choice?.delta;
    if (delta?.content) events.push({ $case: "contentDelta", value: delta.content });
    for (const fragment of delta?.tool_calls ?? []) {
      const event = this.toolCallDelta(fragment);
      if (event) events.push({ $case: "toolCallDelta", value: event });
    }
    if (choice?.finish_reason) {
      this.finished = true;
      events.push({ $case: "finishReason", value: toFinishReason(choice.finish_reason) });
    }
    if (chunk.usage) this.usage = toUsage(chunk.usage);
    return events.map((event) => ({ event, model: "" }));
  }

  /** Usage arrives in its own chunk after the finish; it is sent last, once the stream is done. */
  takeUsage(): Usage | undefined {
    return this.usage;
  }

  get sawFinish(): boolean {
    return this.finished;
  }

  /** The complete tool calls seen so far, by index. */
  completedToolCalls(): Array<{ index: number; id: string; name: string; arguments: string }> {
    return [...this.toolCalls.entries()].sort(([a], [b]) => a - b).map(([index, call]) => ({ index, ...call }));
  }

  private toolCallDelta(
    fragment: NonNullable<NonNullable<NonNullable<ChatCompletionChunk["choices"]>[number]["delta"]>["tool_calls"]>[number],
  ): ToolCallDelta | undefined {
    const index = fragment.index ?? 0;
    let state = this.toolCalls.get(index);
    const delta: ToolCallDelta = { index, id: "", name: "", argumentsJsonDelta: fragment.function?.arguments ?? "" };
    if (!state) {
      state = { id: "", name: "", arguments: "" };
      this.toolCalls.set(index, state);
    }
    if (state.id === "" && fragment.id) {
      state.id = fragment.id;
      delta.id = fragment.id;
    }
    if (state.name === "" && fragment.function?.name) {
      state.name = fragment.function.name;
      delta.name = fragment.function.name;
    }
    state.arguments += delta.argumentsJsonDelta;
    if (delta.id === "" && delta.name === "" && delta.argumentsJsonDelta === "") return undefined;
    return delta;
  }

  private streamError(chunk: ChatCompletionChunk): ServerError {
    const error = chunk.error;
    const message = typeof error === "string" ? error : (error?.message ?? chunk.message ?? "unknown error");
    // Number(null) and Number("") are 0, not NaN: only a real number or numeric string is a code.
    const rawCode = typeof error === "object" && error !== null ? error.code : chunk.code;
    const code = typeof rawCode === "number" || (typeof rawCode === "string" && rawCode.trim() !== "") ? Number(rawCode) : NaN;
    // The dispatcher sends a key to every worker that needs one: a refusal here is of that key.
    if (Number.isFinite(code) && isApiKeyRejection(code)) return apiKeyRejectedError({ id: this.workerId }, code, true);
    // A failure after tokens were streamed is not retryable as such: the text would repeat.
    const status = Number.isFinite(code) && code < 500 ? statusForWorkerErrorCode(code) : Status.INTERNAL;
    return new ServerError(status, `worker ${this.workerId} failed mid-stream: ${boundedWorkerMessage(String(message))}`);
  }
}
