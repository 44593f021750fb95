"""Checks for notebook 07 (classifier-free guidance: the fidelity/diversity trade-off, thresholding).

Exercises:
    1. `check_dynamic_threshold(fn)`: Imagen's dynamic thresholding (Saharia et al. 2022, §2.3), compared with
       `ddpm_lite.diffusion.dynamic_threshold`.
    2. `check_scale_to_w(fn)`: convert a "guidance scale" s (diffusers' `guidance_scale`, Imagen's and
       Stable Diffusion's w) to this package's weight w, checked by running both guided predictions.
    3. `check_saturated_fraction(fn)`: the fraction of pixels clipped to ±1, the number the notebook uses to
       show what static clipping does at large guidance weights.

Every reference is computed by the package at check time, never typed in.
"""

from __future__ import annotations

import torch

from ..metrics import saturated
from . import ExerciseError, as_tensor, call_answer, passed
from .nb04 import TinyConditionalNet

__all__ = ["check_dynamic_threshold", "check_scale_to_w", "check_saturated_fraction"]


def _test_batch() -> torch.Tensor:
    """x̂_0 predictions of very different ranges, one per sample: the per-sample s matters."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 1, 8, 8, generator=g)
    scales = torch.tensor([0.3, 0.9, 1.5, 3.0, 6.0]).reshape(5, 1, 1, 1)
    x = x / x.abs().amax(dim=(1, 2, 3), keepdim=True) * scales  # sample i has max |x| = scales[i]
    x[2] = x[2] + 0.8  # a lopsided sample: quantile of |x|, not of x
    return x


# -- exercise 1: dynamic thresholding --------------------------------------------------------------------------

def check_dynamic_threshold(dynamic_threshold) -> None:
    """`dynamic_threshold(x0, percentile)`: per sample, s = max(1, quantile(|x0|, percentile)); return
    clip(x0, −s, s) / s. Compared with `ddpm_lite.diffusion.dynamic_threshold` for two percentiles."""
    from ..diffusion import dynamic_threshold as reference

    x = _test_batch()
    for p in (0.995, 0.9):
        x_in = x.clone()
        got = as_tensor(call_answer(dynamic_threshold, "dynamic_threshold", x_in, p), "dynamic_threshold(x0, p)")
        if not torch.equal(x_in, x):
            raise ExerciseError("dynamic_threshold modified x0 in place: return a new tensor.")
        ref = reference(x, p).double()
        if got.shape != ref.shape:
            raise ExerciseError(f"dynamic_threshold returned shape {tuple(got.shape)}, expected the shape of x0 "
                                f"{tuple(ref.shape)}")
        if torch.allclose(got, ref, atol=1e-5):
            continue
        flat = x.reshape(x.shape[0], -1)
        whole = torch.quantile(flat.abs().flatten(), p).clamp(min=1.0)
        if torch.allclose(got, (x.clamp(-whole, whole) / whole).double(), atol=1e-5):
            raise ExerciseError("one s is used for the whole batch: compute s per sample (quantile over "
                                "dim=1 of x0.reshape(B, -1)).")
        small = x.abs().amax(dim=(1, 2, 3)) < 1.0
        if not torch.allclose(got[small], x[small].double(), atol=1e-5):
            raise ExerciseError("a sample whose values all lie inside [−1, 1] must come back unchanged: s must "
                                "be at least 1 (s = max(1, quantile)), otherwise faint samples get blown up.")
        s_signed = torch.quantile(flat, p, dim=1).clamp(min=1.0).reshape(-1, 1, 1, 1)
        if torch.allclose(got, (torch.maximum(torch.minimum(x, s_signed), -s_signed) / s_signed).double(), atol=1e-5):
            raise ExerciseError("take the quantile of |x0|, not of x0: large negative values count too.")
        s = torch.quantile(flat.abs(), p, dim=1).clamp(min=1.0).reshape(-1, 1, 1, 1)
        if torch.allclose(got, torch.maximum(torch.minimum(x, s), -s).double(), atol=1e-5):
            raise ExerciseError("you clip to [−s, s] but forget to divide by s: the result must lie in [−1, 1].")
        if torch.allclose(got, x.clamp(-1, 1).double(), atol=1e-5):
            raise ExerciseError("that is static clipping to [−1, 1]; dynamic thresholding rescales by s first.")
        raise ExerciseError(f"with percentile {p} your result differs from the reference by up to "
                            f"{(got - ref).abs().max().item():.3g}.")
    passed("per-sample s = max(1, quantile of |x̂0|), clip to [−s, s], divide by s: matches the package.")


# -- exercise 2: guidance scale s -> weight w ------------------------------------------------------------------

def check_scale_to_w(scale_to_w) -> None:
    """`scale_to_w(s)`: diffusers computes ε_∅ + s (ε_c − ε_∅); the package computes (1 + w) ε_c − w ε_∅.

    Checked by running both on a small conditional network for several s (including s = 1, "no guidance").
    """
    from ..diffusion import GaussianDiffusion, null_labels

    diffusion = GaussianDiffusion("linear", timesteps=1000)
    net = TinyConditionalNet(seed=1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 8, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    y = torch.tensor([1, 3, 5, 7])
    eps_c, eps_u = net(x, t, y), net(x, t, null_labels(net, y))
    for s in (1.0, 2.0, 4.0, 7.5):
        w = call_answer(scale_to_w, "scale_to_w", s)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ExerciseError(f"scale_to_w should return a number, got {type(w).__name__}") from None
        target = eps_u + s * (eps_c - eps_u)  # diffusers' form
        if w < 0:
            raise ExerciseError(f"scale_to_w({s}) = {w}: the package's w must be >= 0 for s >= 1 (w = 0 is the "
                                f"plain conditional model, s = 1).")
        got = diffusion.model_output(net, x, t, y, guidance=w)
        if not torch.allclose(got, target, rtol=1e-5, atol=1e-5):
            raise ExerciseError(f"scale_to_w({s}) returned w = {w:g}, but (1 + w)·ε_c − w·ε_∅ then differs from "
                                f"ε_∅ + s·(ε_c − ε_∅). Expand both and match the coefficient of ε_c.")
    passed("w = s − 1: diffusers' guidance_scale 7.5 is w = 6.5 here, and s = 1 (w = 0) means no guidance.")


# -- exercise 3: the saturated fraction ------------------------------------------------------------------------

def check_saturated_fraction(saturated_fraction) -> None:
    """`saturated_fraction(x, tol=1e-3)`: the fraction of entries with |x| >= 1 − tol, per sample ([B])."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, 1, 8, 8, generator=g) * torch.linspace(0.2, 3.0, 6).reshape(6, 1, 1, 1)).clamp(-1, 1)
    x[0, 0, 0, :4] = -1.0
    ref = saturated(x, tol=1e-3).double().flatten(1).mean(dim=1)
    got = as_tensor(call_answer(saturated_fraction, "saturated_fraction", x.clone()), "saturated_fraction(x)")
    if got.shape == ():
        if torch.isclose(got, ref.mean().to(got.dtype)):
            raise ExerciseError("return one fraction per sample (shape [B]), not the mean over the batch: "
                                "average over every dimension except the first.")
    if got.shape != ref.shape:
        raise ExerciseError(f"saturated_fraction returned shape {tuple(got.shape)}, expected [B] = [{x.shape[0]}]")
    plus_only = (x >= 1 - 1e-3).double().flatten(1).mean(dim=1)
    if torch.allclose(got, plus_only) and not torch.allclose(plus_only, ref):
        raise ExerciseError("count both ends: pixels clipped to −1 are saturated too (use |x|).")
    if not torch.allclose(got, ref, atol=1e-9):
        raise ExerciseError(f"the fractions differ from the reference by up to {(got - ref).abs().max().item():.3g}: "
                            f"count entries with |x| >= 1 − tol and divide by the number of entries per sample.")
    if (got < 0).any() or (got > 1).any():
        raise ExerciseError("a fraction must lie in [0, 1].")
    passed("per-sample fraction of pixels at ±1.")
