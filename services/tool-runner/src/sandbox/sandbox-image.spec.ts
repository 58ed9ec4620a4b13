import { spawn } from "node:child_process";
import Docker from "dockerode";
import { createLogger } from "@vlinders/service-runtime";
import { ensureSandboxImage, recipeLabel } from "./sandbox-image";

// Real Docker, and a real build of the image from this machine's files.
const docker = new Docker();
const logger = createLogger({ service: "test", level: "silent" });
const image = `vlinders-sandbox:image-spec-${process.pid}`;

/** A one-file image tagged `image`, labelled as built by an older recipe. */
async function importStaleImage(): Promise<string> {
  const tar = spawn("tar", ["-c", "-C", "/etc", "hostname"], { stdio: ["ignore", "pipe", "inherit"] });
  const [repo, tag] = image.split(":") as [string, string];
  const progress = await docker.importImage(tar.stdout, { repo, tag, changes: [`LABEL ${recipeLabel}=an-older-recipe`] } as object);
  await new Promise<void>((resolve, reject) => docker.modem.followProgress(progress, (error: Error | null) => (error ? reject(error) : resolve())));
  return (await docker.getImage(image).inspect()).Id;
}

describe("ensureSandboxImage", () => {
  afterAll(async () => {
    await docker.getImage(image).remove({ force: true }).catch(() => undefined);
  });

  it("rebuilds an image of an older recipe, and removes the one it replaced", async () => {
    const stale = await importStaleImage();
    await ensureSandboxImage({ docker, image, build: true, logger, signal: AbortSignal.timeout(240_000) });

    const rebuilt = await docker.getImage(image).inspect();
    expect(rebuilt.Id).not.toBe(stale);
    expect(rebuilt.Config?.Labels?.[recipeLabel]).toMatch(/^[0-9a-f]{16,}$/);
    // Not left behind untagged.
    await expect(docker.getImage(stale).inspect()).rejects.toMatchObject({ statusCode: 404 });
  }, 300_000);
});
