"""Checks for notebook 03, "The denoising network: a U-Net, piece by piece".

Exercises:
    1. `check_time_embedding(fn)`: the sinusoidal timestep embedding (Vaswani et al. 2017 §3.5; DDPM's
       `get_timestep_embedding`), fn(t, dim) -> [B, dim]: frequencies ω_i = exp(−ln(10000) · i / (dim/2)),
       i = 0 … dim/2 − 1, first half sin(t ω), second half cos(t ω); compared with
       `ddpm_lite.unet.timestep_embedding`, which the notebook then swaps for the learner's function inside the
       trained model.
    2. `check_resblock_forward(fn)`: a ResBlock's forward pass from its own layers, fn(block, x, emb) ->
       skip(x) + conv2(dropout(SiLU(norm2(conv1(SiLU(norm1(x))) + emb_proj(SiLU(emb)))))); compared with
       `ResBlock.forward`, and then run as the forward of every ResBlock of the trained model.
    Predict, then run: `INIT_CHOICES`, `commit_init_prediction`, `reveal_init(prediction, output, x)`: what
       does the untrained U-Net output?

Every reference is computed by the package at check time. Each planted mistake (sin and cos swapped, sin/cos
interleaved, frequencies growing instead of shrinking, Ho et al.'s half − 1 denominator, the embedding as
integers; the embedding added after the second norm, the SiLU on the embedding forgotten, the skip connection
left out, SiLU and norm in the wrong order, the norm and SiLU after the embedding swapped; x itself on the skip
path fails on the block whose channel count changes) gets a message that names it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..unet import ResBlock, timestep_embedding
from . import ExerciseError, as_tensor, call_answer, commit_choice, passed, reveal_choice

__all__ = ["check_time_embedding", "check_resblock_forward", "INIT_CHOICES", "commit_init_prediction",
           "init_truth", "reveal_init"]


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=1e-5, atol=atol))


# -- exercise 1: the sinusoidal time embedding -------------------------------------------------------------------

def _embedding_mistakes(t: torch.Tensor, dim: int):
    """Known wrong embeddings, in float32 like a learner's code. Compared only on small timesteps (t ≤ 7), where
    float32 rounding of large angles cannot blur the difference between two formulas."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32)
    tt = t.float()[:, None]

    def emb(freqs, order="sincos"):
        a = tt * freqs[None]
        if order == "sincos":
            return torch.cat([a.sin(), a.cos()], 1)
        if order == "cossin":
            return torch.cat([a.cos(), a.sin()], 1)
        return torch.stack([a.sin(), a.cos()], 2).reshape(len(t), dim)  # interleaved

    good = torch.exp(-math.log(10000.0) * i / half)
    return [
        (emb(good, "cossin"), "sin and cos are swapped: the first half of the embedding is sin(t·ω), the second "
                              "cos(t·ω)."),
        (emb(good, "interleaved"), "you interleaved sin and cos (sin, cos, sin, cos, … as in the Transformer "
                                   "paper's formula); this package puts all the sines first, then all the cosines "
                                   "(torch.cat([sin, cos], dim=1))."),
        (emb(torch.exp(math.log(10000.0) * i / half)), "the frequencies grow: ω_i = exp(−ln(10000) · i / half) "
                                                        "falls from 1 to about 1/10000 (note the minus sign)."),
        (emb(torch.exp(-math.log(10000.0) * i / (half - 1))),
         "you divided by half − 1, as Ho et al.'s TensorFlow code does (so the last frequency is exactly 1/10000); "
         "this package, like the Transformer paper, divides by half: ω_i = exp(−ln(10000) · i / half)."),
        (emb(10000.0 ** (-i / half) * 2 * math.pi), "no 2π: ω_i = exp(−ln(10000) · i / half), the angle is t·ω_i."),
        (emb(torch.exp(-math.log(10000.0) * i / half)).round(), "the embedding must stay real-valued; do not round "
                                                                "or cast to integers (use t.float())."),
    ]


def check_time_embedding(fn) -> None:
    """`fn(t, dim)` (t [B] long timesteps, dim even) must return [B, dim] floats: sin(t ω_i) for i < dim/2 then
    cos(t ω_i), ω_i = exp(−ln(10000) · i / (dim/2))."""
    for t, dim in ((torch.tensor([0, 1, 7, 250, 999]), 16), (torch.tensor([3, 500]), 32)):
        got = as_tensor(call_answer(fn, "my_timestep_embedding", t.clone(), dim), "my_timestep_embedding")
        ref = timestep_embedding(t, dim).double()
        if tuple(got.shape) == (dim, len(t)):
            raise ExerciseError(f"the result is transposed: return [B, dim] = [{len(t)}, {dim}], one row per "
                                f"timestep.")
        if tuple(got.shape) != (len(t), dim):
            raise ExerciseError(f"for {len(t)} timesteps and dim = {dim} return shape [{len(t)}, {dim}], got "
                                f"{list(got.shape)}.")
        if _same(got, ref):
            continue
        small = t <= 7
        for wrong, message in _embedding_mistakes(t, dim):
            if _same(got[small], wrong[small], atol=1e-3) and not _same(got[small], ref[small], atol=1e-3):
                raise ExerciseError(message)
        if _same(got[0], ref[0]) and not _same(got, ref):
            raise ExerciseError("right at t = 0 only: the angle of entry i is t · ω_i (multiply by t).")
        raise ExerciseError(f"for dim = {dim} your embedding differs from the package's by up to "
                            f"{(got - ref).abs().max().item():.3g}.")
    passed("sin(t·ω_i) then cos(t·ω_i) with ω_i = exp(−ln(10000)·i/half): the time embedding every ResBlock of "
           "the U-Net receives (after an MLP). The next cell runs the trained model with yours.")


# -- exercise 2: a ResBlock's forward pass ---------------------------------------------------------------------

def _block_setup():
    """Two blocks with perturbed weights (the zero-initialised conv2 would hide most mistakes): one with a 1×1
    skip projection (8 → 16 channels), one with the identity skip."""
    g = torch.Generator().manual_seed(3)
    blocks = []
    for cin, cout in ((8, 16), (16, 16)):
        torch.manual_seed(0)
        block = ResBlock(cin, cout, emb_dim=12, dropout=0.0, num_groups=4).double().eval()
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        x = torch.randn(2, cin, 5, 6, generator=g, dtype=torch.float64)
        emb = torch.randn(2, 12, generator=g, dtype=torch.float64)
        blocks.append((block, x, emb))
    return blocks


def _resblock_mistakes(b, x, emb):
    e = b.emb_proj(F.silu(emb))[:, :, None, None]
    e_raw = b.emb_proj(emb)[:, :, None, None]
    h1 = b.conv1(F.silu(b.norm1(x)))
    out = lambda h: b.conv2(F.silu(h))  # noqa: E731 (dropout is 0 in eval mode)
    return [
        (b.skip(x) + out(b.norm2(h1) + e), "the embedding is added *before* the second GroupNorm: "
                                           "norm2(h + emb_proj(SiLU(emb))), not norm2(h) + …"),
        (b.skip(x) + out(b.norm2(h1 + e_raw)), "the embedding goes through SiLU before its projection: "
                                               "emb_proj(SiLU(emb))."),
        (out(b.norm2(h1 + e)), "the skip connection is missing: return skip(x) + h (a residual block)."),
        (b.skip(x) + out(b.norm2(b.conv1(b.norm1(F.silu(x))) + e)), "SiLU and GroupNorm are in the wrong order: "
                                                                    "norm first, then SiLU, then the conv."),
        (b.skip(x) + b.conv2(b.norm2(F.silu(h1 + e))), "after adding the embedding: GroupNorm, then SiLU, then "
                                                       "(dropout and) conv2."),
    ]


def check_resblock_forward(fn) -> None:
    """`fn(block, x, emb)` must return what `block(x, emb)` returns, computed from block.norm1, block.conv1,
    block.emb_proj, block.norm2, block.dropout, block.conv2 and block.skip."""
    for block, x, emb in _block_setup():
        with torch.no_grad():
            got = as_tensor(call_answer(fn, "my_resblock_forward", block, x.clone(), emb.clone()),
                            "my_resblock_forward")
            ref = block(x, emb)
            mistakes = _resblock_mistakes(block, x, emb)
        if tuple(got.shape) != tuple(ref.shape):
            raise ExerciseError(f"the output should have shape {list(ref.shape)} (out_channels = "
                                f"{ref.shape[1]}), got {list(got.shape)}; is the embedding broadcast over H and W "
                                f"with [:, :, None, None]?")
        if _same(got, ref, atol=1e-9):
            continue
        for wrong, message in mistakes:
            if _same(got, wrong, atol=1e-9):
                raise ExerciseError(message)
        raise ExerciseError(f"your ResBlock output differs from block(x, emb) by up to "
                            f"{(got - ref).abs().max().item():.3g} (block {x.shape[1]} → {ref.shape[1]} channels).")
    passed("h = conv1(SiLU(norm1(x))); h = norm2(h + emb_proj(SiLU(emb))); return skip(x) + conv2(dropout(SiLU(h))): "
           "the ResBlock of Ho et al.'s U-Net. The next cell runs every ResBlock of the trained model with yours.")


# -- predict, then run: the untrained network ------------------------------------------------------------------

INIT_CHOICES = {
    "a": "random values, like noise of about unit size",
    "b": "exactly zero, for every input",
    "c": "a copy of its input x_t",
}


def commit_init_prediction(prediction) -> str:
    """Before the run: what does a freshly built (untrained) U-Net output for a random x_t?"""
    return commit_choice(prediction, INIT_CHOICES)


def init_truth(output: torch.Tensor, x: torch.Tensor) -> str:
    """The choice the measured output falls in."""
    if float(output.abs().max()) == 0.0:
        return "b"
    if output.shape == x.shape and torch.allclose(output, x, atol=1e-6):
        return "c"
    return "a"


def reveal_init(prediction, output: torch.Tensor, x: torch.Tensor) -> bool:
    why = ("the last convolution (conv_out) is initialised to zero (`zero_module`), so whatever the layers before it "
           "compute, the output is 0: the untrained model predicts ε̂ = 0, the mean of the noise, and its first loss "
           "is E‖ε‖² ≈ 1 whatever the data. The last conv of every ResBlock and the attention's output projection "
           "are zero too, so every residual block starts as the identity and training starts from a well-behaved "
           "network instead of a random deep one.")
    return reveal_choice(prediction, init_truth(output, x), INIT_CHOICES, why,
                         measured=f"largest |output|: {float(output.abs().max()):.3g}")
