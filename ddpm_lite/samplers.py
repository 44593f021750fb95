"""Samplers: plain functions over a denoiser, in the style of k-diffusion's `sampling.py`.

A *denoiser* is any callable `denoiser(x_t, t) -> (x̂_0, ε̂)` with `t` a [B] tensor of 0-based timestep indices;
`make_denoiser` builds one from a model and a `GaussianDiffusion`, adding classifier-free guidance and
thresholding. Each sampler comes in two forms:

    ddim_steps(denoiser, diffusion, x_T, ...)   a generator: yields a `Step` (x_t, x̂_0, t) after every update
    ddim(denoiser, diffusion, x_T, ...)         runs it to the end and returns x_0

so a notebook can animate every intermediate x_t and predicted x̂_0, and a script just takes the result.

Samplers:
    ddpm             ancestral sampling, Ho et al. 2020, Algorithm 2 (all T steps)
    ddim             Song, Meng & Ermon 2021, eq. 12, on a sub-sequence of timesteps, η ∈ [0, 1]
    dpm_solver_pp_2m Lu et al. 2022 ("DPM-Solver++"), multistep second order, data prediction

Classifier-free guidance convention: ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅) (Ho & Salimans 2021). The
"guidance scale" of other libraries (diffusers' `guidance_scale`) is s = 1 + w: w = 0 is the conditional
model without guidance, s = 7.5 there is w = 6.5 here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .conditioning import is_conditioning
from .device import model_device
from .diffusion import GaussianDiffusion, randn
from .models import eval_mode

SAMPLERS = ("ddpm", "ddim", "dpmpp2m")
SPACINGS = ("linspace", "leading", "trailing", "logsnr")

Denoiser = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class Step:
    """One sampler update: the new state `x` (at timestep index `t`; t = −1 means x_0), and the x̂_0 and ε̂
    the denoiser predicted on the way there. `index` counts network evaluations from 0."""

    index: int
    t: int
    x: torch.Tensor
    pred_x0: torch.Tensor
    eps: torch.Tensor


def make_denoiser(model, diffusion: GaussianDiffusion, y=None, guidance: float = 0.0,
                  threshold: str | None = "static", percentile: float = 0.995) -> Denoiser:
    """Wrap `model` as a denoiser `(x_t, t) -> (x̂_0, ε̂)`.

    Args:
        y: class labels [B] (long), None for an unconditional model / the null class, or a conditioning
            object (`ddpm_lite.conditioning`, e.g. a prompt's `TextCondition`).
        guidance: classifier-free guidance weight w (see the module docstring for the convention).
        threshold: "static" clips x̂_0 to [−1, 1]; "dynamic" is Imagen's dynamic thresholding at `percentile`
            (Saharia et al. 2022); None leaves x̂_0 alone.
    """
    if guidance < 0:
        raise ValueError(f"guidance weight w must be >= 0 (w = 0: no guidance), got {guidance}")

    def denoiser(xt: torch.Tensor, t: torch.Tensor):
        return diffusion.model_predictions(model, xt, t, y, guidance, threshold, percentile)

    return denoiser


def timestep_sequence(num_timesteps: int, steps: int, spacing: str = "trailing",
                      alphas_cumprod: torch.Tensor | None = None) -> list[int]:
    """The sub-sequence τ of timestep indices a few-step sampler visits, from the noisiest down.

    spacing:
        "linspace": round(linspace(0, T−1, S)): both ends included.
        "leading":  0, k, 2k, … with k = T // S (DDIM's original code, Stable Diffusion's default): the
                    noisiest visited step is T − k, so sampling starts from noise that is *less* noisy than
                    x_T and the first step is off (Lin et al. 2023, "Common diffusion noise schedules and
                    sample steps are flawed", Table 2).
        "trailing": T−1, T−1−k, …: always starts at the last timestep. The default for DDIM.
        "logsnr":   uniform in λ = log(α/σ) (needs `alphas_cumprod`), as DPM-Solver recommends for small
                    images (Lu et al. 2022, §3.3). Second-order multistep solvers need steps of similar size
                    in λ; on steps uniform in t, the last few λ-steps are huge and the extrapolation loses
                    its order. The default for DPM-Solver++.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and T = {num_timesteps}, got {steps}")
    if spacing == "linspace":
        seq = np.round(np.linspace(0, num_timesteps - 1, steps)).astype(int)
    elif spacing == "leading":
        seq = np.arange(steps) * (num_timesteps // steps)
    elif spacing == "trailing":
        seq = np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(int) - 1
    elif spacing == "logsnr":
        if alphas_cumprod is None:
            raise ValueError("spacing 'logsnr' needs the schedule's alphas_cumprod")
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().numpy()
        lam = 0.5 * np.log(ab / (1 - ab))  # decreasing in t
        targets = np.linspace(lam[-1], lam[0], steps)
        seq = np.round(np.interp(targets, lam[::-1], np.arange(num_timesteps)[::-1])).astype(int)
        seq = _strictly_increasing(np.sort(seq), num_timesteps)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")
    seq = sorted(set(int(s) for s in seq), reverse=True)
    if len(seq) != steps:
        raise ValueError(f"spacing {spacing!r} gives {len(seq)} distinct timesteps for steps={steps}, T={num_timesteps}")
    return seq


def _strictly_increasing(seq: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Nudge rounded indices apart so that none repeats, staying inside [0, T−1]."""
    seq = seq.copy()
    for k in range(1, len(seq)):
        seq[k] = max(seq[k], seq[k - 1] + 1)
    for k in range(len(seq) - 1, -1, -1):
        seq[k] = min(seq[k], num_timesteps - 1 - (len(seq) - 1 - k))
    return seq


def _full(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _alpha_bar(diffusion: GaussianDiffusion, t: int) -> float:
    """ᾱ at index t, with ᾱ := 1 at t = −1 (the data)."""
    return 1.0 if t < 0 else float(diffusion.schedule.alphas_cumprod[t])


def _progress(iterable, progress: bool, desc: str):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


# -- DDPM: ancestral sampling (Ho et al. 2020, Algorithm 2) ----------------------------------------------------

def _start_at(seq: list[int], t_start: int | None) -> list[int]:
    """The part of a (descending) timestep sequence a run that starts at x_{t_start} visits."""
    return seq if t_start is None else [t for t in seq if t <= t_start]


@torch.no_grad()
def ddpm_update(denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, t: int, generator=None):
    """One ancestral step x_t → x_{t−1} = μ̃_t(x̂_0, x_t) + σ_t z (no noise at t = 0); returns (x_{t−1}, x̂_0, ε̂)."""
    tt = _full(x, t)
    x0, eps = denoiser(x, tt)
    mean, _, _ = diffusion.q_posterior_mean_variance(x0, x, tt)
    if t == 0:
        return mean, x0, eps
    log_var = diffusion.model_log_variance(tt, x)
    return mean + torch.exp(0.5 * log_var) * randn(x.shape, generator, x.device, x.dtype), x0, eps


@torch.no_grad()
def ddpm_steps(denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, generator=None,
               progress: bool = False, t_start: int | None = None) -> Iterator[Step]:
    """x_{t−1} = μ̃_t(x̂_0, x_t) + σ_t z for t = T … 1, z ~ N(0, I), no noise on the last step.

    μ̃ is the posterior mean of eq. 7 with the denoiser's x̂_0 (equal to eq. 11 without thresholding);
    σ_t² is the diffusion's variance choice (β̃_t or β_t). This is `sample` in the source material.
    With `t_start`, `x` is x_{t_start} and the run starts there (image-to-image, `ddpm_lite.editing`).
    """
    seq = _start_at(list(range(diffusion.num_timesteps - 1, -1, -1)), t_start)
    for i, t in enumerate(_progress(seq, progress, "DDPM")):
        x, x0, eps = ddpm_update(denoiser, diffusion, x, t, generator)
        yield Step(i, t - 1, x, x0, eps)


def ddpm(denoiser, diffusion, x, generator=None, progress=False, t_start=None) -> torch.Tensor:
    """Ancestral sampling to the end; returns x_0. See `ddpm_steps`."""
    return _last(ddpm_steps(denoiser, diffusion, x, generator, progress, t_start), x)


# -- DDIM (Song, Meng & Ermon 2021) -----------------------------------------------------------------------------

def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)  (Song et al. 2021, eq. 16).

    η = 1 gives DDPM's posterior variance β̃ (on all T steps); η = 0 makes sampling deterministic.
    """
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)) ** 0.5


@torch.no_grad()
def ddim_update(denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, t: int, t_prev: int,
                eta: float = 0.0, generator=None):
    """One DDIM step x_t → x_{t_prev} (eq. 12; t_prev = −1 is the data); returns (x_{t_prev}, x̂_0, ε̂)."""
    x0, eps = denoiser(x, _full(x, t))
    a_t, a_prev = _alpha_bar(diffusion, t), _alpha_bar(diffusion, t_prev)
    sigma = ddim_sigma(a_t, a_prev, eta)
    x = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x, x0, eps


@torch.no_grad()
def ddim_steps(denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, steps: int = 50,
               eta: float = 0.0, spacing: str = "trailing", generator=None, progress: bool = False,
               t_start: int | None = None) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12) over `steps` timesteps:

    x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, with σ from `ddim_sigma`.
    The process is non-Markovian but has the same marginals q(x_t|x_0) as DDPM, so a model trained for DDPM
    can be sampled with far fewer steps. With `t_start`, `x` is x_{t_start} and only the sequence's timesteps
    ≤ t_start are visited (image-to-image, `ddpm_lite.editing`).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    seq = _start_at(timestep_sequence(diffusion.num_timesteps, steps, spacing, diffusion.schedule.alphas_cumprod),
                    t_start)
    for i, (t, t_prev) in enumerate(_progress(list(zip(seq, seq[1:] + [-1])), progress, "DDIM")):
        x, x0, eps = ddim_update(denoiser, diffusion, x, t, t_prev, eta, generator)
        yield Step(i, t_prev, x, x0, eps)


def ddim(denoiser, diffusion, x, steps=50, eta=0.0, spacing="trailing", generator=None, progress=False,
         t_start=None):
    """DDIM to the end; returns x_0. See `ddim_steps`."""
    return _last(ddim_steps(denoiser, diffusion, x, steps, eta, spacing, generator, progress, t_start), x)


# -- DPM-Solver++(2M) (Lu et al. 2022) --------------------------------------------------------------------------

@torch.no_grad()
def dpm_solver_pp_2m_steps(denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, steps: int = 20,
                           spacing: str = "logsnr", progress: bool = False,
                           t_start: int | None = None) -> Iterator[Step]:
    """DPM-Solver++(2M): a second-order multistep solver of the diffusion ODE in data-prediction form.

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ) and h_i = λ_{t_i} − λ_{t_{i−1}} (Lu et al. 2022, Algorithm 2):
    D_i = x̂_0(t_{i−1}) on the first step, else (1 + 1/(2r_i)) x̂_0(t_{i−1}) − 1/(2r_i) x̂_0(t_{i−2}) with
    r_i = h_{i−1}/h_i; x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D_i.
    The last step goes to the data (σ = 0), where the update reduces to x_0 = D_i; it is taken first order,
    as usual for few steps. Deterministic: no noise is added. `t_start`: as in `ddim_steps`.
    """
    seq = _start_at(timestep_sequence(diffusion.num_timesteps, steps, spacing, diffusion.schedule.alphas_cumprod),
                    t_start)
    prev_x0, prev_h = None, None
    for i, (t, t_next) in enumerate(_progress(list(zip(seq, seq[1:] + [-1])), progress, "DPM-Solver++")):
        x0, eps = denoiser(x, _full(x, t))
        a_t, a_next = _alpha_bar(diffusion, t), _alpha_bar(diffusion, t_next)
        if t_next < 0:
            x = x0
        else:
            lam_t = 0.5 * np.log(a_t / (1 - a_t))
            lam_next = 0.5 * np.log(a_next / (1 - a_next))
            h = lam_next - lam_t
            if prev_x0 is None:
                d = x0
            else:
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            sigma_ratio = ((1 - a_next) / (1 - a_t)) ** 0.5
            x = sigma_ratio * x - a_next ** 0.5 * np.expm1(-h) * d
            prev_h = h
        prev_x0 = x0
        yield Step(i, t_next, x, x0, eps)


def dpm_solver_pp_2m(denoiser, diffusion, x, steps=20, spacing="logsnr", progress=False, t_start=None):
    """DPM-Solver++(2M) to the end; returns x_0. See `dpm_solver_pp_2m_steps`."""
    return _last(dpm_solver_pp_2m_steps(denoiser, diffusion, x, steps, spacing, progress, t_start), x)


def _last(steps: Iterator[Step], x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = step.x
    return x


# -- one entry point for scripts, the CLI and notebooks --------------------------------------------------------


def check_ddpm_steps(diffusion: GaussianDiffusion, steps: int | None) -> None:
    """Ancestral DDPM has no shorter schedule: refuse a step count it would otherwise ignore."""
    if steps not in (None, diffusion.num_timesteps):
        raise ValueError(f"ancestral DDPM runs all T = {diffusion.num_timesteps} steps; for fewer use 'ddim' "
                         f"(eta=1 is DDPM-like) or 'dpmpp2m', got steps={steps}")


def sample_steps(model, diffusion: GaussianDiffusion, shape, sampler: str = "ddim", steps: int | None = None,
                 y=None, guidance: float = 0.0, eta: float = 0.0, threshold: str | None = "static",
                 percentile: float = 0.995, spacing: str | None = None, generator: torch.Generator | None = None,
                 device=None, x_T: torch.Tensor | None = None, progress: bool = False,
                 t_start: int | None = None) -> Iterator[Step]:
    """Draw x_T ~ N(0, I) (from `generator`) and yield every `Step` of the chosen sampler.

    sampler: "ddpm" (all T steps; `steps` must be None or T), "ddim" (default 50 steps) or "dpmpp2m"
    (default 20 steps). `spacing` None picks each sampler's default ("trailing" for DDIM, "logsnr" for
    DPM-Solver++). With `t_start`, `x_T` is x_{t_start} and the run starts there (see `ddpm_lite.editing`).
    Other arguments: see `make_denoiser` and the samplers.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if device is None:
        device = x_T.device if x_T is not None else model_device(model)
    if x_T is None:
        x_T = randn(tuple(shape), generator, device, torch.float32)
    if is_conditioning(y):  # text (or another conditioning object): one entry per sample
        if len(y) != x_T.shape[0]:
            raise ValueError(f"the conditioning must hold one entry per sample: {x_T.shape[0]} samples, {len(y)} "
                             f"entries")
        y = y.to(x_T.device)
    elif y is not None:
        y = torch.as_tensor(y, dtype=torch.long, device=x_T.device)
        if y.shape != (x_T.shape[0],):
            raise ValueError(f"y must hold one label per sample: expected shape [{x_T.shape[0]}], got {tuple(y.shape)}")
    denoiser = make_denoiser(model, diffusion, y, guidance, threshold, percentile)
    if sampler == "ddpm":
        check_ddpm_steps(diffusion, steps)
        return ddpm_steps(denoiser, diffusion, x_T, generator, progress, t_start)
    if sampler == "ddim":
        return ddim_steps(denoiser, diffusion, x_T, steps or 50, eta, spacing or "trailing", generator, progress,
                          t_start)
    return dpm_solver_pp_2m_steps(denoiser, diffusion, x_T, steps or 20, spacing or "logsnr", progress, t_start)


@torch.no_grad()
def sample(model, diffusion: GaussianDiffusion, shape, sampler: str = "ddim", steps: int | None = None, y=None,
           guidance: float = 0.0, eta: float = 0.0, threshold: str | None = "static", percentile: float = 0.995,
           spacing: str | None = None, generator: torch.Generator | None = None, device=None,
           x_T: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Generate a batch of samples of `shape` (B, C, H, W); returns x_0 clamped to [−1, 1].

    >>> x = sample(model, diffusion, (16, 1, 8, 8), sampler="ddim", steps=50, y=labels,
    ...            generator=torch.Generator().manual_seed(0))                      # doctest: +SKIP
    """
    with eval_mode(model):
        steps_iter = sample_steps(model, diffusion, shape, sampler, steps, y, guidance, eta, threshold, percentile,
                                  spacing, generator, device, x_T, progress)
        x = _last(steps_iter, x_T)
    return x.clamp(-1.0, 1.0)
