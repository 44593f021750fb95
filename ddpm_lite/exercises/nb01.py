"""Checks for notebook 01, "The forward process: adding noise".

Exercises (the notebook numbers them: 1 = `check_cosine_betas`, in §4 where the notebook uses it; 2–4 = the others):
    1. `check_alpha_bar`: ᾱ_t = ∏_{s≤t} (1 − β_s) from the β schedule (Ho et al. 2020, notation above eq. 4).
    2. `check_q_sample`: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a function of (x0, t, noise, alphas_cumprod)
       (Ho et al. 2020, eq. 4).
    3. `check_snr_crossing`: the first timestep where SNR(t) = ᾱ_t/(1 − ᾱ_t) drops below 1 (Kingma et al.
       2021's signal-to-noise ratio), for a named schedule.
    4. `check_cosine_betas`: build the cosine schedule (Nichol & Dhariwal 2021, eq. 17) as a function
       fn(T, s) -> β [T]; the notebook then plots and uses the learner's schedule in place of the package's.
    Predict, then run: `IDENTIFY_CHOICES`, `commit_identify_prediction(p)` before the identification experiment,
       `reveal_identify(p, accuracy, ...)` after it: at SNR = 1, what share of 256 noisy digits can still be
       traced back to their original?

Every reference is computed by the package (`NoiseSchedule`, `GaussianDiffusion.q_sample`,
`schedules.cosine_beta_schedule`); the checks recognise the usual mistakes, name them and say what to look at.
"""

from __future__ import annotations

import torch

from ..diffusion import GaussianDiffusion
import math

from ..schedules import NoiseSchedule, cosine_beta_schedule
from . import ExerciseError, allclose, as_tensor, call_answer, commit_choice, expect_close, passed, reveal_choice

__all__ = ["check_alpha_bar", "check_q_sample", "check_snr_crossing", "snr_crossing", "check_cosine_betas",
           "IDENTIFY_CHOICES", "commit_identify_prediction", "identify_truth", "reveal_identify"]


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


# -- exercise 4: the cosine schedule, built and then used -----------------------------------------------------------


def _cosine_variant(T: int, s: float, squared: bool = True, offset: bool = True, divide: bool = True,
                    clip: bool = True, shift: bool = False, out: str = "beta") -> torch.Tensor:
    """The cosine schedule's β (or ᾱ), right or with one of the usual mistakes: to recognise a wrong answer."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    if shift:                        # f evaluated at t = 0 … T−1 only, with ᾱ_{−1} := 1 in front
        steps = steps[:-1]
    s_used = s if offset else 0.0
    angle = (steps + s_used) / ((1 + s_used) if divide else 1.0) * math.pi / 2
    f = torch.cos(angle) ** (2 if squared else 1)
    ab = f / f[0]
    if out == "alpha_bar":
        return ab[1:]
    if out == "one_minus_alpha_bar":
        return 1 - ab[1:]
    if shift:
        ab = torch.cat([torch.ones(1, dtype=ab.dtype), ab])
    betas = 1 - ab[1:] / ab[:-1]
    return betas.clamp(max=0.999) if clip else betas


def check_cosine_betas(fn, s: float = 0.008) -> None:
    """`fn(T, s)` must return the cosine schedule's β_t for t = 0 … T−1 (a tensor [T]):
    ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2) at t = 0 … T, β_t = 1 − ᾱ(t+1)/ᾱ(t), clipped at 0.999
    (Nichol & Dhariwal 2021, eq. 17 and §3.2). Compared with `schedules.cosine_beta_schedule` for T = 1000 and 50."""
    for T in (1000, 50):
        answer = call_answer(fn, "cosine_betas", T, s)
        got = as_tensor(answer, "betas")
        reference = cosine_beta_schedule(T, s)
        low = torch.is_tensor(answer) and answer.dtype != torch.float64
        rtol, atol = (2e-3, 1e-6) if low else (1e-7, 1e-12)

        def same(wrong):
            return allclose(got, wrong, rtol=rtol, atol=atol)

        if got.ndim == 1 and got.shape[0] == T + 1:
            raise ExerciseError(f"you returned {T + 1} values for T = {T}: f (and ᾱ) has T + 1 points, t = 0 … T, "
                                f"but there are only T betas, β_t = 1 − ᾱ(t+1)/ᾱ(t).")
        if got.shape != reference.shape:
            raise ExerciseError(f"for T = {T} the betas have shape {tuple(got.shape)}, expected {tuple(reference.shape)}: "
                                f"one β per step. Evaluate f at the T + 1 points t = 0 … T (torch.arange(T + 1) / T).")
        if not torch.isfinite(got).all():
            raise ExerciseError("NaN or inf in your betas: ᾱ(T) = f(T)/f(0) is 0 (cos(π/2) = 0), so divide by ᾱ(t) "
                                "only for t < T, and clip β at 0.999.")
        if float(got.max()) > 0.999 + 1e-6 and allclose(got[:-1], reference[:-1], rtol=rtol, atol=atol):
            raise ExerciseError(f"the last β is {float(got[-1]):.4f}: f(T) = cos²(π/2) = 0 makes β = 1 (ᾱ_T = 0, an "
                                f"infinite log-SNR). Clip β at 0.999 (.clamp(max=0.999)), as Nichol & Dhariwal do.")
        if same(reference):
            continue
        mistakes = [
            (_cosine_variant(T, s, out="alpha_bar"), "those are ᾱ_t = f(t)/f(0), not the betas: return "
                                                     "β_t = 1 − ᾱ(t+1)/ᾱ(t)."),
            (_cosine_variant(T, s, out="one_minus_alpha_bar"),
             "those are 1 − ᾱ_t, the variance of the noise in x_t: β_t = 1 − ᾱ(t+1)/ᾱ(t) is one step's share."),
            (_cosine_variant(T, s, squared=False), "f(t) is the *squared* cosine, cos²(…): you used cos(…)."),
            (_cosine_variant(T, s, squared=False, clip=False), "f(t) is the *squared* cosine, cos²(…): you used "
                                                              "cos(…)."),
            (_cosine_variant(T, s, offset=False), "the offset s is missing: with s = 0, β is tiny near t = 0 and "
                                                  "the first steps add almost no noise; use (t/T + s)/(1 + s)."),
            (_cosine_variant(T, s, divide=False), "divide (t/T + s) by (1 + s): without it the angle passes π/2 "
                                                  "before t = T."),
            (_cosine_variant(T, s, shift=True), "shifted by one step: your β_0 is 0. Evaluate f at t = 0 … T "
                                                "(T + 1 points) and take β_t = 1 − ᾱ(t+1)/ᾱ(t), so β_0 is already "
                                                "a step of noise."),
        ]
        for wrong, message in mistakes:
            # the last step is where the clipping differs (and a β of exactly 1 or a ᾱ of 0 lives): compare before it;
            # a learner may clip at 0.999 only, or also at 0 from below (a wrong angle makes some β negative)
            if any(allclose(got[:-1], w[:-1], rtol=max(rtol, 1e-6), atol=max(atol, 1e-9))
                   for w in (wrong, wrong.clamp(min=0.0))):
                raise ExerciseError(message)
        ab = torch.cumprod(1 - reference, 0)
        if allclose(got, 1 - ab.roll(1) / ab, rtol=1e-3, atol=1e-6):
            raise ExerciseError("the ratio is upside down: β_t = 1 − ᾱ(t+1)/ᾱ(t) (the later one on top).")
        expect_close(got, reference, "betas", rtol=rtol, atol=atol,
                     hint=f"(T = {T}) f(t) = cos²((t/T + s)/(1 + s)·π/2) at t = 0 … T, ᾱ = f/f(0), "
                          "β_t = 1 − ᾱ(t+1)/ᾱ(t), clipped at 0.999.")
    ref = NoiseSchedule(betas=cosine_beta_schedule(1000, s))
    passed(f"your cosine schedule matches Nichol & Dhariwal's eq. 17 (ᾱ at t = 500: "
           f"{float(ref.alphas_cumprod[500]):.3f}; β clipped at 0.999 only at the very last step). The plots and "
           f"experiments below use your schedule.")


# -- predict, then run: how much identity survives SNR = 1? ---------------------------------------------------------

IDENTIFY_CHOICES = {
    "a": "most of them (50% or more)",
    "b": "some of them (10% to 50%)",
    "c": "almost none (under 10%): with as much noise as signal the digit is lost",
}


def commit_identify_prediction(prediction) -> str:
    """Before the run: at the first t where SNR(t) < 1 (signal variance = noise variance), what share of 256
    noisy digits does the nearest-scaled-original guess trace back to the right one?"""
    return commit_choice(prediction, IDENTIFY_CHOICES)


def identify_truth(accuracy: float) -> str:
    """The choice that a measured identification accuracy falls in."""
    return "a" if accuracy >= 0.5 else "b" if accuracy >= 0.1 else "c"


def reveal_identify(prediction, accuracy: float, t: int, nn_distance: float, alpha_bar: float) -> bool:
    """After the run: the measured `accuracy` at step `t` (ᾱ_t = `alpha_bar`) decides; `nn_distance` is the
    median distance from a digit to its nearest other digit, which the reasoning uses."""
    margin = 0.5 * math.sqrt(alpha_bar) * nn_distance / math.sqrt(1 - alpha_bar)
    why = (f"SNR(t) compares signal and noise *per pixel*, but the guess uses all 64 pixels at once. To tell two "
           f"candidates apart, only the noise along the line that joins them matters: one direction of the 64, "
           f"with standard deviation √(1 − ᾱ_t). The candidates are √ᾱ_t‖x_0⁽ⁱ⁾ − x_0⁽ʲ⁾‖ apart, and a digit's "
           f"nearest other digit is typically {nn_distance:.1f} away (measured), so the half-way point lies "
           f"{margin:.2f} noise standard deviations from the right answer, even at SNR = 1. The evidence adds up over "
           f"the pixels: the more pixels, the longer an image keeps its identity at a given SNR. That is why "
           f"larger images need schedules shifted towards more noise (Chen 2023; end of this section).")
    return reveal_choice(prediction, identify_truth(accuracy), IDENTIFY_CHOICES, why,
                         measured=f"measured: {accuracy:.0%} identified at t = {t}, SNR = {alpha_bar / (1 - alpha_bar):.2f}")
