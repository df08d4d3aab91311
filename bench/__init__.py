"""bench: a benchmark suite for training and inference of deep-learning models."""

__version__ = "0.1.0"
