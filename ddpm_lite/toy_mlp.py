"""A small time- and class-conditional MLP denoiser for low-dimensional toy data (2D moons, swiss roll, GMMs).

    x [B, D] ──Linear──► h ──► ResidualBlock × num_blocks ──► LayerNorm → SiLU → Linear ──► [B, D]
                               each block: h + Linear(SiLU(Linear(LayerNorm(h)) + emb))

The timestep goes through the same sinusoidal embedding as the U-Net (Vaswani et al. 2017 §3.5, as used in
Ho et al. 2020) and an MLP; an optional class embedding (with a learned null class at index ``num_classes``,
for classifier-free guidance, Ho & Salimans 2022) is added to it. The output layer starts at zero, so the
untrained model predicts 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpm_lite.models import check_t_and_y
from ddpm_lite.unet import timestep_embedding


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual MLP block with an additive embedding: h + W2 · SiLU(W1 · LN(h) + emb)."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(self.norm(h)) + self.emb_proj(emb)
        return h + self.fc2(F.silu(z))


class ToyMLP(nn.Module):
    """Denoiser for points x [B, D]; called as ``model(x, t, y=None)`` and returns [B, D].

    Args:
        dim: data dimension D (2 for the 2D toys).
        hidden: width of the residual blocks.
        num_blocks: number of residual blocks.
        time_embed_dim: size of the sinusoidal time embedding.
        num_classes: None (unconditional) or the number of classes; index ``num_classes`` is the null class.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        num_blocks: int = 3,
        time_embed_dim: int = 64,
        num_classes: int | None = None,
    ):
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes}")
        self.config = dict(
            dim=dim, hidden=hidden, num_blocks=num_blocks, time_embed_dim=time_embed_dim, num_classes=num_classes
        )
        self.dim = dim
        self.num_classes = num_classes
        self.time_embed_dim = time_embed_dim

        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden) for _ in range(num_blocks))
        self.norm_out = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.dim:
            got = f"shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"ToyMLP expects x of shape [B, {self.dim}], got {got}")
        if not x.is_floating_point():
            raise ValueError(f"ToyMLP expects a floating-point x, got dtype {x.dtype}")
        B = x.shape[0]
        check_t_and_y("ToyMLP", B, t, y, self.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, t, y)
        emb = self.time_mlp(timestep_embedding(t, self.time_embed_dim).to(x.dtype))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm_out(h)))
