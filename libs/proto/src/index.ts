/**
 * The vlinders.v1 contracts: message types, nice-grpc service definitions and the descriptor set
 * for server reflection. Everything here is generated from proto/; see scripts/generate.mjs.
 */
export * from "./gen/vlinders/v1/chat";
export {
  EmbedRequest,
  Embedding,
  EmbedResponse,
  ListModelsRequest,
  Model,
  ListModelsResponse,
  InferenceServiceDefinition,
  type InferenceServiceImplementation,
  type InferenceServiceClient,
} from "./gen/vlinders/v1/inference";
export {
  ListToolsRequest,
  ToolSpec,
  ListToolsResponse,
  ExecuteToolRequest,
  ToolResult,
  ExecuteBatchRequest,
  ExecuteBatchResponse,
  ToolServiceDefinition,
  type ToolServiceImplementation,
  type ToolServiceClient,
} from "./gen/vlinders/v1/tool";
export {
  RunAgentRequest,
  AgentOverrides,
  AgentStatus,
  RunAgentResponse,
  AgentEvent,
  RunStarted,
  ToolCallRequested,
  SubAgentStarted,
  SubAgentFinished,
  ContextCompacted,
  RunFinished,
  GetAgentRequest,
  AgentRun,
  CancelAgentRequest,
  CancelAgentResponse,
  ListAgentTypesRequest,
  AgentTypeInfo,
  ListAgentTypesResponse,
  GetAgentStatsRequest,
  AgentTypeStats,
  GetAgentStatsResponse,
  AdmissionState,
  AgentServiceDefinition,
  type AgentServiceImplementation,
  type AgentServiceClient,
} from "./gen/vlinders/v1/agent";
export {
  GetPoolStatusRequest,
  WorkerHealth,
  WorkerStatus,
  PoolStatus,
  AddWorkerRequest,
  DrainWorkerRequest,
  RemoveWorkerRequest,
  RemoveWorkerResponse,
  ReloadModelsRequest,
  ReloadModelsResponse,
  StoreProviderKeyRequest,
  ProviderKeyInfo,
  DeleteProviderKeyRequest,
  DeleteProviderKeyResponse,
  ListProviderKeysRequest,
  ListProviderKeysResponse,
  GetUsageRequest,
  UsageRow,
  UsageReport,
  InferenceAdminServiceDefinition,
  type InferenceAdminServiceImplementation,
  type InferenceAdminServiceClient,
} from "./gen/vlinders/v1/inference_admin";
export {
  AppendMessagesRequest,
  GetContextRequest,
  Compaction,
  ContextWindow,
  DeleteConversationRequest,
  DeleteConversationResponse,
  RememberRequest,
  Memory,
  RecallRequest,
  RecallResponse,
  ContextServiceDefinition,
  type ContextServiceImplementation,
  type ContextServiceClient,
} from "./gen/vlinders/v1/context";
export { fileDescriptorSet } from "./gen/file-descriptor-set";

/** Fully qualified names of the public services, as reflection and grpcurl list them. */
export const serviceNames = {
  inference: "vlinders.v1.InferenceService",
  agent: "vlinders.v1.AgentService",
  tool: "vlinders.v1.ToolService",
  inferenceAdmin: "vlinders.v1.InferenceAdminService",
  context: "vlinders.v1.ContextService",
} as const;
export { EncodedMessage, withEncodedResponses, encodeModelAgentEvent, modelAgentEventEncoder, modelEventOf } from "./encoded-messages";
