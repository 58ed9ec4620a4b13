import { cutMarker, OutputCapture } from "./output-capture";

describe("OutputCapture", () => {
  it("keeps everything under the limit", () => {
    const capture = new OutputCapture({ limitBytes: 10, killBytes: 100, onKillLimit: () => {} });
    capture.push(Buffer.from("hello"));
    capture.push(Buffer.from("!"));
    expect(capture.result()).toEqual({ output: "hello!", truncated: false });
  });

  it("keeps the head and the tail and marks the cut", () => {
    const capture = new OutputCapture({ limitBytes: 6, killBytes: 1000, onKillLimit: () => {} });
    for (const piece of ["ab", "cdef", "ghij", "k", "lmn"]) capture.push(Buffer.from(piece));
    expect(capture.result()).toEqual({ output: `abc${cutMarker(8)}lmn`, truncated: true });
    expect(capture.totalBytes).toBe(14);
  });

  it("calls onKillLimit once when the kill limit is passed", () => {
    let kills = 0;
    const capture = new OutputCapture({ limitBytes: 4, killBytes: 5, onKillLimit: () => (kills += 1) });
    capture.push(Buffer.from("12345"));
    expect(kills).toBe(0);
    capture.push(Buffer.from("6"));
    capture.push(Buffer.from("7"));
    expect(kills).toBe(1);
  });

  it("does not split a multi-byte character at the cut", () => {
    const capture = new OutputCapture({ limitBytes: 4, killBytes: 1000, onKillLimit: () => {} });
    capture.push(Buffer.from("aé€zzzz€é"));
    const { output } = capture.result();
    expect(output).not.toContain("\uFFFD");
    // The head's two bytes end inside "é", so the head keeps only "a".
    expect(output).toBe(`a${cutMarker(12)}é`);
  });
});
