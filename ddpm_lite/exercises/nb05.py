"""Checks for notebook 05, "Watching a model sample".

Exercises:
    1. `check_pred_x0`: the model's estimate of the clean image from its noise prediction,
       x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t (Ho et al. 2020, eq. 4 solved for x_0; the x̂_0 of eq. 15).
    2. `check_ddim_step`: one deterministic DDIM update (η = 0; Song, Meng & Ermon 2021, eq. 12),
       x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂, with ᾱ_prev := 1 when t_prev = −1 (the data).

The learner passes a *function*; the check calls it on random inputs and compares it with the package
(`GaussianDiffusion.predict_x0_from_eps`, `samplers.ddim_steps`), and names the usual mistakes.
"""

from __future__ import annotations

import torch

from ..diffusion import GaussianDiffusion
from ..samplers import ddim_steps
from ..schedules import NoiseSchedule
from . import ExerciseError, allclose, as_tensor, call_answer, expect_close, passed

__all__ = ["check_pred_x0", "check_ddim_step"]


def _inputs(T: int, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(5, 1, 8, 8, generator=gen)
    eps = torch.randn(5, 1, 8, 8, generator=gen)
    return x_t, eps


# -- exercise 1: x̂_0 from ε̂ ----------------------------------------------------------------------------------


def check_pred_x0(pred_x0_fn, schedule: str = "linear", T: int = 1000) -> None:
    """`pred_x0_fn(x_t, t, eps, alphas_cumprod)` must return (x_t − √(1 − ᾱ_t) eps)/√ᾱ_t for a batch with one
    t per sample (t: torch.long [B]); compared with `GaussianDiffusion.predict_x0_from_eps`."""
    diffusion = GaussianDiffusion(schedule, T)
    ab = diffusion.schedule.alphas_cumprod.to(torch.float32)
    x_t, eps = _inputs(T)
    t = torch.tensor([0, T // 10, T // 4, T // 2, 3 * T // 4], dtype=torch.long)
    reference = diffusion.predict_x0_from_eps(x_t.double(), t, eps.double())
    got = as_tensor(call_answer(pred_x0_fn, "pred_x0", x_t.clone(), t.clone(), eps.clone(), ab.clone()), "pred_x0(...)")
    if got.shape != reference.shape:
        raise ExerciseError(f"the result has shape {tuple(got.shape)}, expected {tuple(reference.shape)}. Hint: "
                            "reshape ᾱ[t] to [B, 1, 1, 1] so that it broadcasts over the pixels.")
    a = ab.double()[t].reshape(-1, 1, 1, 1)
    xd, ed = x_t.double(), eps.double()
    mistakes = [
        ((xd - (1 - a) * ed) / a, "no square roots: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t."),
        ((xd - (1 - a).sqrt() * ed) / a, "divide by √ᾱ_t, not by ᾱ_t."),
        ((xd - (1 - a) * ed) / a.sqrt(), "the noise weight is √(1 − ᾱ_t), not 1 − ᾱ_t."),
        ((xd + (1 - a).sqrt() * ed) / a.sqrt(), "sign: subtract the predicted noise, x_t − √(1 − ᾱ_t) ε̂."),
        (xd - (1 - a).sqrt() * ed, "you removed the noise but did not rescale: divide by √ᾱ_t as well."),
        (a.sqrt() * xd - (1 - a).sqrt() * ed, "multiply by 1/√ᾱ_t, not by √ᾱ_t (that is the v-formula's shape)."),
    ]
    for wrong, message in mistakes:
        if allclose(got, wrong, atol=1e-5):
            raise ExerciseError(message)
    expect_close(got, reference, "pred_x0(...)", rtol=1e-4, atol=1e-4,
                 hint="x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t with ᾱ_t = alphas_cumprod[t] for each sample.")
    passed("x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t matches GaussianDiffusion.predict_x0_from_eps.")


# -- exercise 2: one DDIM step (η = 0) --------------------------------------------------------------------------


def check_ddim_step(ddim_step_fn, schedule: str = "linear", T: int = 1000) -> None:
    """`ddim_step_fn(x_t, eps, t, t_prev, alphas_cumprod)` must return x_{t_prev} of deterministic DDIM (η = 0):

        x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t,   x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂,

    for integer timesteps t > t_prev (t_prev = −1 means "to the data", where ᾱ_prev = 1)."""
    diffusion = GaussianDiffusion(schedule, T)
    ab = diffusion.schedule.alphas_cumprod.to(torch.float32)
    x_t, eps = _inputs(T, seed=11)
    cases = [(T - 1, T - 1 - T // 20), (T // 2, T // 2 - T // 10), (T // 10, 0), (T // 50, -1)]
    for t, t_prev in cases:
        reference = _ddim_reference(diffusion, x_t.double(), eps.double(), t, t_prev)
        got = as_tensor(call_answer(ddim_step_fn, "ddim_step", x_t.clone(), eps.clone(), t, t_prev, ab.clone()), "ddim_step(...)")
        if got.shape != reference.shape:
            raise ExerciseError(f"the result has shape {tuple(got.shape)}, expected {tuple(reference.shape)}.")
        if allclose(got, reference, rtol=1e-4, atol=1e-4):
            continue
        where = f"(t = {t} -> t_prev = {t_prev})"
        a_t = float(ab[t])
        a_p = 1.0 if t_prev < 0 else float(ab[t_prev])
        xd, ed = x_t.double(), eps.double()
        x0 = (xd - (1 - a_t) ** 0.5 * ed) / a_t ** 0.5
        if t_prev < 0 and torch.isnan(got).any():
            raise ExerciseError(f"NaN {where}: for t_prev = −1 use ᾱ_prev = 1 (the clean data), not alphas_cumprod[-1].")
        mistakes = [
            (a_p * x0 + (1 - a_p) * ed, "use √ᾱ_prev and √(1 − ᾱ_prev) as weights, not ᾱ_prev and 1 − ᾱ_prev."),
            (a_p ** 0.5 * xd + (1 - a_p) ** 0.5 * ed, "the first term is √ᾱ_prev · x̂_0 (the predicted clean image), "
                                                      "not √ᾱ_prev · x_t."),
            (a_p ** 0.5 * x0, "you dropped the noise term: DDIM keeps the direction √(1 − ᾱ_prev) ε̂ pointing to x_t."),
            (x0, "that is x̂_0 itself; DDIM re-noises it to the level of t_prev: √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂."),
        ]
        if t_prev < 0:
            a_last = float(ab[-1])
            mistakes.append((a_last ** 0.5 * x0 + (1 - a_last) ** 0.5 * ed,
                             "for t_prev = −1, ᾱ_prev is 1 (x_{−1} is the data), not alphas_cumprod[-1] "
                             "(Python's negative indexing!)."))
        else:
            a_p1 = float(ab[t_prev + 1])
            mistakes.append((a_p1 ** 0.5 * x0 + (1 - a_p1) ** 0.5 * ed, "ᾱ_prev is alphas_cumprod[t_prev] (off by one)."))
        for wrong, message in mistakes:
            if allclose(got, wrong, rtol=1e-4, atol=1e-4):
                raise ExerciseError(f"{message} {where}")
        expect_close(got, reference, "ddim_step(...)", rtol=1e-4, atol=1e-4,
                     hint=f"{where}: x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂ with x̂_0 from ε̂.")
    passed("your DDIM step (η = 0) matches samplers.ddim_steps, including the last step to the data (t_prev = −1).")


def _ddim_reference(diffusion: GaussianDiffusion, x_t, eps, t: int, t_prev: int) -> torch.Tensor:
    """One η = 0 update t -> t_prev computed by `samplers.ddim_steps` itself.

    `ddim_steps` walks a whole timestep sequence, so it runs here on a two-step diffusion built from custom
    betas whose ᾱ table is [ᾱ_{t_prev}, ᾱ_t] (only [ᾱ_t] when t_prev = −1, the data): its first update is
    exactly t -> t_prev. The denoiser returns the given ε̂ and the x̂_0 the real diffusion derives from it.
    """
    ab = diffusion.schedule.alphas_cumprod
    if t_prev >= 0:
        betas = torch.stack([1 - ab[t_prev], 1 - ab[t] / ab[t_prev]])
    else:
        betas = (1 - ab[t]).reshape(1)
    small = GaussianDiffusion(NoiseSchedule(betas=betas))
    t_full = torch.full((x_t.shape[0],), t, dtype=torch.long)

    def denoiser(x, _):
        return diffusion.predict_x0_from_eps(x, t_full, eps), eps

    return next(iter(ddim_steps(denoiser, small, x_t, steps=small.num_timesteps, eta=0.0, spacing="trailing"))).x
