"""Variants a case can run under: devices and precisions (later: quantization, pruning)."""
