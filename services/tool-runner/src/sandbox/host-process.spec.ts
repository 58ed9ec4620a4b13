import { withDeadline } from "./host-process";

describe("withDeadline", () => {
  it("hands a value that arrives after the deadline to onAbandoned, so that it can be cleaned up", async () => {
    let resolveLate!: (value: string) => void;
    const late = new Promise<string>((resolve) => {
      resolveLate = resolve;
    });
    const abandoned: string[] = [];
    await expect(withDeadline(late, 20, "creating a container", { onAbandoned: (value) => abandoned.push(value) })).rejects.toThrow("creating a container within 20 ms");
    resolveLate("container-1");
    await late;
    expect(abandoned).toEqual(["container-1"]);
  });

  it("does not call onAbandoned for a value in time", async () => {
    const abandoned: number[] = [];
    await expect(withDeadline(Promise.resolve(7), 1_000, "x", { onAbandoned: (value) => abandoned.push(value) })).resolves.toBe(7);
    expect(abandoned).toEqual([]);
  });

  it("gives up at once when the signal aborts", async () => {
    const controller = new AbortController();
    const never = new Promise<never>(() => {});
    const waiting = withDeadline(never, 60_000, "inspecting the image", { signal: controller.signal });
    controller.abort(new Error("shutting down"));
    await expect(waiting).rejects.toThrow("shutting down");
  });
});
