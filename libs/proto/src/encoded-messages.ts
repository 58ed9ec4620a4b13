import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";

/**
 * A message type that leaves messages as their encoded bytes. Relays use it for what they only
 * forward: decoding and encoding again every token at every hop would cost more than the relay.
 */
export const EncodedMessage = {
  encode: (bytes: Uint8Array) => ({ finish: () => bytes }),
  decode: (bytes: Uint8Array): Uint8Array => bytes,
};

type MethodWithEncodedResponse<Method> = Omit<Method, "responseType"> & { responseType: typeof EncodedMessage };

/**
 * The same service definition (same paths, same wire format) with the named methods' responses
 * kept as encoded bytes, on the client side (nothing decoded) and on the server side (the handler
 * yields bytes that are sent as they are).
 */
export function withEncodedResponses<
  Definition extends { name: string; fullName: string; methods: Record<string, { responseType: unknown }> },
  Names extends keyof Definition["methods"] & string,
>(
  definition: Definition,
  ...names: Names[]
): Omit<Definition, "methods"> & {
  methods: Omit<Definition["methods"], Names> & { [Name in Names]: MethodWithEncodedResponse<Definition["methods"][Name]> };
} {
  const methods: Record<string, unknown> = { ...definition.methods };
  for (const name of names) methods[name] = { ...definition.methods[name], responseType: EncodedMessage };
  return { ...definition, methods } as never;
}

// Field numbers of AgentEvent (agent.proto): the framing below must match them; a spec checks it
// against the generated code.
const runIdField = 1;
const modelEventField = 3;
const lengthDelimited = 2;

/**
 * The encoded AgentEvent { run_id, model_event } around an already encoded ChatEvent, without
 * decoding it: the orchestrator relays the broker's events this way.
 */
export function encodeModelAgentEvent(runId: string, encodedChatEvent: Uint8Array): Uint8Array {
  return modelAgentEventEncoder(runId)(encodedChatEvent);
}

/**
 * encodeModelAgentEvent for one run, for a stream of its events: the run_id field is encoded
 * once, and each event costs one buffer and one copy (a token of every stream passes through).
 */
export function modelAgentEventEncoder(runId: string): (encodedChatEvent: Uint8Array) => Uint8Array {
  const prefix = new BinaryWriter().uint32((runIdField << 3) | lengthDelimited).string(runId).uint32((modelEventField << 3) | lengthDelimited).finish();
  return (encodedChatEvent) => {
    let length = encodedChatEvent.length;
    let varintBytes = 1;
    while (length >= 0x80) {
      length >>>= 7;
      varintBytes += 1;
    }
    const framed = Buffer.allocUnsafe(prefix.length + varintBytes + encodedChatEvent.length);
    framed.set(prefix, 0);
    let at = prefix.length;
    length = encodedChatEvent.length;
    while (length >= 0x80) {
      framed[at++] = (length & 0x7f) | 0x80;
      length >>>= 7;
    }
    framed[at++] = length;
    framed.set(encodedChatEvent, at);
    return framed;
  };
}

/**
 * The encoded ChatEvent inside an encoded AgentEvent's model_event, or undefined when the event is
 * of another kind. A view of the input, not a copy: the gateway relays it as it is.
 */
export function modelEventOf(encodedAgentEvent: Uint8Array): Uint8Array | undefined {
  const reader = new BinaryReader(encodedAgentEvent);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === modelEventField && (tag & 7) === lengthDelimited) return reader.bytes();
    reader.skip(tag & 7);
  }
  return undefined;
}
