"""bench: a benchmark suite for training and inference of deep-learning models.

The public API: ``UserModel`` (what a factory named by ``model = "module:function"`` in a
suite returns) and ``run_model`` (run such a factory across axes from Python, returning a
``ModelRun``). Importing ``bench`` loads no torch and no engine.
"""

from typing import Any

from bench.user import UserModel

__version__ = "0.1.0"
__all__ = ["ModelRun", "UserModel", "__version__", "run_model"]


def __getattr__(name: str) -> Any:
    if name in ("run_model", "ModelRun"):
        from bench import api  # on first use: the engine is not needed to describe a model

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
