"""bench: a benchmark suite for training and inference of deep-learning models.

The public API: ``UserModel`` (what a factory named by ``model = "module:function"`` in a
suite returns). Importing ``bench`` loads no torch.
"""

from bench.user import UserModel

__version__ = "0.1.0"
__all__ = ["UserModel", "__version__"]
