import type { ChatEvent, ChatRequest } from "@vlinders/proto";
import { ClientError, type Status } from "nice-grpc-common";

export function userSays(content: string, extra: Partial<ChatRequest> = {}): ChatRequest {
  return {
    model: "",
    messages: [{ role: "user", content, toolCalls: [], toolCallId: "", name: "" }],
    tools: [],
    sampling: undefined,
    userId: "",
    sessionId: "",
    bypassCache: false,
    ...extra,
  };
}

export interface StreamOutcome {
  events: ChatEvent[];
  /** The content deltas joined. */
  text: string;
  /** How many messages carried content: a streamed answer arrives in several. */
  contentMessages: number;
  error?: { code: Status; details: string };
}

/** Reads a Chat stream to its end, keeping what arrived before an error. */
export async function readChat(stream: AsyncIterable<ChatEvent>): Promise<StreamOutcome> {
  const events: ChatEvent[] = [];
  let error: StreamOutcome["error"];
  try {
    for await (const event of stream) events.push(event);
  } catch (caught: unknown) {
    if (!(caught instanceof ClientError)) throw caught;
    error = { code: caught.code, details: caught.details };
  }
  const contents = events.flatMap((event) => (event.event?.$case === "contentDelta" ? [event.event.value] : []));
  return { events, text: contents.join(""), contentMessages: contents.length, ...(error ? { error } : {}) };
}
