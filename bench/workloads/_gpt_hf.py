"""The gpt workload's nanoGPT model as a transformers GPT-2, for the generate phase.

nanoGPT is GPT-2's architecture (learned positions, pre-LayerNorm blocks, exact GELU,
biases, the output head tied to the token embedding), so its weights map one to one onto
``GPT2LMHeadModel``; GPT-2's ``Conv1D`` layers hold their matrices transposed. Generating
through transformers gives the gpt model the same generate call, KV caches (dynamic,
static), attention implementations and compile path as any causal LM here, instead of a
decode loop of our own. Tokens are bytes (the gpt corpus is byte-level).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from bench.workloads.gpt_model import GPT

# GPT-2's Conv1D layers (weight stored as in x out): nanoGPT's nn.Linear weights transposed.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class ByteTokenizer:
    """Text to its UTF-8 bytes, the gpt model's tokens. Byte 0 pads (it never occurs in the
    corpus's source text); there is no end-of-sequence token."""

    pad_token_id = 0
    eos_token_id = None

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}


def gpt2_config(model: GPT) -> Any:
    cfg = model.cfg
    return transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=None, eos_token_id=None, pad_token_id=ByteTokenizer.pad_token_id,
        tie_word_embeddings=True)


def to_transformers(model: GPT) -> Any:
    """``GPT2LMHeadModel`` with ``model``'s weights (fp32, eval mode, on its device)."""
    if not model.cfg.bias:
        raise ValueError("GPT-2 layers have biases: a gpt config without them does not map")
    hf = transformers.GPT2LMHeadModel(gpt2_config(model))
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("lm_head."):
            continue  # tied to the token embedding
        key = name.replace("blocks.", "h.")
        if key.endswith(_CONV1D):
            tensor = tensor.t()
        state[f"transformer.{key}"] = tensor.detach().float().contiguous()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # lm_head.weight is tied (loaded through the embedding); GPT-2's causal-mask buffers,
    # where a version keeps them, are built by the model itself.
    left = [k for k in missing if k != "lm_head.weight" and not k.endswith(".attn.bias")]
    if left or unexpected:
        raise ValueError(f"gpt -> GPT-2 weights do not map: missing {left}, "
                         f"unexpected {unexpected}")
    hf.tie_weights()
    return hf.to(next(model.parameters()).device).eval()


@torch.inference_mode()
def max_logit_difference(model: GPT, hf: Any, ids: torch.Tensor) -> float:
    """Largest absolute difference between the two models' logits on ``ids``."""
    return float((model.eval()(ids) - hf(input_ids=ids).logits).abs().max())
