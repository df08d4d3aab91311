"""Units and defaults named once, for every layer (no imports: safe anywhere)."""

MIB = 2**20  # bytes in a MiB; every memory figure is in MiB, never MB
# MLPerf's rule: a variant passes at >= 99% of its fp32 reference's task metric.
DEFAULT_PARITY_TARGET = 0.99

# Upper bounds on sizes a suite may ask for: far above any real run, low enough that a typo
# (2**63, 1e9) is refused in one line by the loader instead of failing later in a worker.
MAX_BATCH_SIZE = 1 << 20  # samples per step
MAX_EPOCHS = 100_000
MAX_STEPS = 100_000_000
MAX_MEMORY_MIB = 1 << 24  # 16 TiB: a memory cap or a corpus larger than any machine's
