#!/usr/bin/env python3
"""A gRPC client that is not written in TypeScript and knows nothing of vlinders.v1 in advance.

It learns the API through gRPC server reflection, as grpcurl does, then streams a Chat and makes
the three classic mistakes. Needs Debian's python3-grpcio, python3-grpc-tools and grpc-proto
(apt-get install python3-grpcio python3-grpc-tools grpc-proto). Run against `npm start`:

    /usr/bin/python3 test/clients/reflection_chat.py localhost:50051 vlinders-dev-secret-change-me
"""
import importlib.util
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

address = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
secret = sys.argv[2] if len(sys.argv) > 2 else "vlinders-dev-secret-change-me"
metadata = (("x-internal-auth", secret),)

# The reflection protocol itself is the one thing a generic client knows.
generated = tempfile.mkdtemp()
protoc.main(["protoc", "-I/usr/share/grpc-proto", f"--python_out={generated}", "grpc/reflection/v1/reflection.proto"])
sys.path.insert(0, generated)
spec = importlib.util.spec_from_file_location("reflection_pb2", f"{generated}/grpc/reflection/v1/reflection_pb2.py")
reflection = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reflection)

channel = grpc.insecure_channel(address)
info = channel.stream_stream(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    request_serializer=reflection.ServerReflectionRequest.SerializeToString,
    response_deserializer=reflection.ServerReflectionResponse.FromString,
)


def ask(**request):
    return next(iter(info(iter([reflection.ServerReflectionRequest(**request)]), metadata=metadata)))


services = [service.name for service in ask(list_services="*").list_services_response.service]
print("services:", services)

pool = descriptor_pool.DescriptorPool()
files = {}
pending = [("file_containing_symbol", "vlinders.v1.InferenceService")]
while pending:
    kind, name = pending.pop()
    for raw in ask(**{kind: name}).file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        if file.name not in files:
            files[file.name] = file
            pending.extend(("file_by_filename", dependency) for dependency in file.dependency if dependency not in files)
added = set()
while len(added) < len(files):
    for file in files.values():
        if file.name not in added and all(dependency in added for dependency in file.dependency):
            pool.Add(file)
            added.add(file.name)

service = pool.FindServiceByName("vlinders.v1.InferenceService")
chat = service.methods_by_name["Chat"]
print("Chat:", chat.input_type.full_name, "->", chat.output_type.full_name, "server_streaming =", chat.server_streaming)
factory = message_factory.MessageFactory(pool)  # python3-protobuf 3.x; 4.x calls it GetMessageClass
ChatRequest = factory.GetPrototype(chat.input_type)
ChatEvent = factory.GetPrototype(chat.output_type)
call = channel.unary_stream("/vlinders.v1.InferenceService/Chat", request_serializer=ChatRequest.SerializeToString, response_deserializer=ChatEvent.FromString)

request = ChatRequest()
message = request.messages.add()
message.role, message.content = "user", "hello from a python client"
events = list(call(request, metadata=metadata, timeout=30))
for event in events:
    print("  event:", str(event).replace("\n", " "))
print("messages received:", len(events))


def status_of(make_request, call_metadata):
    try:
        list(call(make_request, metadata=call_metadata, timeout=30))
        return "OK"
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"


print("without the secret:", status_of(request, ()))
print("no messages:      ", status_of(ChatRequest(), metadata))
unknown = ChatRequest()
unknown.CopyFrom(request)
unknown.model = "no-such-model"
print("unknown model:    ", status_of(unknown, metadata))
