import { callSignature, createStuckDetector } from "./stuck-detector";

const step = (signatures: string[], allFailed = false) => ({ signatures, allFailed });

describe("stuck detection", () => {
  it("lets varied calls go on", () => {
    const detector = createStuckDetector();
    for (const name of ["a", "b", "c", "d", "e", "f"]) expect(detector.observe(step([name])).kind).toBe("ok");
  });

  it("redirects on the third identical iteration and stops on the fourth", () => {
    const detector = createStuckDetector();
    expect(detector.observe(step(["a"])).kind).toBe("ok");
    expect(detector.observe(step(["a"])).kind).toBe("ok");
    expect(detector.observe(step(["a"]))).toEqual({ kind: "redirect", why: "it made the same tool call 3 times in a row" });
    expect(detector.observe(step(["a"])).kind).toBe("stop");
  });

  it("gives a model that changes course after the note another chance", () => {
    const detector = createStuckDetector();
    for (let index = 0; index < 3; index += 1) detector.observe(step(["a"]));
    expect(detector.observe(step(["b"])).kind).toBe("ok");
    expect(detector.observe(step(["c"])).kind).toBe("ok");
  });

  it("sees an A-B-A-B alternation", () => {
    const detector = createStuckDetector();
    expect(["a", "b", "a"].map((name) => detector.observe(step([name])).kind)).toEqual(["ok", "ok", "ok"]);
    expect(detector.observe(step(["b"]))).toEqual({ kind: "redirect", why: "it alternates between the same two tool calls" });
    expect(detector.observe(step(["a"])).kind).toBe("stop");
  });

  it("sees three iterations in a row whose calls all failed", () => {
    const detector = createStuckDetector();
    expect(detector.observe(step(["a"], true)).kind).toBe("ok");
    expect(detector.observe(step(["b"], true)).kind).toBe("ok");
    expect(detector.observe(step(["c"], true))).toEqual({ kind: "redirect", why: "every tool call failed 3 iterations in a row" });
  });

  it("ignores iterations without tool calls", () => {
    const detector = createStuckDetector();
    detector.observe(step(["a"]));
    detector.observe(step(["a"]));
    expect(detector.observe(step([])).kind).toBe("ok");
  });

  it("compares arguments canonically: key order and spacing do not matter, values do", () => {
    expect(callSignature("read_file", '{"path":"a","limit":2}')).toBe(callSignature("read_file", '{ "limit": 2, "path": "a" }'));
    expect(callSignature("read_file", '{"path":"a"}')).not.toBe(callSignature("read_file", '{"path":"b"}'));
    expect(callSignature("read_file", '{"path": ')).toBe('read_file {"path":');
  });
});
