"""Running cases: the worker process, isolation around it, and the sweep over a suite."""
