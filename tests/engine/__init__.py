"""The engine with real processes: isolated and forked workers, ranks, A/B rounds, LoadGen,
signals, hostile inputs, modes. A test accepts any measured status unless it is about
contention."""
