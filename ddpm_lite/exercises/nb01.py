"""Checks for notebook 01, "The forward process: adding noise".

Exercises:
    1. `check_alpha_bar`: ᾱ_t = ∏_{s≤t} (1 − β_s) from the β schedule (Ho et al. 2020, notation above eq. 4).
    2. `check_q_sample`: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a function of (x0, t, noise, alphas_cumprod)
       (Ho et al. 2020, eq. 4).
    3. `check_snr_crossing`: the first timestep where SNR(t) = ᾱ_t/(1 − ᾱ_t) drops below 1 (Kingma et al.
       2021's signal-to-noise ratio), for a named schedule.

Every reference is computed by the package (`NoiseSchedule`, `GaussianDiffusion.q_sample`); the checks
recognise the usual mistakes and say what to look at.
"""

from __future__ import annotations

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import NoiseSchedule
from . import ExerciseError, allclose, as_tensor, call_answer, expect_close, passed

__all__ = ["check_alpha_bar", "check_q_sample", "check_snr_crossing", "snr_crossing"]


# -- exercise 1: ᾱ_t from β_t ---------------------------------------------------------------------------------


def check_alpha_bar(alpha_bar, betas) -> None:
    """`alpha_bar` must be ᾱ_t = ∏_{s=0}^{t} (1 − β_s) for every t (a length-T tensor), given `betas` [T]."""
    betas = as_tensor(betas, "betas")
    got = as_tensor(alpha_bar, "alpha_bar")
    reference = NoiseSchedule(betas=betas).alphas_cumprod
    if got.shape != reference.shape:
        raise ExerciseError(
            f"`alpha_bar` has shape {tuple(got.shape)}, expected {tuple(reference.shape)}: one value per timestep "
            "(use a cumulative product, not a single product)."
        )
    if allclose(got, torch.cumprod(betas, 0)):
        raise ExerciseError("`alpha_bar` is the cumulative product of β_t: it should be of α_t = 1 − β_t.")
    if allclose(got, 1 - torch.cumsum(betas, 0)):
        raise ExerciseError("`alpha_bar` is 1 − Σβ_s (a sum): ᾱ_t is a *product*, ∏ (1 − β_s) (torch.cumprod).")
    if allclose(got, torch.cumprod(1 - betas, 0).sqrt()):
        raise ExerciseError("`alpha_bar` looks like √ᾱ_t: ᾱ_t itself has no square root.")
    if allclose(got[1:], reference[:-1]):
        raise ExerciseError("`alpha_bar` is shifted by one step: ᾱ_0 already includes (1 − β_0).")
    expect_close(got, reference, "alpha_bar", rtol=1e-5, hint="ᾱ_t = ∏_{s≤t} (1 − β_s): try torch.cumprod.")
    passed(f"ᾱ_t = ∏(1 − β_s); here ᾱ goes from {float(reference[0]):.4f} at t = 0 to {float(reference[-1]):.2e} "
           f"at t = {len(reference) - 1}.")


# -- exercise 2: q_sample by hand -----------------------------------------------------------------------------


def check_q_sample(q_sample_fn, schedule: str = "linear", T: int = 1000) -> None:
    """`q_sample_fn(x0, t, noise, alphas_cumprod)` must return √ᾱ_t x0 + √(1 − ᾱ_t) noise (eq. 4).

    It is called on a batch of random "images" [B, 1, 8, 8] with a different t per sample and compared with
    `GaussianDiffusion.q_sample`.
    """
    diffusion = GaussianDiffusion(schedule, T)
    ab = diffusion.schedule.alphas_cumprod.to(torch.float32)
    gen = torch.Generator().manual_seed(1234)
    x0 = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(6, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 1, T // 10, T // 3, T // 2, T - 1], dtype=torch.long)
    reference = diffusion.q_sample(x0, t, noise=noise).double()
    got = as_tensor(call_answer(q_sample_fn, "q_sample", x0.clone(), t.clone(), noise.clone(), ab.clone()),
                    "q_sample(...)")
    if got.shape != reference.shape:
        raise ExerciseError(
            f"the result has shape {tuple(got.shape)}, expected {tuple(reference.shape)} (the shape of x0). "
            "Hint: ᾱ[t] has shape [B]; reshape it to [B, 1, 1, 1] so that it broadcasts over the pixels."
        )
    abt = ab.double()[t].reshape(-1, 1, 1, 1)
    x0d, nd = x0.double(), noise.double()
    mistakes = [
        (abt * x0d + (1 - abt) * nd, "you used ᾱ_t and 1 − ᾱ_t as the weights; eq. 4 uses their square roots, "
                                     "√ᾱ_t and √(1 − ᾱ_t) (the *variances* are ᾱ_t and 1 − ᾱ_t)."),
        (abt.sqrt() * x0d + (1 - abt) * nd, "the noise weight should be √(1 − ᾱ_t), not 1 − ᾱ_t."),
        (abt * x0d + (1 - abt).sqrt() * nd, "the signal weight should be √ᾱ_t, not ᾱ_t."),
        (abt.sqrt() * x0d + (1 - abt.sqrt()) * nd, "the noise weight is √(1 − ᾱ_t), not 1 − √ᾱ_t."),
        (abt.sqrt() * nd + (1 - abt).sqrt() * x0d, "x0 and the noise are swapped: √ᾱ_t multiplies x0."),
    ]
    for wrong, message in mistakes:
        if allclose(got, wrong.float().double(), rtol=1e-4, atol=1e-5):
            raise ExerciseError(message)
    t_shift = torch.clamp(t + 1, max=T - 1)
    abt1 = ab.double()[t_shift].reshape(-1, 1, 1, 1)
    if allclose(got, abt1.sqrt() * x0d + (1 - abt1).sqrt() * nd, rtol=1e-4, atol=1e-5):
        raise ExerciseError("off by one: index the table with t itself (t is 0-based), not t + 1.")
    ab0 = ab.double()[t[:1]].reshape(1, 1, 1, 1).expand(6, 1, 1, 1)
    if allclose(got, ab0.sqrt() * x0d + (1 - ab0).sqrt() * nd, rtol=1e-4, atol=1e-5):
        raise ExerciseError("every sample got the timestep of the first one: use ᾱ[t] for the whole vector t.")
    expect_close(got, reference, "q_sample(...)", rtol=1e-4, atol=1e-5,
                 hint="Expected x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε with ᾱ_t = alphas_cumprod[t] per sample.")
    passed("your q_sample matches GaussianDiffusion.q_sample (eq. 4) for every t in the batch.")


# -- exercise 3: where does SNR cross 1? ----------------------------------------------------------------------


def snr_crossing(schedule: str = "cosine", T: int = 1000) -> int:
    """The smallest 0-based t with SNR(t) = ᾱ_t/(1 − ᾱ_t) < 1, i.e. ᾱ_t < 1/2: from there on x_t holds more
    noise variance than signal variance."""
    snr = NoiseSchedule(schedule, T).snr
    below = torch.nonzero(snr < 1)
    if below.numel() == 0:
        raise ValueError(f"SNR never drops below 1 for {schedule!r} with T = {T}")
    return int(below[0])


def check_snr_crossing(t_cross, schedule: str = "cosine", T: int = 1000) -> None:
    """`t_cross` must be the first (0-based) timestep at which SNR(t) < 1 for `schedule` with `T` steps."""
    if t_cross is None:
        raise ExerciseError("`t_cross` is None: did you forget to assign it?")
    if torch.is_tensor(t_cross):
        if t_cross.numel() != 1:
            raise ExerciseError(f"`t_cross` should be one timestep, got a tensor of shape {tuple(t_cross.shape)}")
        t_cross = t_cross.item()
    if isinstance(t_cross, float) and t_cross.is_integer():
        t_cross = int(t_cross)
    if not isinstance(t_cross, int) or isinstance(t_cross, bool):
        raise ExerciseError(f"`t_cross` should be an integer timestep, got {t_cross!r}")
    reference = snr_crossing(schedule, T)
    others = {name: snr_crossing(name, T) for name in ("linear", "cosine", "sigmoid") if name != schedule}
    if t_cross == reference:
        ab = float(NoiseSchedule(schedule, T).alphas_cumprod[reference])
        passed(f"for the {schedule} schedule SNR first drops below 1 at t = {reference} (ᾱ_t = {ab:.3f} < 0.5); "
               + ", ".join(f"{k}: t = {v}" for k, v in others.items()) + ".")
        return
    for name, value in others.items():
        if t_cross == value:
            raise ExerciseError(f"t = {t_cross} is where the *{name}* schedule crosses; use the {schedule} schedule.")
    if t_cross == reference - 1:
        raise ExerciseError(f"t = {t_cross} is the last step where SNR is still ≥ 1; the question asks for the first "
                            "step where it is below 1.")
    if t_cross == reference + 1:
        raise ExerciseError("off by one: timesteps are 0-based here (index t is the paper's step t + 1).")
    raise ExerciseError(
        f"t = {t_cross} is not it. SNR(t) = ᾱ_t/(1 − ᾱ_t) < 1 means ᾱ_t < 0.5: find the first index where "
        "`schedule.snr < 1` (torch.nonzero or argmax on a boolean tensor)."
    )
