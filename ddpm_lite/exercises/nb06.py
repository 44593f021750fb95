"""Checks for notebook 06, "Watching a model sample".

Exercises:
    1. `check_ddpm_sample`: ancestral sampling, Algorithm 2 of Ho et al. (2020), as a loop the learner writes,
       ddpm_sample(denoiser, diffusion, x_T, generator) -> x_0: for t = T−1 … 0, (x̂_0, ε̂) = denoiser(x, t),
       x ← μ̃_t(x̂_0, x_t) + σ_t z with σ_t² = β̃_t and no noise at t = 0; compared with `samplers.ddpm` on the
       exact denoiser of a 2D Gaussian mixture with a 100-step schedule (same generator, same draws). Notebook 06
       then runs the learner's loop on the digits model and shows that it reproduces section 2's samples.
    2. `check_ddim_step`: one deterministic DDIM update (η = 0; Song, Meng & Ermon 2021, eq. 12),
       x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂, with ᾱ_prev := 1 when t_prev = −1 (the data); the notebook
       then samples with it.
    Predict, then run: `SETTLE_CHOICES`, `commit_settle_prediction(p)` before the 1000-step run,
       `reveal_settle(p, t_settled, T)` after the classifier has read every x̂_0: when is the digit decided?

The learner passes a *function*; the check calls it on random inputs and compares it with the package
(`samplers.ddpm`, `samplers.ddim_steps`), and names the usual mistakes: for the loop, no fresh noise, the
variance β̃_t used as a standard deviation, β_t instead of β̃_t, noise on the last step, a jump to x̂_0, the
posterior coefficients swapped or off by one, one z for every step, T hard-coded, the loop one step short or
run forwards, x_T ignored, the generator ignored; for the DDIM step, the usual formula slips.
"""

from __future__ import annotations

import torch

from ..diffusion import GaussianDiffusion
from ..samplers import ddim_steps, ddpm, make_denoiser
from ..schedules import NoiseSchedule
from . import (ExerciseError, WatchedDenoiser, allclose, as_tensor, call_answer, commit_choice, expect_close, passed,
               reveal_choice)

__all__ = ["check_ddpm_sample", "check_ddim_step", "SETTLE_CHOICES", "commit_settle_prediction", "settle_truth",
           "reveal_settle"]


def _inputs(T: int, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(5, 1, 8, 8, generator=gen)
    eps = torch.randn(5, 1, 8, 8, generator=gen)
    return x_t, eps


# -- exercise 1: the ancestral sampling loop ------------------------------------------------------------------------


def _ddpm_variant(denoiser, diffusion, x_T, generator, kind: str):
    """A typical wrong version of the loop (same draws from `generator` as the right one)."""
    s = diffusion.schedule
    T = diffusion.num_timesteps
    x = x_T
    z_once = torch.randn(x.shape, generator=generator, dtype=x.dtype) if kind == "one_z" else None
    for t in range(T - 1, -1, -1):
        x0, _ = denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long))
        c1, c2 = s.posterior_mean_coef1[t], s.posterior_mean_coef2[t]
        if kind == "off_by_one":
            c1, c2 = s.posterior_mean_coef1[t - 1], s.posterior_mean_coef2[t - 1]
        mean = c2 * x0 + c1 * x if kind == "swapped" else x0 if kind == "jump" else c1 * x0 + c2 * x
        sigma = s.posterior_variance[t].sqrt()
        if kind == "variance":
            sigma = s.posterior_variance[t]
        elif kind == "beta":
            sigma = s.betas[t].sqrt()
        elif kind == "off_by_one":
            sigma = s.posterior_variance[t - 1].sqrt()
        if kind == "noise_at_0" and t == 0:
            sigma = s.posterior_variance[1].sqrt()
        if kind == "no_noise" or (t == 0 and kind != "noise_at_0"):
            x = mean
        else:
            z = z_once if kind == "one_z" else torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = mean + sigma * z
    return x


_DDPM_MISTAKES = {
    "no_noise": "you never add the fresh noise σ_t z: for t > 0 the step is x_{t−1} = μ̃_t + σ_t z with "
                "z ~ N(0, I) (torch.randn(x.shape, generator=generator, dtype=x.dtype)); without it the samples "
                "collapse towards averages.",
    "variance": "σ_t is a standard deviation: multiply z by √β̃_t (the square root of "
                "diffusion.schedule.posterior_variance[t]), not by the variance β̃_t.",
    "beta": "σ_t² is β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t here (schedule.posterior_variance, variance='fixed_small'), "
            "not β_t (Ho et al.'s other choice, 'fixed_large').",
    "noise_at_0": "no noise on the last step: at t = 0 the sample is the posterior mean itself (σ_0 = 0).",
    "jump": "you jumped to the guess x̂_0 at every step: a step goes to the posterior mean "
            "μ̃_t(x̂_0, x_t) = c1·x̂_0 + c2·x_t, a small move from x_t towards x̂_0.",
    "swapped": "the posterior mean's coefficients are swapped: posterior_mean_coef1 (√ᾱ_{t−1} β_t/(1 − ᾱ_t)) "
               "multiplies x̂_0, posterior_mean_coef2 (√α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)) multiplies x_t.",
    "off_by_one": "off by one: the step from x_t uses the schedule's entries at index t (coef1[t], coef2[t], "
                  "β̃_t), not t − 1.",
    "one_z": "you drew z once and reused it: every step needs a fresh z ~ N(0, I).",
}


def check_ddpm_sample(ddpm_sample_fn) -> None:
    """`ddpm_sample_fn(denoiser, diffusion, x_T, generator)` must return x_0 of ancestral sampling: for
    t = T−1 … 0, (x̂_0, ε̂) = denoiser(x, t as a long tensor [B]); x ← c1_t x̂_0 + c2_t x (the posterior mean
    μ̃_t), plus σ_t z with σ_t² = β̃_t and z = torch.randn(x.shape, generator=generator, dtype=x.dtype) for
    t > 0 only. Compared with `samplers.ddpm` on the exact denoiser of 8 Gaussians on a ring, T = 100."""
    from ..toys import ExactGMMDenoiser, GaussianMixture

    diffusion = GaussianDiffusion("linear", 100)
    T = diffusion.num_timesteps
    ring = GaussianMixture.ring(8, radius=0.7, std=0.07, dtype=torch.float64)
    denoiser = make_denoiser(ExactGMMDenoiser(ring, diffusion.schedule), diffusion, threshold=None)
    x_T = torch.randn(24, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def run(seed):
        out_of_range = ("the denoiser was asked for t = {t}, but this diffusion has T = {T} timesteps, indexed "
                        "0 … {T_last}: loop over range(diffusion.num_timesteps) backwards, not a fixed 1000.")
        watched = WatchedDenoiser(denoiser, T, x_T.shape[0], out_of_range, out_of_range)
        out = call_answer(ddpm_sample_fn, "ddpm_sample", watched, diffusion, x_T.clone(),
                          torch.Generator().manual_seed(seed))
        return as_tensor(out, "ddpm_sample(...)"), watched

    got, watched = run(1)
    ref = ddpm(denoiser, diffusion, x_T, generator=torch.Generator().manual_seed(1))
    if got.shape != ref.shape:
        raise ExerciseError(f"ddpm_sample returned shape {tuple(got.shape)}, expected the shape of x_T "
                            f"{tuple(ref.shape)}.")
    if not torch.isfinite(got).all():
        raise ExerciseError("NaN or inf in your samples: is a square root taken of a negative number, or a "
                            "division by 1 − ᾱ at t = 0?")
    if watched.first_x is not None and not torch.allclose(watched.first_x, x_T):
        raise ExerciseError("the first denoiser call did not get x_T: start the loop from the given x_T (do not "
                            "draw a new one), so that a seed fixes the sample.")
    expected = list(range(T - 1, -1, -1))
    if watched.ts != expected:
        if watched.ts == expected[:-1]:
            raise ExerciseError("the loop stops one step early, at t = 1: run t = T−1, …, 1, 0; the last step "
                                "(t = 0, no noise) lands on the data.")
        if watched.ts == expected[::-1]:
            raise ExerciseError("the loop runs forwards: sampling goes from the noise, t = T−1, down to t = 0.")
        raise ExerciseError(f"the denoiser should be called once per timestep, t = {T - 1}, {T - 2}, …, 0 "
                            f"({T} calls); it was called {len(watched.ts)} times, first with "
                            f"{watched.ts[:3]}….")
    if allclose(got, ref, rtol=1e-5, atol=1e-6):
        again, _ = run(1)
        if not torch.equal(again, got):
            raise ExerciseError("two runs with the same generator seed differ: draw z from `generator` "
                                "(torch.randn(x.shape, generator=generator, dtype=x.dtype)).")
        passed("your loop matches samplers.ddpm step for step: posterior mean μ̃_t(x̂_0, x_t) plus √β̃_t z, no noise "
               "at t = 0. The next cell runs it on the digits model.")
        return
    for kind, message in _DDPM_MISTAKES.items():
        wrong = _ddpm_variant(denoiser, diffusion, x_T.clone(), torch.Generator().manual_seed(1), kind)
        if allclose(got, wrong, rtol=1e-5, atol=1e-6):
            raise ExerciseError(message)
    again, _ = run(1)
    if not torch.equal(again, got):
        raise ExerciseError("two runs with the same generator seed differ: draw every z from `generator` "
                            "(torch.randn(x.shape, generator=generator, dtype=x.dtype)), not from the global "
                            "random state.")
    raise ExerciseError(f"your samples differ from samplers.ddpm's (same x_T, same generator) by up to "
                        f"{(got - ref).abs().max().item():.3g}: x_{{t−1}} = c1_t·x̂_0 + c2_t·x_t + √β̃_t·z for t > 0, "
                        f"z drawn after the denoiser call.")


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



# -- predict, then run: when is the digit decided? ------------------------------------------------------------------

SETTLE_CHOICES = {
    "a": "early, in the first third of the run (t > 667), while x_t still looks like pure noise",
    "b": "in the middle third (333 < t ≤ 667)",
    "c": "late, in the last third (t ≤ 333), when x_t itself starts to show the digit",
}

_SETTLE_MISTAKES = {
    "b": "The middle is where x_t starts to look like something; x̂_0 is ahead of x_t.",
    "c": "x_t shows the digit late because it still carries most of its noise; x̂_0 is the model's guess of the "
         "end result, with that noise taken out, and it commits long before x_t can be read.",
}


def commit_settle_prediction(prediction) -> str:
    """Before the 1000-step run: from which t on will the model's guesses x̂_0 show the requested digit?"""
    return commit_choice(prediction, SETTLE_CHOICES)


def settle_truth(t_settled: int, T: int = 1000) -> str:
    """The third of the run that the measured t (from which on the guesses show the digit) falls in."""
    return "a" if t_settled > round(2 * T / 3) else "b" if t_settled > round(T / 3) else "c"


def reveal_settle(prediction, t_settled: int, T: int = 1000) -> bool:
    """After the run: the measured t decides; the reasoning is printed either way."""
    truth = settle_truth(int(t_settled), T)
    key = commit_choice(prediction, SETTLE_CHOICES, echo=False)
    why = ("the coarse shape lives in the low frequencies, which the forward process drowns last and the reverse "
           "process therefore restores first; with the label fixing which digit to draw, a few noisy steps are "
           "enough for the guess x̂_0 to commit to its shape. The remaining steps remove noise and refine details.")
    return reveal_choice(key, truth, SETTLE_CHOICES, why,
                         wrong_why={("a", k): text for k, text in _SETTLE_MISTAKES.items()},
                         measured=f"measured: at least 9 of 10 guesses show the requested digit from t = "
                                  f"{int(t_settled)} on, of {T}")
