"""Text conditioning inside the U-Net: cross-attention, and Stable Diffusion's "spatial transformer".

Rombach et al. 2022 (LDM, §3.3): to condition on a sequence (a prompt's per-token text states), the U-Net
gets cross-attention layers. At a feature map h [B, C, H, W], every position becomes a query and every token
of the context c [B, L, D] a key and a value:

    Q = W_Q · h,   K = W_K · c,   V = W_V · c,   CrossAttention(h, c) = softmax(Q Kᵀ / √d) · V

so each position reads a mixture of the words, weighted by how well its query matches each word's key.
Padding tokens of the context are masked out (their weights are exactly 0), so the prompt "a seven" means
the same with 2 or 30 pads after it.

`SpatialTransformer` is LDM's block (`ldm/modules/attention.py`): GroupNorm, a 1×1 projection to tokens,
then a transformer block (self-attention, cross-attention to the context, an MLP; each pre-LayerNorm and
residual), a zero-initialised 1×1 projection back, and a residual connection around all of it: the
untrained block is the identity, as the U-Net's other blocks.

Set ``module.store_attention = True`` on a `CrossAttention` to keep its last attention weights
[B, heads, H·W, L] in ``module.attention``; `record_cross_attention(model)` does it for every cross-attention
of a U-Net while a block runs and returns the maps per layer (notebook 11 draws which word each position
looks at).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
    """softmax(Q Kᵀ / √d) V for q [B, h, N, d], k/v [B, h, L, d]; `mask` [B, L] (True = attend) gives
    padded keys weight 0. Returns (output [B, h, N, d], weights [B, h, N, L])."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :].to(torch.bool), float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


class CrossAttention(nn.Module):
    """Multi-head attention from `dim`-wide queries to a context of `context_dim`-wide tokens (self-attention
    when `context_dim` is None: the context is the input itself)."""

    def __init__(self, dim: int, context_dim: int | None, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be divisible by num_heads={num_heads}")
        kv_dim = dim if context_dim is None else context_dim
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.store_attention = False
        self.attention: torch.Tensor | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, dim]; context [B, L, context_dim] (None: self-attention); mask [B, L] bool."""
        source = x if context is None else context
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(source)), self._heads(self.to_v(source))
        if self.store_attention:
            out, weights = attention(q, k, v, mask)
            self.attention = weights.detach()
        else:  # the fused kernel: same result, less memory
            attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        B, _, N, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(B, N, -1))


class TransformerBlock(nn.Module):
    """x + SelfAttn(LN x); x + CrossAttn(LN x, context); x + MLP(LN x) (LDM's BasicTransformerBlock, with a
    GELU MLP in place of its GEGLU)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = CrossAttention(dim, None, num_heads)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context, mask)
        return x + self.mlp(self.norm3(x))


class SpatialTransformer(nn.Module):
    """LDM's spatial transformer on a feature map [B, C, H, W]: GroupNorm, 1×1 conv to tokens, one
    `TransformerBlock` with cross-attention to the context, zero-initialised 1×1 conv back, residual."""

    def __init__(self, ch: int, context_dim: int, num_heads: int, num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, ch)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.block = TransformerBlock(ch, context_dim, num_heads)
        self.proj_out = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B, HW, C]
        h = self.block(h, context, mask)
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


# -- looking inside: which word each position attends to ----------------------------------------------------------

class CrossAttentionRecord:
    """What `record_cross_attention` collected: per `SpatialTransformer` (by module name), the attention weights
    of its cross-attention at every forward call, each reshaped to [B, heads, H, W, L] (L = context tokens).

    Attributes: ``maps`` {name: [tensor per call]}, ``sizes`` {name: (H, W)} (the feature map it attends from).
    """

    def __init__(self):
        self.maps: dict[str, list[torch.Tensor]] = {}
        self.sizes: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        """Number of recorded calls, all layers together."""
        return sum(len(v) for v in self.maps.values())

    def layers(self, size: tuple[int, int] | None = None) -> list[str]:
        """Names of the layers that recorded something (those attending from an H×W = `size` map, if given)."""
        return [name for name, calls in self.maps.items()
                if calls and (size is None or tuple(self.sizes[name]) == tuple(size))]

    def token_maps(self, size: tuple[int, int], rows: int | None = None) -> torch.Tensor:
        """Per-token attention maps [B, L, H, W] at the H×W = `size` level: the weights averaged over heads,
        over every recorded call (e.g. every sampling step) and over every layer at that size. For each
        position the L weights sum to 1 (padding tokens get 0). `rows` keeps only the first `rows` samples of
        each call: under classifier-free guidance each call holds the conditional batch, then the
        unconditional (empty prompt) one, so pass the number of prompts to keep the conditional half."""
        names = self.layers(size)
        if not names:
            raise ValueError(f"no cross-attention recorded at {tuple(size)}; recorded sizes: "
                             f"{sorted(set(map(tuple, self.sizes.values())))}")
        calls = [m[:rows] if rows is not None else m for name in names for m in self.maps[name]]
        if len({c.shape for c in calls}) != 1:
            raise ValueError(f"the recorded calls have different shapes {sorted({tuple(c.shape) for c in calls})}: "
                             f"pass rows= (the number of prompts) to keep the conditional half of each")
        return torch.stack(calls).mean(0).mean(1).permute(0, 3, 1, 2)  # [B, H, W, L] -> [B, L, H, W]


@contextlib.contextmanager
def record_cross_attention(model: nn.Module, layers=None):
    """Record the cross-attention weights of a model's `SpatialTransformer`s while the block runs.

        with record_cross_attention(unet) as rec:
            sample(...)                                   # or any forward pass with a context
        maps = rec.token_maps((7, 7), rows=len(prompts))  # [B, L, 7, 7]: where each word is looked at

    `layers`: names (as in `model.named_modules()`) of the transformers to record (default: all). Turns
    `store_attention` on for their cross-attention (the explicit, unfused path: same result, more memory) and
    restores it afterwards, also on an error. Self-attention is not recorded."""
    record = CrossAttentionRecord()
    handles, previous = [], []
    chosen = [(name, m) for name, m in model.named_modules() if isinstance(m, SpatialTransformer)
              and (layers is None or name in layers)]
    if layers is not None:
        missing = sorted(set(layers) - {name for name, _ in chosen})
        if missing:
            raise ValueError(f"no SpatialTransformer named {missing} in the model; it has "
                             f"{[n for n, m in model.named_modules() if isinstance(m, SpatialTransformer)]}")
    if not chosen:
        raise ValueError("the model has no SpatialTransformer (cross-attention): build it with context_dim")
    try:
        for name, block in chosen:
            attn = block.block.cross_attn
            record.maps[name] = []
            previous.append((attn, attn.store_attention))
            attn.store_attention = True

            def remember_size(module, args, name=name):
                record.sizes[name] = tuple(args[0].shape[-2:])

            def remember_map(module, args, output, name=name):
                H, W = record.sizes[name]
                w = module.attention
                record.maps[name].append(w.reshape(w.shape[0], w.shape[1], H, W, w.shape[-1]).float().cpu())

            handles.append(block.register_forward_pre_hook(remember_size))
            handles.append(attn.register_forward_hook(remember_map))
        yield record
    finally:
        for h in handles:
            h.remove()
        for attn, flag in previous:
            attn.store_attention = flag
            if not flag:
                attn.attention = None
