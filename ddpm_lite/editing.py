"""Editing images with a trained diffusion model: image-to-image (SDEdit) and inpainting (RePaint).

Neither needs retraining: both change only where the reverse process starts or what it keeps.

* **SDEdit** (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
  Equations", §3): pick a strength s ∈ [0, 1], noise the input to t₀ ≈ s·T with the forward process,
  x_{t₀} ~ q(x_{t₀} | x_input) = N(√ᾱ_{t₀} x_input, (1 − ᾱ_{t₀}) I) (eq. 4 of Ho et al. 2020), and run the
  ordinary sampler from there. Small s keeps the input's layout and changes details; s = 1 starts from pure
  noise and ignores the input (ordinary sampling). With a few-step sampler over a sequence τ of S timesteps,
  the run is the last round(s·S) steps of τ (as diffusers' img2img pipelines do), see `sdedit_timesteps`.
* **Inpainting** (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic Models",
  §4, eq. 8–9): at every step the region to keep (mask m = 1) is replaced by the input noised to the same
  level, x_{t−1} = m ⊙ x^{known}_{t−1} + (1 − m) ⊙ x^{model}_{t−1} with x^{known}_{t−1} ~ q(x_{t−1} | x_input),
  so the model fills in the rest consistently with it. At the end (t = 0) the known pixels are the input's,
  exactly. RePaint's *resampling* (§4.2) optionally jumps back one step, x_t ~ q(x_t | x_{t−1}) =
  N(√(ᾱ_t/ᾱ_{t−1}) x_{t−1}, (1 − ᾱ_t/ᾱ_{t−1}) I), and denoises again, `resample` times per step, which
  harmonises the filled region with the kept one.

Both take the same arguments as `samplers.sample` (sampler, steps, labels y, guidance w, thresholding, ...).
"""

from __future__ import annotations

from typing import Iterator

import torch

from .conditioning import is_conditioning
from .diffusion import GaussianDiffusion, randn
from .models import eval_mode
from .samplers import (Step, _alpha_bar, _full, _last, _progress, check_ddpm_steps, ddim_update, ddpm_update,
                       make_denoiser, sample_steps, timestep_sequence)


def _check_images(x, name: str, check_range: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a float tensor [B, C, H, W] in [-1, 1], got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN/inf")
    if check_range and x.abs().max() > 1.0 + 1e-6:
        raise ValueError(f"{name}: expected finite values in [-1, 1] (images in [0, 255]? map them with "
                         f"x / 127.5 - 1), got range [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x


def sampler_timesteps(diffusion: GaussianDiffusion, sampler: str = "ddim", steps: int | None = None,
                      spacing: str | None = None) -> list[int]:
    """The timestep indices (noisiest first) that `samplers.sample` visits with these settings."""
    T = diffusion.num_timesteps
    if sampler == "ddpm":
        check_ddpm_steps(diffusion, steps)
        return list(range(T - 1, -1, -1))
    defaults = {"ddim": (50, "trailing"), "dpmpp2m": (20, "logsnr")}
    if sampler not in defaults:
        raise ValueError(f"unknown sampler {sampler!r}: expected one of ddpm, ddim, dpmpp2m")
    return timestep_sequence(T, steps or defaults[sampler][0], spacing or defaults[sampler][1],
                             diffusion.schedule.alphas_cumprod)


def sdedit_timesteps(seq: list[int], strength: float) -> list[int]:
    """SDEdit's part of a sampler's timestep sequence `seq` (noisiest first): its last round(strength·len(seq))
    entries. The run starts at the first of them (t₀); an empty list means "keep the input" (strength ≈ 0)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (0: return the input, 1: ignore it), got {strength}")
    n = round(strength * len(seq))
    return seq[len(seq) - n:]


def img2img_steps(model, diffusion: GaussianDiffusion, x_init: torch.Tensor, strength: float,
                  sampler: str = "ddim", steps: int | None = None, y=None, guidance: float = 0.0, eta: float = 0.0,
                  threshold: str | None = "static", percentile: float = 0.995, spacing: str | None = None,
                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                  progress: bool = False, check_range: bool = True) -> Iterator[Step]:
    """SDEdit: yield every `Step` of the sampler run from x_{t₀} ~ q(x_{t₀} | x_init) (see the module docstring).

    `noise` (default: drawn from `generator`) is the ε of x_{t₀} = √ᾱ_{t₀} x_init + √(1−ᾱ_{t₀}) ε. At
    strength 1 the run starts from ε itself, so it equals `samplers.sample` from x_T = ε. At strength 0
    nothing runs (no steps are yielded). `check_range=False` accepts data outside [-1, 1] (the scaled latents
    of `ddpm_lite.latent`, which also passes threshold=None).
    """
    x_init = _check_images(x_init, "x_init", check_range)
    seq = sampler_timesteps(diffusion, sampler, steps, spacing)
    run = sdedit_timesteps(seq, strength)
    if not run:
        return iter(())
    if noise is None:
        noise = randn(x_init.shape, generator, x_init.device, x_init.dtype)
    elif noise.shape != x_init.shape:
        raise ValueError(f"noise must have x_init's shape {list(x_init.shape)}, got {list(noise.shape)}")
    if len(run) == len(seq):  # the whole run: start from the prior's pure noise, as ordinary sampling does
        x_start = noise
    else:
        x_start = diffusion.q_sample(x_init, _full(x_init, run[0]), noise=noise)
    return sample_steps(model, diffusion, x_init.shape, sampler, steps, y, guidance, eta, threshold, percentile,
                        spacing, generator, x_init.device, x_start, progress, t_start=run[0])


@torch.no_grad()
def img2img(model, diffusion: GaussianDiffusion, x_init: torch.Tensor, strength: float, **kwargs) -> torch.Tensor:
    """SDEdit image-to-image; returns x_0 clamped to [−1, 1] (`x_init` itself at strength 0). Keyword arguments
    as `img2img_steps`."""
    with eval_mode(model):
        x = _last(img2img_steps(model, diffusion, x_init, strength, **kwargs), x_init)
    return x.clamp(-1.0, 1.0)


def _check_mask(mask, x: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=x.device)
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"mask: expected a shape that broadcasts to the images' {list(x.shape)} (e.g. "
                         f"[1, 1, H, W]), got {list(mask.shape)}") from None
    if mask.dim() != 4:
        raise ValueError(f"mask: expected 4 dimensions [B or 1, C or 1, H, W], got {list(mask.shape)}")
    values = torch.unique(mask)
    if not all(float(v) in (0.0, 1.0) for v in values):
        raise ValueError("mask: expected 1 where the input is kept and 0 where the model fills in, got other values")
    return mask.to(x.dtype)


@torch.no_grad()
def inpaint_steps(model, diffusion: GaussianDiffusion, x_known: torch.Tensor, mask, sampler: str = "ddim",
                  steps: int | None = None, y=None, guidance: float = 0.0, eta: float = 0.0,
                  threshold: str | None = "static", percentile: float = 0.995, spacing: str | None = None,
                  resample: int = 1, generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                  progress: bool = False, check_range: bool = True) -> Iterator[Step]:
    """RePaint inpainting: yield a `Step` after every (final) update; see the module docstring.

    mask: 1 = keep the pixel of `x_known`, 0 = let the model fill it in; any shape that broadcasts to
    `x_known` (one mask for the batch: [1, 1, H, W]). sampler: "ddpm" (RePaint's choice) or "ddim" (its
    updates are single-step; DPM-Solver++'s multistep history would not survive the pasting). resample: how
    many times each step is taken (1: no resampling; RePaint used 10 with all T steps). `check_range`: as in
    `img2img_steps`.
    """
    x_known = _check_images(x_known, "x_known", check_range)
    mask = _check_mask(mask, x_known)
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"inpainting supports the single-step samplers 'ddpm' and 'ddim', got {sampler!r}")
    if resample < 1:
        raise ValueError(f"resample must be >= 1 (1: no resampling), got {resample}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    seq = sampler_timesteps(diffusion, sampler, steps, spacing)
    if is_conditioning(y):
        y = y.to(x_known.device)
    elif y is not None:
        y = torch.as_tensor(y, dtype=torch.long, device=x_known.device)
    denoiser = make_denoiser(model, diffusion, y, guidance, threshold, percentile)
    if x_T is None:
        x_T = randn(x_known.shape, generator, x_known.device, x_known.dtype)

    def known_at(t: int) -> torch.Tensor:
        if t < 0:
            return x_known
        return diffusion.q_sample(x_known, _full(x_known, t), generator=generator)

    x = mask * known_at(seq[0]) + (1 - mask) * x_T
    index = 0
    for t, t_prev in _progress(list(zip(seq, seq[1:] + [-1])), progress, "inpaint"):
        for r in range(resample):
            if sampler == "ddpm":
                x_model, x0, eps = ddpm_update(denoiser, diffusion, x, t, generator)
            else:
                x_model, x0, eps = ddim_update(denoiser, diffusion, x, t, t_prev, eta, generator)
            x_prev = mask * known_at(t_prev) + (1 - mask) * x_model
            index += 1
            if r < resample - 1:  # jump back to t: x_t ~ q(x_t | x_{t_prev}), and take the step again
                ratio = _alpha_bar(diffusion, t) / _alpha_bar(diffusion, t_prev)
                x = ratio ** 0.5 * x_prev + (1 - ratio) ** 0.5 * randn(x.shape, generator, x.device, x.dtype)
        x = x_prev
        yield Step(index - 1, t_prev, x, x0, eps)


@torch.no_grad()
def inpaint(model, diffusion: GaussianDiffusion, x_known: torch.Tensor, mask, **kwargs) -> torch.Tensor:
    """RePaint inpainting; returns x_0 clamped to [−1, 1], equal to `x_known` where mask = 1. Keyword arguments
    as `inpaint_steps`."""
    with eval_mode(model):
        x = _last(inpaint_steps(model, diffusion, x_known, mask, **kwargs), x_known)
    return x.clamp(-1.0, 1.0)
