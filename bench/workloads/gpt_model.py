"""A decoder-only transformer you can read in one sitting (after nanoGPT).

Pre-norm blocks of causal self-attention (``scaled_dot_product_attention``) and a 4x GELU
MLP, learned positions, the token embedding tied to the output head. Optional activation
checkpointing per block. Byte-level tokens: configs for this project's text use the 256
byte values; ``gpt2-124m`` keeps GPT-2's padded 50304-entry vocabulary so its shapes, FLOPs
and memory are GPT-2's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # context length, tokens
    vocab_size: int
    bias: bool = True


CONFIGS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=256),
    "small": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=256),
    "gpt2-124m": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024,
                           vocab_size=50304),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.checkpointing = checkpointing
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (in place, so a compiled wrapper stays valid): normal(0.02),
        residual projections scaled by 1/sqrt(2 * n_layer)."""
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.cfg.n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)  # LayerNorm gains

    def fsdp_units(self) -> list[nn.Module]:
        """What fully_shard wraps apart (bench.variants.parallel): each block, so one
        block's parameters are gathered at a time; embeddings and head stay in the root."""
        return list(self.blocks)

    def non_embedding_parameters(self) -> int:
        """N of the 6N FLOPs rule: every parameter except the position embeddings (the
        token embedding counts once, as the tied output head's matmul)."""
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.shape
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.lm_head(self.ln_f(x))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per token (logits upcast to fp32)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def analytic_flops_per_token(model: GPT, seq_len: int, train: bool) -> tuple[float, str]:
    """The PaLM / nanoGPT estimate: 6N + 12·L·d·T per token for a training step (forward
    2N + 4·L·d·T, backward twice that); attention scores counted for the full T x T."""
    cfg = model.cfg
    n = model.non_embedding_parameters()
    attention = 4 * cfg.n_layer * cfg.n_embd * seq_len
    if train:
        return 6 * n + 3 * attention, f"6N + 12·L·d·T per token, N={n}, L={cfg.n_layer}, " \
                                      f"d={cfg.n_embd}, T={seq_len}"
    return 2 * n + attention, f"2N + 4·L·d·T per token, N={n}, L={cfg.n_layer}, " \
                              f"d={cfg.n_embd}, T={seq_len}"
