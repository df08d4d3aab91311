"""How figures are taken: timers, the adaptive sampler, statistics, memory, environment."""
