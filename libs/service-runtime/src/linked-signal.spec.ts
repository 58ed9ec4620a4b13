import { bindDeadline, deadlineOf } from "./call-deadline";
import { linkSignals } from "./linked-signal";

describe("linkSignals", () => {
  it("aborts with the reason of the first source that aborts", () => {
    const first = new AbortController();
    const second = new AbortController();
    const linked = linkSignals(first.signal, second.signal);
    second.abort(new Error("second went first"));
    first.abort(new Error("too late"));
    expect(linked.signal.aborted).toBe(true);
    expect((linked.signal.reason as Error).message).toBe("second went first");
  });

  it("is aborted at once when a source already is", () => {
    const done = new AbortController();
    done.abort("already");
    expect(linkSignals(new AbortController().signal, done.signal).signal.reason).toBe("already");
  });

  it("carries the earliest deadline of its sources, so that a call made with it inherits the caller's", () => {
    const [call, later, none] = [new AbortController(), new AbortController(), new AbortController()];
    bindDeadline(call.signal, 1_000);
    bindDeadline(later.signal, 5_000);
    expect(deadlineOf(linkSignals(none.signal, later.signal, call.signal).signal)).toBe(1_000);
    expect(deadlineOf(linkSignals(none.signal).signal)).toBeUndefined();
  });

  it("leaves no listener on a long-lived source once disposed", () => {
    const longLived = new AbortController();
    for (let index = 0; index < 100; index += 1) linkSignals(longLived.signal, new AbortController().signal).dispose();
    const last = linkSignals(longLived.signal);
    last.dispose();
    longLived.abort();
    expect(last.signal.aborted).toBe(false);
  });
});
