import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

describe("generated code", () => {
  it("is what regenerating from proto/ gives (run `pnpm --filter @vlinders/proto generate` after editing proto/)", async () => {
    const packageDir = join(__dirname, "..");
    const { stdout } = await run(process.execPath, [join(packageDir, "scripts/generate.mjs"), "--check"], { cwd: packageDir });
    expect(stdout).toContain("src/gen matches proto/");
  }, 60_000);
});
