export { startMesh, type Mesh, type MeshOptions } from "./mesh";
export { spawnService, type MeshProcess, type SpawnServiceOptions } from "./mesh-process";
export { formatLogLine } from "./log-format";
