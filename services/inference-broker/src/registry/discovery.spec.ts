import type { Logger } from "@vlinders/service-runtime";
import type { WorkerClient } from "../upstream/worker-client";
import { discoverModels, parseWorkerUrls } from "./discovery";
import type { WorkerEndpoint } from "./model-registry";

describe("parseWorkerUrls", () => {
  it("names workers by position and removes trailing slashes and the /v1 suffix", () => {
    expect(parseWorkerUrls("http://gpu-0:8000,http://gpu-1:8000/,http://gpu-2:8000/v1,http://gpu-3:8000/v1/,http://gpu-4:8000/v1//")).toEqual([
      { id: "worker-0", url: "http://gpu-0:8000" },
      { id: "worker-1", url: "http://gpu-1:8000" },
      { id: "worker-2", url: "http://gpu-2:8000" },
      { id: "worker-3", url: "http://gpu-3:8000" },
      { id: "worker-4", url: "http://gpu-4:8000" },
    ]);
  });

  it("keeps a path prefix other than /v1", () => {
    expect(parseWorkerUrls("https://proxy.example/vllm/a/v1/")).toEqual([{ id: "worker-0", url: "https://proxy.example/vllm/a" }]);
  });

  it("trims spaces and skips empty entries without leaving gaps in the ids", () => {
    expect(parseWorkerUrls(" http://a:8000/v1 , ,http://b:8000,")).toEqual([
      { id: "worker-0", url: "http://a:8000" },
      { id: "worker-1", url: "http://b:8000" },
    ]);
  });

  it("gives no workers for an empty value", () => {
    expect(parseWorkerUrls("")).toEqual([]);
    expect(parseWorkerUrls(" , ")).toEqual([]);
  });
});

describe("discoverModels", () => {
  const gpu0: WorkerEndpoint = { id: "worker-0", url: "http://gpu-0:8000" };
  const gpu1: WorkerEndpoint = { id: "worker-1", url: "http://gpu-1:8000" };

  function fakeClient(answers: Record<string, unknown>): WorkerClient {
    const client: Pick<WorkerClient, "getJson"> = {
      getJson: async (worker, path) => {
        expect(path).toBe("/v1/models");
        const answer = answers[worker.id];
        if (answer instanceof Error) throw answer;
        return answer;
      },
    };
    return client as WorkerClient;
  }

  function fakeLogger(): { logger: Logger; warn: jest.Mock } {
    const warn = jest.fn();
    return { logger: { warn } as unknown as Logger, warn };
  }

  it("merges the models of all workers and keeps vLLM's max_model_len", async () => {
    const { logger } = fakeLogger();
    const client = fakeClient({
      "worker-0": { object: "list", data: [{ id: "qwen", object: "model", max_model_len: 32768 }] },
      "worker-1": { object: "list", data: [{ id: "qwen", max_model_len: 32768 }, { id: "bge-m3" }] },
    });
    const catalog = await discoverModels([gpu0, gpu1], client, { logger, signal: new AbortController().signal, defaultModel: "qwen" });
    expect(catalog).toEqual({
      defaultModel: "qwen",
      models: [
        { id: "qwen", aliases: [], workers: [gpu0, gpu1], maxContextTokens: 32768 },
        { id: "bge-m3", aliases: [], workers: [gpu1], maxContextTokens: 0 },
      ],
    });
  });

  it("leaves out a worker that does not answer and logs it, and skips entries without an id", async () => {
    const { logger, warn } = fakeLogger();
    const client = fakeClient({ "worker-0": new Error("ECONNREFUSED"), "worker-1": { data: [{ id: "" }, { id: 7 }, { id: "qwen" }] } });
    const catalog = await discoverModels([gpu0, gpu1], client, { logger, signal: new AbortController().signal });
    expect(catalog).toEqual({ models: [{ id: "qwen", aliases: [], workers: [gpu1], maxContextTokens: 0 }] });
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn.mock.calls[0]?.[0]).toMatchObject({ worker: "worker-0", url: "http://gpu-0:8000" });
  });
});
