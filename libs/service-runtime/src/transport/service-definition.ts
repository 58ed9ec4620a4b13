import type { CompatServiceDefinition } from "nice-grpc";

/** What the transport needs of a method, whatever the style of the definition it came from. */
export interface WireMethod {
  /** Key in the service implementation object. */
  name: string;
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  serializeRequest(value: unknown): Uint8Array;
  deserializeRequest(bytes: Uint8Array): unknown;
  serializeResponse(value: unknown): Uint8Array;
  deserializeResponse(bytes: Uint8Array): unknown;
}

interface MessageType {
  encode(value: unknown): { finish(): Uint8Array };
  decode(bytes: Uint8Array): unknown;
  fromPartial?(value: unknown): unknown;
}

interface TsProtoMethod {
  name: string;
  requestType: MessageType;
  requestStream: boolean;
  responseType: MessageType;
  responseStream: boolean;
}

interface GrpcJsMethod {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize(value: unknown): Buffer;
  requestDeserialize(bytes: Buffer): unknown;
  responseSerialize(value: unknown): Buffer;
  responseDeserialize(bytes: Buffer): unknown;
}

function serializerOf(type: MessageType): (value: unknown) => Uint8Array {
  // A handler may return a partial message (ts-proto's DeepPartial): fromPartial fills the
  // defaults that encode needs. Types without fromPartial (encoded relays) are sent as they are.
  const fromPartial = type.fromPartial;
  return fromPartial ? (value) => type.encode(fromPartial(value)).finish() : (value) => type.encode(value).finish();
}

/** The methods of a ts-proto generic definition or of a grpc-js definition (server reflection's). */
export function wireMethodsOf(definition: CompatServiceDefinition): WireMethod[] {
  if ("methods" in definition && "fullName" in definition) {
    const { fullName, methods } = definition as unknown as { fullName: string; methods: Record<string, TsProtoMethod> };
    return Object.entries(methods).map(([name, method]) => ({
      name,
      path: `/${fullName}/${method.name}`,
      requestStream: method.requestStream,
      responseStream: method.responseStream,
      serializeRequest: serializerOf(method.requestType),
      deserializeRequest: (bytes) => method.requestType.decode(bytes),
      serializeResponse: serializerOf(method.responseType),
      deserializeResponse: (bytes) => method.responseType.decode(bytes),
    }));
  }
  return Object.entries(definition as Record<string, GrpcJsMethod>).map(([name, method]) => ({
    name,
    path: method.path,
    requestStream: method.requestStream,
    responseStream: method.responseStream,
    serializeRequest: (value) => method.requestSerialize(value),
    deserializeRequest: (bytes) => method.requestDeserialize(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)),
    serializeResponse: (value) => method.responseSerialize(value),
    deserializeResponse: (bytes) => method.responseDeserialize(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)),
  }));
}
