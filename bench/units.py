"""Units and defaults named once, for every layer (no imports: safe anywhere)."""

MIB = 2**20  # bytes in a MiB; every memory figure is in MiB, never MB
# MLPerf's rule: a variant passes at >= 99% of its fp32 reference's task metric.
DEFAULT_PARITY_TARGET = 0.99
