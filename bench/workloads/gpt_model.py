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
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Widths from the tensors, not the config: under tensor parallelism c_attn's output
        # is this rank's heads only (q, k and v of n_head / world heads).
        b, t, _ = x.shape
        qkv = self.c_attn(x)
        q, k, v = qkv.split(qkv.shape[-1] // 3, dim=2)
        q, k, v = (z.view(b, t, -1, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, -1))

    def group_heads_by_rank(self, world: int) -> None:
        """Reorder c_attn's output rows from [q; k; v] to [q_0; k_0; v_0; q_1; ...], the
        heads of rank r together, so a column-wise split in ``world`` contiguous parts hands
        each rank the q, k and v of its own heads (the same function, rows permuted)."""
        def regroup(t: torch.Tensor) -> torch.Tensor:
            parts = [z.chunk(world, dim=0) for z in t.chunk(3, dim=0)]
            return torch.cat([parts[j][r] for r in range(world) for j in range(3)], dim=0)

        with torch.no_grad():
            self.c_attn.weight.copy_(regroup(self.c_attn.weight))
            if self.c_attn.bias is not None:
                self.c_attn.bias.copy_(regroup(self.c_attn.bias))


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

    def pipeline_stage(self, stage: int, stages: int) -> GPTStage:
        """Stage ``stage`` of ``stages`` at block boundaries (bench.variants.parallel)."""
        if not 1 <= stages <= self.cfg.n_layer:
            raise ValueError(f"{self.cfg.n_layer} blocks do not make {stages} stages")
        return GPTStage(self, stage, stages)

    def tied_weight(self) -> nn.Parameter:
        """The weight the first stage's embedding and the last stage's head share."""
        return self.wte.weight

    def tensor_parallel_plan(self, world: int,
                             sequence_parallel: bool = False) -> dict[str, object]:
        """Megatron-style tensor parallelism for ``parallelize_module``: in each block, the
        attention's qkv and the MLP's first layer split column-wise (each rank its heads,
        its quarter of the hidden units), their output projections row-wise (partial sums
        all-reduced); embeddings, norms and the tied head replicated. Reorders c_attn's
        rows first (CausalSelfAttention.group_heads_by_rank).

        With ``sequence_parallel`` (Korthikanti et al., 2022; torchtitan's plan), the
        residual stream between the blocks is split along the sequence instead: the norms
        run on each rank's tokens (SequenceParallel), attention and MLP all-gather their
        input and reduce-scatter their output (row-wise layers with Shard(1) outputs); the
        embeddings' sum is split on entering the first block and gathered again for the
        tied head, which stays replicated with the embedding it shares."""
        # On use: only a tensor-parallel case loads torch.distributed.tensor.
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            PrepareModuleInput,
            RowwiseParallel,
            SequenceParallel,
        )

        if self.cfg.n_head % world:
            raise ValueError(f"{self.cfg.n_head} heads do not split over {world} ranks")
        if sequence_parallel and self.cfg.block_size % world:
            raise ValueError(f"a context of {self.cfg.block_size} does not split over {world} "
                             "ranks")
        out = {"output_layouts": Shard(1)} if sequence_parallel else {}
        plan: dict[str, object] = {}
        for i, block in enumerate(self.blocks):
            block.attn.group_heads_by_rank(world)
            plan.update({f"blocks.{i}.attn.c_attn": ColwiseParallel(),
                         f"blocks.{i}.attn.c_proj": RowwiseParallel(**out),
                         f"blocks.{i}.mlp.c_fc": ColwiseParallel(),
                         f"blocks.{i}.mlp.c_proj": RowwiseParallel(**out)})
            if sequence_parallel:
                gather = PrepareModuleInput(input_layouts=(Shard(1),),
                                            desired_input_layouts=(Replicate(),))
                plan.update({f"blocks.{i}.ln_1": SequenceParallel(),
                             f"blocks.{i}.attn": gather,
                             f"blocks.{i}.ln_2": SequenceParallel(),
                             f"blocks.{i}.mlp": gather})
        if sequence_parallel:
            plan.update({
                "blocks.0": PrepareModuleInput(input_layouts=(Replicate(),),
                                               desired_input_layouts=(Shard(1),),
                                               use_local_output=True),
                "ln_f": SequenceParallel(),
                "lm_head": PrepareModuleInput(input_layouts=(Shard(1),),
                                              desired_input_layouts=(Replicate(),),
                                              use_local_output=True)})
        return plan

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


class GPTStage(nn.Module):
    """One stage of a pipeline of ``stages`` over a GPT: the embeddings (first stage), its
    contiguous run of blocks, the final norm and the head (last stage). Its parts are the
    full model's own modules, so a stage trains the full model's parameters in place; the
    tied head on the last stage is the embedding's weight on that rank (its gradient is
    summed with the first stage's: bench.variants.parallel.Pipeline)."""

    def __init__(self, model: GPT, stage: int, stages: int) -> None:
        super().__init__()
        bounds = [round(i * model.cfg.n_layer / stages) for i in range(stages + 1)]
        self.first, self.last = stage == 0, stage == stages - 1
        self.wte = model.wte if self.first else None
        self.wpe = model.wpe if self.first else None
        self.blocks = nn.ModuleList(model.blocks[bounds[stage]:bounds[stage + 1]])
        self.ln_f = model.ln_f if self.last else None
        self.lm_head = model.lm_head if self.last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x)) if self.last else x


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
