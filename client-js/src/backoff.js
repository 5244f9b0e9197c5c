// Exponential backoff with jitter.

/**
 * The delay before retry number `attempt` (0-based): `min * 2^attempt`, capped at `max`, minus a
 * random share of up to `jitter` so that many clients do not retry in step.
 */
export function backoff(attempt, { min = 250, max = 10000, jitter = 0.5 } = {}, random = Math.random) {
  const base = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.round(base * (1 - jitter * random()));
}
