import { createHash, timingSafeEqual } from "node:crypto";
import { ServerError, Status, type Metadata } from "nice-grpc-common";

/** The metadata key that carries the mesh's shared secret. */
export const internalAuthHeader = "x-internal-auth";

const healthMethodPrefix = "/grpc.health.v1.Health/";

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

/**
 * Refuses every call that does not carry the shared secret, except health checks (probes carry no
 * credentials). Both sides are hashed first so that the comparison takes the same time whatever
 * the length or content of the offered value.
 */
export function createInternalAuthCheck(secret: string): (methodPath: string, metadata: Metadata) => void {
  const expected = digest(secret);
  return function checkInternalAuth(methodPath, metadata) {
    if (methodPath.startsWith(healthMethodPrefix)) return;
    const offered = metadata.get(internalAuthHeader);
    if (typeof offered !== "string" || offered.length === 0) {
      throw new ServerError(Status.UNAUTHENTICATED, `missing ${internalAuthHeader} metadata`);
    }
    if (!timingSafeEqual(digest(offered), expected)) {
      throw new ServerError(Status.UNAUTHENTICATED, `invalid ${internalAuthHeader} metadata`);
    }
  };
}
