import type { VllmSimulatorOptions } from "./options";
import type { SeededRandom } from "./random";

/**
 * A latency as the simulator applies it: grown by load, as a bigger batch makes every step of a
 * real GPU slower (`* (1 + loadLatencyFactor * running / maxNumSeqs)`), then jittered uniformly by
 * ±`jitterRatio`. Draws one number from `random` only when there is jitter.
 */
export function scaledLatency(
  baseMs: number,
  options: Pick<VllmSimulatorOptions, "loadLatencyFactor" | "maxNumSeqs" | "jitterRatio">,
  running: number,
  random: SeededRandom,
): number {
  let ms = baseMs;
  if (options.loadLatencyFactor > 0) ms *= 1 + (options.loadLatencyFactor * running) / options.maxNumSeqs;
  if (options.jitterRatio > 0) ms *= 1 + options.jitterRatio * (2 * random.next() - 1);
  return ms;
}
