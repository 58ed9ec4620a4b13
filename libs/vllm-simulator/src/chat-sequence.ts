import type { ServerResponse } from "node:http";
import type { ChatPlan } from "./chat-plan";
import type { EngineSequence, EngineState, SimulatedEngine } from "./engine";
import { sendError, sendJson, HttpError } from "./http";
import { scaledLatency } from "./latency";
import type { ModelMetrics } from "./metrics";
import type { VllmSimulatorOptions } from "./options";
import type { PrefixCache } from "./prefix-cache";
import type { SeededRandom } from "./random";
import type { TimerEntry, TimerHeap } from "./timer-heap";

/** What a sequence uses of its simulator. */
export interface SequenceHost {
  /** The options now: `configure` takes effect at the next token. */
  readonly options: VllmSimulatorOptions;
  readonly engine: SimulatedEngine;
  readonly timers: TimerHeap;
  readonly prefixCache: PrefixCache;
  /** Called once per sequence when it ends, whichever way. */
  sequenceEnded(clientHungUp: boolean): void;
}

/** Token positions (0-based, before the piece at that position) at which a fault strikes. */
export interface SequenceFaults {
  errorAt: number;
  abortAt: number;
  disconnectAt: number;
  malformedAt: number;
  /** Multiplies every inter-token latency. */
  interTokenFactor: number;
}

export const noSequenceFaults: SequenceFaults = {
  errorAt: Infinity,
  abortAt: Infinity,
  disconnectAt: Infinity,
  malformedAt: Infinity,
  interTokenFactor: 1,
};

const midStreamError =
  'data: {"error":{"message":"simulated engine failure mid-stream","type":"InternalServerError","param":null,"code":500}}\n\ndata: [DONE]\n\n';
const done = "data: [DONE]\n\n";
const chunkTail = ',"logprobs":null,"finish_reason":null}]}\n\n';

/**
 * One chat completion from arrival to its last byte: it waits in the engine's queue, is prefilled,
 * then emits one piece per inter-token latency from the shared timer heap. Per token it builds the
 * chunk string and nothing else; the constant parts of every chunk are built once per request.
 */
export class ChatSequence implements TimerEntry, EngineSequence {
  dueAt = 0;
  heapIndex = -1;
  engineState: EngineState = "new";
  kvTokens = 0;
  readonly promptTokens: number;

  private sent = 0;
  private firstTokenAt = -1;
  private lastTokenAt = 0;
  private cachedTokens = 0;
  private ended = false;
  /** `data: {"id":…,"choices":[{"index":0,"delta":` — a chunk up to its delta. */
  private readonly chunkHead: string;

  constructor(
    private readonly host: SequenceHost,
    private readonly response: ServerResponse,
    private readonly plan: ChatPlan,
    readonly metrics: ModelMetrics,
    private readonly random: SeededRandom,
    private readonly faults: SequenceFaults,
    private readonly id: string,
    private readonly created: number,
    private readonly arrivedAt: number,
  ) {
    this.promptTokens = plan.promptTokens;
    this.chunkHead = `data: {"id":${JSON.stringify(id)},"object":"chat.completion.chunk","created":${created},"model":${JSON.stringify(plan.model.id)},"choices":[{"index":0,"delta":`;
  }

  /** Sends the stream's headers (vLLM does before the request is scheduled) and queues the request. */
  start(now: number): void {
    if (this.plan.stream) {
      this.response.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" });
      this.response.flushHeaders();
    }
    this.host.engine.submit(this, now);
  }

  /** The response closed: the client hung up, unless the sequence had already ended. */
  responseClosed(): void {
    this.end(performance.now(), true, undefined);
  }

  /** The engine gave it a slot: prefill, with the prefix cache consulted and filled. */
  admitted(now: number): void {
    const plan = this.plan;
    this.metrics.queueTime.observe((now - this.arrivedAt) / 1000);
    const matched = this.host.prefixCache.lookupAndRecord(plan.prefixKeys);
    // vLLM always computes the last prompt token again, to get its logits.
    this.cachedTokens = Math.max(0, Math.min(matched > 0 ? (plan.prefixTokens[matched - 1] ?? 0) : 0, plan.promptTokens - 1));
    this.metrics.promptTokens += plan.promptTokens;
    this.metrics.prefixCacheQueries += plan.promptTokens;
    this.metrics.prefixCacheHits += this.cachedTokens;
    this.host.timers.schedule(this, now + this.latency(this.host.options.timeToFirstTokenMs));
  }

  private latency(baseMs: number): number {
    return scaledLatency(baseMs, this.host.options, this.host.engine.running, this.random);
  }

  /** The next token is due: emit it, or a fault, or the end. */
  fire(now: number): void {
    const plan = this.plan;
    const stream = plan.stream;
    let out = "";
    if (this.firstTokenAt < 0) {
      this.firstTokenAt = now;
      this.metrics.timeToFirstToken.observe((now - this.arrivedAt) / 1000);
      if (stream && plan.kind !== "script") out = `${this.chunkHead}{"role":"assistant","content":""}${chunkTail}`;
    } else {
      this.metrics.interTokenLatency.observe((now - this.lastTokenAt) / 1000);
    }
    this.lastTokenAt = now;

    const position = this.sent;
    if (position < plan.pieces.length) {
      const faults = this.faults;
      if (position >= faults.errorAt) {
        if (stream) this.response.end(out + midStreamError);
        else sendError(this.response, new HttpError(500, "simulated engine failure", "InternalServerError"));
        this.end(now, false, undefined);
        return;
      }
      if (position >= faults.abortAt) {
        this.finish(now, out, "abort");
        return;
      }
      if (position >= faults.disconnectAt) {
        if (out !== "") this.response.write(out);
        this.end(now, false, undefined);
        this.response.destroy();
        return;
      }
      if (position === faults.malformedAt && stream) out += `${this.chunkHead}{"content":\n\n`;

      const piece = plan.pieces[position] as string;
      if (stream) {
        if (plan.kind === "text") out += `${this.chunkHead}{"content":${JSON.stringify(piece)}}${chunkTail}`;
        else if (plan.kind === "tool") out += this.chunkHead + piece + chunkTail;
        else out += `data: ${piece}\n\n`;
      }
      this.sent = position + 1;
      this.metrics.generationTokens += 1;
      this.host.engine.grow(this, 1);
      if (this.sent < plan.pieces.length) {
        if (out !== "") this.response.write(out);
        const interToken = this.latency(this.host.options.interTokenLatencyMs) * faults.interTokenFactor;
        // Keep the pace (a late timer does not delay the tokens after it) without bursts after a stall.
        const planned = this.dueAt + interToken;
        this.host.timers.schedule(this, planned >= now ? planned : now + interToken);
        return;
      }
    }
    this.finish(now, out, plan.finishReason);
  }

  /** The end of a generation that was not cut off: the finish reason, usage and `[DONE]`. */
  private finish(now: number, out: string, finishReason: string): void {
    const plan = this.plan;
    const usage = {
      prompt_tokens: plan.promptTokens,
      total_tokens: plan.promptTokens + this.sent,
      completion_tokens: this.sent,
      prompt_tokens_details: { cached_tokens: this.cachedTokens },
    };
    if (plan.kind === "script") {
      this.response.end(out);
    } else if (!plan.stream) {
      if (this.faults.malformedAt !== Infinity) {
        // The body of a chat.completion cut short: not JSON.
        this.response.writeHead(200, { "content-type": "application/json" }).end(`{"id":${JSON.stringify(this.id)},"object":"chat.completion","choices":[{"index":0,`);
      } else {
        sendJson(this.response, 200, {
          id: this.id,
          object: "chat.completion",
          created: this.created,
          model: plan.model.id,
          choices: [{ index: 0, message: this.message(), logprobs: null, finish_reason: finishReason, stop_reason: null }],
          usage,
        });
      }
    } else {
      out += `${this.chunkHead}{"content":""},"logprobs":null,"finish_reason":${JSON.stringify(finishReason)},"stop_reason":null}]}\n\n`;
      if (plan.includeUsage) {
        out += `data: ${JSON.stringify({ id: this.id, object: "chat.completion.chunk", created: this.created, model: plan.model.id, choices: [], usage })}\n\n`;
      }
      this.response.end(out + done);
    }
    this.end(now, false, finishReason);
  }

  private message(): Record<string, unknown> {
    if (this.plan.kind === "tool") {
      return {
        role: "assistant",
        content: null,
        tool_calls: this.plan.toolCalls.map((call) => ({ id: call.id, type: "function", function: { name: call.name, arguments: call.argumentsJson } })),
      };
    }
    return { role: "assistant", content: this.plan.pieces.slice(0, this.sent).join(""), tool_calls: [] };
  }

  /** Frees everything the sequence holds; `finishedReason` when it finished (counted as a success). */
  private end(now: number, clientHungUp: boolean, finishedReason: string | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.host.timers.cancel(this);
    this.host.engine.leave(this, now);
    this.metrics.e2eLatency.observe((now - this.arrivedAt) / 1000);
    if (finishedReason !== undefined) this.metrics.countSuccess(finishedReason);
    this.host.sequenceEnded(clientHungUp);
  }
}
