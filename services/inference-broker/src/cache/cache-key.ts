import { createHash } from "node:crypto";
import type { ChatRequest, SamplingParams } from "@vlinders/proto";

/** Prefix of every response-cache key, in Redis and in process. */
export const responseCacheKeyPrefix = "inference:";

/**
 * Bumped whenever the canonical form below changes, so that a broker never reads an entry written
 * under another form (two forms could otherwise give one key two meanings).
 */
const canonicalFormVersion = 1;

/**
 * Whether the worker gives the same answer to the same request: greedy decoding (temperature 0) or
 * a fixed seed. An unset temperature is the worker's default, which samples.
 */
export function isDeterministicRequest(request: ChatRequest): boolean {
  const sampling = request.sampling;
  return sampling?.seed !== undefined || (sampling?.temperature !== undefined && Math.fround(sampling.temperature) === 0);
}

/**
 * The response-cache key of a request, `inference:{sha256 hex of the canonical request}`, or
 * undefined when the request must not be served from the cache: it asks for a bypass, or it is not
 * deterministic (see {@link isDeterministicRequest}).
 *
 * The canonical request holds what changes the answer: the resolved model id (so an alias and its
 * model share entries), the messages, the tools and the sampling parameters. It leaves out who asks
 * (`user_id`, `session_id`) and `bypass_cache`, so that two users asking the same question share an
 * entry. Strings are taken as they are (a tool schema that differs only by spacing gets its own
 * entry: a needless miss is harmless, a wrong hit is not).
 */
export function responseCacheKey(request: ChatRequest, resolvedModelId: string): string | undefined {
  if (request.bypassCache || !isDeterministicRequest(request)) return undefined;
  return responseCacheKeyPrefix + createHash("sha256").update(canonicalRequest(request, resolvedModelId)).digest("hex");
}

/**
 * The canonical JSON of a request. Objects are built field by field, so their key order is fixed
 * whatever order the decoder or the caller produced; absent optional values are null.
 */
export function canonicalRequest(request: ChatRequest, resolvedModelId: string): string {
  return JSON.stringify({
    v: canonicalFormVersion,
    model: resolvedModelId,
    messages: request.messages.map((message) => ({
      role: message.role,
      content: message.content,
      tool_calls: message.toolCalls.map((call) => ({ id: call.id, name: call.name, arguments: call.argumentsJson })),
      tool_call_id: message.toolCallId,
      name: message.name,
    })),
    tools: request.tools.map((tool) => ({ name: tool.name, description: tool.description, parameters: tool.parametersJsonSchema })),
    sampling: canonicalSampling(request.sampling),
  });
}

function canonicalSampling(sampling: SamplingParams | undefined): Record<string, unknown> {
  // No sampling message and an empty one both mean "the worker's defaults".
  return {
    max_tokens: sampling?.maxTokens ?? null,
    temperature: sampling?.temperature === undefined ? null : canonicalFloat32(sampling.temperature),
    top_p: sampling?.topP === undefined ? null : canonicalFloat32(sampling.topP),
    stop: sampling?.stop ?? [],
    seed: sampling?.seed ?? null,
  };
}

/**
 * temperature and top_p are protobuf `float`s: 0.7 set in TypeScript arrives from the wire as
 * 0.699999988079071. Both are rendered as the shortest decimal that rounds to the same float32
 * ("0.7"), so a request gets one key whether it was decoded or built in process. -0 becomes "0".
 */
export function canonicalFloat32(value: number): string {
  const single = Math.fround(value);
  if (single === 0) return "0";
  if (!Number.isFinite(single)) return String(single);
  for (let digits = 1; digits < 9; digits += 1) {
    const shortest = Number(single.toPrecision(digits));
    if (Math.fround(shortest) === single) return String(shortest);
  }
  // Nine significant digits always identify a float32.
  return String(Number(single.toPrecision(9)));
}
