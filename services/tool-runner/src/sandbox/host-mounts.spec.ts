import { MountError, MountShell } from "./host-mounts";

// The mount shell with harmless scripts: its queue, its errors, its deadline and its restart.
describe("MountShell", () => {
  let shell: MountShell;
  beforeEach(() => {
    shell = new MountShell();
  });
  afterEach(async () => {
    await shell.close();
  });

  it("runs scripts one after another with their arguments, quoted once", async () => {
    const odd = "it's a \"path\" with $HOME and `x`";
    await expect(Promise.all([shell.run('test "$1" = a && test "$#" = 2', ["a", "b"]), shell.run('test "$1" = "$2"', [odd, odd])])).resolves.toEqual([undefined, undefined]);
  });

  it("rejects a failing script with its output, and goes on", async () => {
    await expect(shell.run('echo "no such mount: $1" >&2; exit 3', ["/x"])).rejects.toThrow(new MountError("mount script failed (exit 3): no such mount: /x"));
    await expect(shell.run("true", [])).resolves.toBeUndefined();
  });

  it("kills a script that outlives its deadline and starts a new shell for the next one", async () => {
    const startedAt = performance.now();
    await expect(shell.run("sleep 10", [], 200)).rejects.toThrow(/did not finish within 200 ms/);
    expect(performance.now() - startedAt).toBeLessThan(2_000);
    await expect(shell.run("exit 0", [])).resolves.toBeUndefined();
  });
});
