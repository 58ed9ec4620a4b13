import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { createChannel, createClient, Metadata } from "nice-grpc";
import { ServerReflectionService } from "nice-grpc-server-reflection";
// The package exports the service but not its message classes; they come from its generated code.
import { ServerReflectionRequest, type ServerReflectionResponse } from "nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb";

/**
 * A client that knows nothing of vlinders.v1 in advance and learns it through gRPC server
 * reflection, as grpcurl and other generic clients do.
 */
export async function reflect(address: string, secret: string, ask: (request: ServerReflectionRequest) => void): Promise<ServerReflectionResponse> {
  const channel = createChannel(address);
  try {
    const client = createClient(ServerReflectionService, channel);
    const request = new ServerReflectionRequest();
    ask(request);
    async function* requests() {
      yield request;
    }
    for await (const response of client.serverReflectionInfo(requests(), { metadata: Metadata({ "x-internal-auth": secret }) })) {
      return response;
    }
    throw new Error("server reflection sent no response");
  } finally {
    channel.close();
  }
}

export async function listServices(address: string, secret: string): Promise<string[]> {
  const response = await reflect(address, secret, (request) => request.setListServices("*"));
  return (response.getListServicesResponse()?.getServiceList() ?? []).map((service) => service.getName()).sort();
}

function decodeFiles(response: ServerReflectionResponse): FileDescriptorProto[] {
  const error = response.getErrorResponse();
  if (error) throw new Error(`reflection error ${error.getErrorCode()}: ${error.getErrorMessage()}`);
  return (response.getFileDescriptorResponse()?.getFileDescriptorProtoList_asU8() ?? []).map((bytes) =>
    fromBinary(FileDescriptorProtoSchema, bytes),
  );
}

/**
 * The file that defines a symbol and, transitively, the files it imports, fetched by name where
 * the server did not send them along (as grpcurl does).
 */
export async function fileDescriptorsContaining(address: string, secret: string, symbol: string): Promise<FileDescriptorProto[]> {
  const files = new Map<string, FileDescriptorProto>();
  const add = (found: FileDescriptorProto[]) => found.forEach((file) => files.set(file.name, file));
  add(decodeFiles(await reflect(address, secret, (request) => request.setFileContainingSymbol(symbol))));
  for (let missing = [...files.values()].flatMap((file) => file.dependency).filter((name) => !files.has(name)); missing.length > 0; ) {
    for (const name of missing) add(decodeFiles(await reflect(address, secret, (request) => request.setFileByFilename(name))));
    missing = [...files.values()].flatMap((file) => file.dependency).filter((name) => !files.has(name));
  }
  return [...files.values()];
}
