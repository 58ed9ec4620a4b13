import { AgentEvent, AgentStatus, ChatEvent, FinishReason, InferenceServiceDefinition } from "./index";
import { EncodedMessage, encodeModelAgentEvent, modelAgentEventEncoder, modelEventOf, withEncodedResponses } from "./encoded-messages";

const chatEvent: ChatEvent = { event: { $case: "contentDelta", value: "héllo, wörld" }, model: "m" };

describe("encoded relays of AgentEvent", () => {
  it("frames a ChatEvent exactly as the generated encoder writes an AgentEvent with model_event", () => {
    const framed = encodeModelAgentEvent("run-1", ChatEvent.encode(chatEvent).finish());
    expect(AgentEvent.decode(framed)).toEqual({ runId: "run-1", event: { $case: "modelEvent", value: chatEvent } });
    expect(Buffer.from(framed)).toEqual(Buffer.from(AgentEvent.encode({ runId: "run-1", event: { $case: "modelEvent", value: chatEvent } }).finish()));
  });

  it("frames events of every size as the generated encoder does, with one encoder per run", () => {
    const encode = modelAgentEventEncoder("run-é-2");
    // Lengths around each varint boundary (1, 2 and 3 bytes of length).
    for (const size of [0, 1, 100, 120, 121, 122, 200, 16_370, 16_390, 70_000]) {
      const event: ChatEvent = { event: { $case: "contentDelta", value: "x".repeat(size) }, model: "m" };
      const expected = AgentEvent.encode({ runId: "run-é-2", event: { $case: "modelEvent", value: event } }).finish();
      expect(Buffer.from(encode(ChatEvent.encode(event).finish()))).toEqual(Buffer.from(expected));
    }
  });

  it("finds the ChatEvent bytes inside an AgentEvent, and nothing in other kinds of events", () => {
    const encoded = AgentEvent.encode({ runId: "r", event: { $case: "modelEvent", value: { event: { $case: "finishReason", value: FinishReason.FINISH_REASON_STOP }, model: "m" } } }).finish();
    expect(ChatEvent.decode(modelEventOf(encoded)!)).toEqual({ event: { $case: "finishReason", value: FinishReason.FINISH_REASON_STOP }, model: "m" });
    const finished = AgentEvent.encode({
      runId: "r",
      event: { $case: "runFinished", value: { status: AgentStatus.AGENT_STATUS_SUCCEEDED, stopReason: "completed", response: "x", iterations: 1, usage: undefined } },
    }).finish();
    expect(modelEventOf(finished)).toBeUndefined();
  });

  it("keeps the named methods' responses as bytes and leaves the others as they were", () => {
    const definition = withEncodedResponses(InferenceServiceDefinition, "chat");
    expect(definition.methods.chat.responseType).toBe(EncodedMessage);
    expect(definition.methods.chat.requestType).toBe(InferenceServiceDefinition.methods.chat.requestType);
    expect(definition.methods.complete).toBe(InferenceServiceDefinition.methods.complete);
    expect(definition.fullName).toBe("vlinders.v1.InferenceService");
  });
});
