/** The benchmark's knobs: full-size defaults, `--quick` for a smoke run, and one flag per knob. */
export interface BenchOptions {
  quick: boolean;
  phases: ReadonlySet<"latency" | "capacity" | "hold">;
  /** The simulated worker of the latency phase: time to first token and inter-token latency. */
  ttftMs: number;
  itlMs: number;
  /** Tokens per answer (the prompt is echoed, so the prompt has this many words). */
  tokens: number;
  /** Streams in flight to compare the paths at. */
  latencyN: number[];
  /** The paths of the latency comparison. */
  latencyPaths: Array<"direct" | "broker" | "mesh">;
  /** At N = 1 streams run one after the other: shorter answers keep 200 samples inside the budget. */
  n1Streams: number;
  n1Tokens: number;
  /** Measured streams per path at N > 1 (after N warm-up streams), at least `cycles` x N. */
  streams: number;
  cycles: number;
  /** HTTP/2 connections the client opens to each gRPC door. */
  channels: number;
  /** The direct path's HTTP client: node:http (the lightest) or fetch (what the broker uses). */
  directClient: "http" | "fetch";
  capacityItlMs: number;
  capacityTokens: number;
  capacityConcurrency: number[];
  capacityStepS: number;
  capacityPaths: Array<"mesh" | "broker" | "direct">;
  /** The inter-token latency p99 that a capacity step must stay under. */
  itlLimitMs: number;
  holdStreams: number;
  holdRampS: number;
  holdTokens: number;
  holdItlMs: number;
  /** CPU-profile the services during an extra N = 100 run through the mesh. */
  profile: boolean;
  /** The whole benchmark stops starting phases after this. */
  budgetS: number;
  logLevel: string;
  secret: string;
}

export const usage = `usage: npm run bench:inference -- [flags]
  --quick                   a smoke run of 2 to 4 minutes (small counts, short steps, no profile)
  --phases LIST             latency,capacity,hold (default: all)
  --n LIST                  streams in flight for the latency comparison (1,100,1000)
  --paths LIST              paths of the latency comparison (direct,broker,mesh)
  --streams K               measured streams per path at N > 1 (1200; at least 3 x N)
  --n1-streams K            sequential streams at N = 1 (200)      --n1-tokens T  their length (8)
  --tokens T                tokens per answer at N > 1 (64)        --ttft-ms, --itl-ms  the worker (20, 20)
  --channels C              HTTP/2 connections per gRPC door (8)
  --direct-client http|fetch  the direct path's HTTP client (http: node:http, the lightest)
  --capacity-steps LIST     concurrent streams per capacity step (50,100,200,300,400,600,800,1200,1600)
  --capacity-itl-ms MS      the worker's inter-token latency there (5)   --capacity-tokens T (256)
  --capacity-step-s S       measured seconds per step (5)     --capacity-paths LIST (mesh,direct)
  --itl-limit-ms MS         the ITL p99 a capacity step must stay under (50)
  --hold-streams K          concurrent slow streams to hold (10000)   --hold-ramp-s S (15)
  --hold-tokens T           tokens per slow stream (25)               --hold-itl-ms MS (1000)
  --no-profile              skip the CPU profile of the services (on by default, off with --quick)
  --budget-s S              start no phase that would end after S seconds (600)
  --log-level LEVEL         LOG_LEVEL of the services (warn)`;

function list(value: string): number[] {
  const numbers = value.split(",").map((item) => Number(item.trim()));
  if (numbers.some((item) => !Number.isFinite(item) || item <= 0)) throw new Error(`not a list of positive numbers: ${value}`);
  return numbers;
}

function positive(name: string, value: string | undefined): number {
  const number = Number(value);
  if (value === undefined || !Number.isFinite(number) || number <= 0) throw new Error(`${name}: needs a positive number (got ${String(value)})`);
  return number;
}

export function parseBenchOptions(argv: readonly string[]): BenchOptions {
  const quick = argv.includes("--quick");
  const options: BenchOptions = {
    quick,
    phases: new Set(["latency", "capacity", "hold"]),
    ttftMs: 20,
    itlMs: 20,
    tokens: 64,
    latencyN: [1, 100, 1000],
    latencyPaths: ["direct", "broker", "mesh"],
    n1Streams: quick ? 40 : 200,
    n1Tokens: 8,
    streams: quick ? 300 : 1200,
    cycles: quick ? 0 : 3,
    channels: 8,
    directClient: "http",
    capacityItlMs: 5,
    capacityTokens: quick ? 128 : 256,
    capacityConcurrency: quick ? [50, 200, 400] : [50, 100, 200, 300, 400, 600, 800, 1200, 1600],
    capacityStepS: quick ? 2 : 5,
    capacityPaths: quick ? ["mesh"] : ["mesh", "direct"],
    itlLimitMs: 50,
    holdStreams: quick ? 1000 : 10_000,
    holdRampS: quick ? 4 : 15,
    holdTokens: quick ? 8 : 25,
    holdItlMs: 1000,
    profile: !quick,
    budgetS: 600,
    logLevel: "warn",
    secret: process.env.INTERNAL_SECRET && process.env.INTERNAL_SECRET.length >= 16 ? process.env.INTERNAL_SECRET : "bench-secret-0123456789abcdef",
  };
  for (let index = 0; index < argv.length; index += 1) {
    const flag = argv[index] ?? "";
    const value = () => {
      index += 1;
      return argv[index];
    };
    switch (flag) {
      case "--quick":
        break;
      case "--phases": {
        const phases = (value() ?? "").split(",").map((phase) => phase.trim());
        for (const phase of phases) {
          if (phase !== "latency" && phase !== "capacity" && phase !== "hold") throw new Error(`--phases: unknown phase ${phase}`);
        }
        options.phases = new Set(phases as Array<"latency" | "capacity" | "hold">);
        break;
      }
      case "--n":
        options.latencyN = list(value() ?? "").map(Math.round);
        break;
      case "--paths": {
        const paths = (value() ?? "").split(",").map((path) => path.trim());
        for (const path of paths) {
          if (path !== "mesh" && path !== "broker" && path !== "direct") throw new Error(`--paths: unknown path ${path}`);
        }
        options.latencyPaths = paths as Array<"direct" | "broker" | "mesh">;
        break;
      }
      case "--streams":
        options.streams = Math.round(positive(flag, value()));
        break;
      case "--n1-streams":
        options.n1Streams = Math.round(positive(flag, value()));
        break;
      case "--n1-tokens":
        options.n1Tokens = Math.round(positive(flag, value()));
        break;
      case "--tokens":
        options.tokens = Math.round(positive(flag, value()));
        break;
      case "--ttft-ms":
        options.ttftMs = positive(flag, value());
        break;
      case "--itl-ms":
        options.itlMs = positive(flag, value());
        break;
      case "--channels":
        options.channels = Math.round(positive(flag, value()));
        break;
      case "--direct-client": {
        const client = value();
        if (client !== "http" && client !== "fetch") throw new Error(`--direct-client: http or fetch (got ${String(client)})`);
        options.directClient = client;
        break;
      }
      case "--capacity-steps":
        options.capacityConcurrency = list(value() ?? "").map(Math.round);
        break;
      case "--capacity-itl-ms":
        options.capacityItlMs = positive(flag, value());
        break;
      case "--capacity-tokens":
        options.capacityTokens = Math.round(positive(flag, value()));
        break;
      case "--capacity-step-s":
        options.capacityStepS = positive(flag, value());
        break;
      case "--capacity-paths": {
        const paths = (value() ?? "").split(",").map((path) => path.trim());
        for (const path of paths) {
          if (path !== "mesh" && path !== "broker" && path !== "direct") throw new Error(`--capacity-paths: unknown path ${path}`);
        }
        options.capacityPaths = paths as Array<"mesh" | "broker" | "direct">;
        break;
      }
      case "--itl-limit-ms":
        options.itlLimitMs = positive(flag, value());
        break;
      case "--hold-streams":
        options.holdStreams = Math.round(positive(flag, value()));
        break;
      case "--hold-ramp-s":
        options.holdRampS = positive(flag, value());
        break;
      case "--hold-tokens":
        options.holdTokens = Math.round(positive(flag, value()));
        break;
      case "--hold-itl-ms":
        options.holdItlMs = positive(flag, value());
        break;
      case "--profile":
        options.profile = true;
        break;
      case "--no-profile":
        options.profile = false;
        break;
      case "--budget-s":
        options.budgetS = positive(flag, value());
        break;
      case "--log-level":
        options.logLevel = value() ?? "warn";
        break;
      default:
        throw new Error(`unknown flag ${flag}`);
    }
  }
  return options;
}
