import { AbortError } from "abort-controller-x";
import { ServerError, Status } from "nice-grpc-common";
import { ChatChunkTranslator, apiKeyRejectedError } from "../upstream/chat-chunk-translator";
import { classifyFailure, type FailureVerdict } from "./failure-classification";

const live = (): AbortSignal => new AbortController().signal;
const aborted = (): AbortSignal => AbortSignal.abort();
const verdictOf = (error: unknown): Pick<FailureVerdict, "retryable" | "blameWorker"> => {
  const { retryable, blameWorker } = classifyFailure(error, live(), live());
  return { retryable, blameWorker };
};

describe("classifyFailure", () => {
  it.each([
    ["UNAVAILABLE", new ServerError(Status.UNAVAILABLE, "worker w is unreachable"), { retryable: true, blameWorker: true }],
    ["INTERNAL", new ServerError(Status.INTERNAL, "worker w sent an event that is not JSON"), { retryable: true, blameWorker: true }],
    ["NOT_FOUND", new ServerError(Status.NOT_FOUND, "worker w does not serve the model"), { retryable: true, blameWorker: true }],
    ["RESOURCE_EXHAUSTED", new ServerError(Status.RESOURCE_EXHAUSTED, "worker w answered HTTP 429"), { retryable: true, blameWorker: false }],
    ["INVALID_ARGUMENT", new ServerError(Status.INVALID_ARGUMENT, "worker w answered HTTP 400"), { retryable: false, blameWorker: false }],
    ["a plain error", new Error("socket hang up"), { retryable: true, blameWorker: true }],
    ["an abort", new AbortError(), { retryable: false, blameWorker: false }],
  ])("classifies %s", (_name, error, expected) => {
    expect(verdictOf(error)).toEqual(expected);
  });

  it("neither retries nor blames the worker when the provider rejected the API key before the stream", () => {
    const error = apiKeyRejectedError({ id: "openai-0", provider: "openai" }, 401, true);
    expect(classifyFailure(error, live(), live())).toEqual({ retryable: false, blameWorker: false, reason: "failed_precondition" });
  });

  it("neither retries nor blames the worker for an error chunk with code 403", () => {
    const translator = new ChatChunkTranslator("openai-0");
    let error: unknown;
    try {
      translator.translate({ error: { message: "forbidden", code: 403 } });
    } catch (thrown: unknown) {
      error = thrown;
    }
    expect(verdictOf(error)).toEqual({ retryable: false, blameWorker: false });
  });

  it("puts the caller's cancel and the worker's removal first", () => {
    const failure = new ServerError(Status.UNAVAILABLE, "worker w broke off the stream");
    expect(classifyFailure(failure, aborted(), live())).toEqual({ retryable: false, blameWorker: false, reason: "cancelled" });
    expect(classifyFailure(failure, live(), aborted())).toEqual({ retryable: true, blameWorker: false, reason: "worker_removed" });
  });
});
