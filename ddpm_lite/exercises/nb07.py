"""Checks for notebook 07, "Fast sampling: DDIM and DPM-Solver++".

Exercises:
    1. `check_ddim_sigma(fn)`: the DDIM noise level σ_τ(η) = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
       (Song, Meng & Ermon 2021, eq. 16), compared with `ddpm_lite.samplers.ddim_sigma` and, at η = 1, with
       DDPM's posterior variance β̃_t.
    2. `check_ddim_step(fn)`: one generalised DDIM update with noise (eq. 12),
       x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, compared with `samplers.ddim_steps`.
    3. `check_trailing_timesteps(fn)`: the "trailing" timestep spacing, compared with
       `samplers.timestep_sequence(T, S, "trailing")`.
    4. `check_ddim_sampler(fn)`: a whole DDIM sampler built from the three pieces,
       fn(denoiser, diffusion, x_T, steps, eta, generator) -> x_0, compared with `samplers.ddim` (trailing spacing,
       same generator) on the exact denoiser of a 2D Gaussian mixture for η = 0, 0.5 and 1; notebook 07 then runs
       the learner's sampler on the digits model beside the package's.
    Predict, then run: `PLATEAU_CHOICES`, `commit_plateau_prediction(p)` before §7's error decomposition,
       `reveal_plateau(p, total_20, total_50, exact_50)` after it: what do 20 → 50 DDIM steps buy with a learned
       network?

Every reference is computed by the package at check time, never typed in. The sampler's check names the usual
slips: leading spacing, the final step to the data missing, ᾱ_prev read as alphas_cumprod[-1] on that step, σ
from consecutive timesteps instead of the jump, η ignored, one z for every step, the denoiser asked at t_prev,
x_T or the generator ignored.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import GaussianDiffusion
from ..samplers import ddim, ddim_sigma, ddim_steps, make_denoiser, timestep_sequence
from . import (ExerciseError, NotAnsweredError, WatchedDenoiser, allclose, as_tensor, call_answer, commit_choice,
               passed, reveal_choice)

__all__ = ["check_ddim_sigma", "check_ddim_step", "check_trailing_timesteps", "check_ddim_sampler",
           "PLATEAU_CHOICES", "commit_plateau_prediction", "plateau_truth", "reveal_plateau"]


def _number(value, name: str) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ExerciseError(f"`{name}` should return one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ExerciseError(f"`{name}` should return a number, got {type(value).__name__}") from None


# -- exercise 1: the DDIM σ -------------------------------------------------------------------------------------

def check_ddim_sigma(sigma_fn) -> None:
    """`sigma_fn(alpha_bar_t, alpha_bar_prev, eta)` (floats) must return the standard deviation σ of eq. 16.

    Checked on pairs (ᾱ_t, ᾱ_prev) of a linear schedule with gaps of 1, 20 and 200 steps and η ∈ {0, 0.5, 1};
    at η = 1 with a gap of one step σ² must equal DDPM's posterior variance β̃_t.
    """
    diffusion = GaussianDiffusion("linear", 1000)
    ab = diffusion.schedule.alphas_cumprod.double()
    pairs = [(10, 9), (500, 499), (999, 979), (300, 100), (800, 600)]
    for t, s in pairs:
        a_t, a_prev = float(ab[t]), float(ab[s])
        for eta in (0.0, 0.5, 1.0):
            got = _number(call_answer(sigma_fn, "ddim_sigma", a_t, a_prev, eta), "ddim_sigma")
            ref = ddim_sigma(a_t, a_prev, eta)
            if math.isclose(got, ref, rel_tol=1e-6, abs_tol=1e-9):
                continue
            if eta == 0.0:
                raise ExerciseError(f"with η = 0 DDIM is deterministic: σ must be 0, got {got:.4g}.")
            if math.isclose(got, ref ** 2, rel_tol=1e-6) or math.isclose(got, eta * (ref / eta) ** 2, rel_tol=1e-6):
                raise ExerciseError("that is a variance: return the standard deviation σ (take the square root).")
            base = ref / eta  # the η-free part
            if math.isclose(got, eta ** 0.5 * base, rel_tol=1e-6):
                raise ExerciseError("η multiplies σ itself, not σ² (σ = η · √(…) · √(…)).")
            swapped = eta * ((1 - a_t) / (1 - a_prev) * (1 - a_t / a_prev)) ** 0.5
            if math.isclose(got, swapped, rel_tol=1e-6):
                raise ExerciseError("the first factor is (1 − ᾱ_prev)/(1 − ᾱ_t): the *less* noisy step is on top.")
            no_first = eta * (1 - a_t / a_prev) ** 0.5
            if math.isclose(got, no_first, rel_tol=1e-6):
                raise ExerciseError("you forgot the factor √((1 − ᾱ_prev)/(1 − ᾱ_t)).")
            raise ExerciseError(f"for ᾱ_t = {a_t:.4f}, ᾱ_prev = {a_prev:.4f}, η = {eta} you return {got:.6g}, "
                                f"expected {ref:.6g}. σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).")
    # η = 1, consecutive steps: DDPM's posterior variance β̃_t (Ho et al. 2020, eq. 7)
    for t in (1, 250, 999):
        got = _number(call_answer(sigma_fn, "ddim_sigma", float(ab[t]), float(ab[t - 1]), 1.0), "ddim_sigma")
        beta_tilde = float(diffusion.schedule.posterior_variance[t])
        if not math.isclose(got ** 2, beta_tilde, rel_tol=1e-5):
            raise ExerciseError(f"at η = 1 and consecutive steps σ² should be DDPM's β̃_t = {beta_tilde:.6g} "
                                f"(t = {t}), got {got ** 2:.6g}.")
    passed("σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev); at η = 1 on consecutive steps σ² = β̃_t.")


# -- exercise 2: one stochastic DDIM step ------------------------------------------------------------------------

def check_ddim_step(ddim_step_fn) -> None:
    """`ddim_step_fn(x0_hat, eps_hat, alpha_bar_prev, sigma, z)` must return
    √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z.

    Compared with the first update of `samplers.ddim_steps` (same x̂_0, ε̂ and noise z) for η = 0, 0.5 and 1.
    """
    diffusion = GaussianDiffusion("linear", 1000)
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    eps_net = 0.4 * torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)

    def denoiser(x, t):  # a fixed ε prediction, turned into x̂_0 the way the package does
        return diffusion.predict_x0_from_eps(x, t, eps_net), eps_net

    steps, spacing = 10, "trailing"
    t, t_prev = timestep_sequence(1000, steps, spacing)[:2]
    a_t = float(diffusion.schedule.alphas_cumprod[t])
    a_prev = float(diffusion.schedule.alphas_cumprod[t_prev])
    for eta in (0.0, 0.5, 1.0):
        first = next(iter(ddim_steps(denoiser, diffusion, x_T, steps=steps, eta=eta, spacing=spacing,
                                     generator=torch.Generator().manual_seed(11))))
        z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
        sigma = ddim_sigma(a_t, a_prev, eta)
        x0, eps = first.pred_x0, first.eps
        got = as_tensor(call_answer(ddim_step_fn, "ddim_step", x0.clone(), eps.clone(), a_prev, sigma, z.clone()),
                        "ddim_step(...)")
        ref = first.x
        if got.shape != ref.shape:
            raise ExerciseError(f"ddim_step returned shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        if torch.allclose(got, ref, rtol=1e-6, atol=1e-8):
            continue
        sp = math.sqrt(a_prev)
        mistakes = [
            (sp * x0 + math.sqrt(1 - a_prev) * eps + sigma * z,
             "the direction term must leave room for the fresh noise: √(1 − ᾱ_prev − σ²) ε̂, not √(1 − ᾱ_prev) ε̂."),
            (a_prev * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0)) * eps + sigma * z,
             "scale x̂_0 by √ᾱ_prev, not ᾱ_prev."),
            (sp * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0)) * eps + sigma ** 2 * z,
             "the noise is σ z (σ is a standard deviation), not σ² z."),
            (sp * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0)) * eps,
             "you dropped the fresh noise σ z (only η = 0 is deterministic)."),
            (sp * x0 + math.sqrt(max(1 - a_prev - sigma, 0)) * eps + sigma * z,
             "subtract σ², not σ, inside the square root: √(1 − ᾱ_prev − σ²)."),
        ]
        for wrong, message in mistakes:
            if torch.allclose(got, wrong, rtol=1e-6, atol=1e-8):
                raise ExerciseError(f"(η = {eta}) {message}")
        raise ExerciseError(f"(η = {eta}) your step differs from samplers.ddim_steps by up to "
                            f"{(got - ref).abs().max().item():.3g}: x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z.")
    passed("x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z matches samplers.ddim_steps for η = 0, 0.5, 1.")


# -- exercise 3: trailing timestep spacing -----------------------------------------------------------------------

def check_trailing_timesteps(trailing_fn) -> None:
    """`trailing_fn(T, steps)` must return the list of `steps` 0-based timestep indices visited, noisiest first,
    that `samplers.timestep_sequence(T, steps, "trailing")` returns (starts at T − 1, equal gaps T/steps)."""
    for T, steps in ((1000, 10), (1000, 50), (1000, 7), (100, 100), (1000, 1)):
        got = call_answer(trailing_fn, "trailing_timesteps", T, steps)
        try:
            got = [int(v) for v in got]
        except (TypeError, ValueError):
            raise ExerciseError(f"trailing_timesteps should return a list of ints, got {type(got).__name__}") from None
        ref = timestep_sequence(T, steps, "trailing")
        if got == ref:
            continue
        if sorted(got) == sorted(ref):
            raise ExerciseError("the right timesteps, wrong order: a sampler walks from the noisiest step down, "
                                "so the list must be decreasing.")
        if len(got) != steps:
            raise ExerciseError(f"trailing_timesteps({T}, {steps}) has {len(got)} entries, expected {steps}.")
        if sorted(got) == sorted(timestep_sequence(T, steps, "leading")):
            raise ExerciseError("that is the 'leading' spacing (0, k, 2k, …): it never visits t = T − 1. Trailing "
                                "counts down from T − 1.")
        if got and got[0] == T:
            raise ExerciseError(f"indices are 0-based: the noisiest valid step is T − 1 = {T - 1}, not {T}.")
        if got and got[0] != T - 1:
            raise ExerciseError(f"trailing spacing starts at t = T − 1 = {T - 1}; yours starts at {got[0]}.")
        raise ExerciseError(f"trailing_timesteps({T}, {steps}) = {got[:6]}… expected {ref[:6]}…: "
                            "round(T − k·T/steps) − 1 for k = 0 … steps−1.")
    passed("trailing spacing: starts at T − 1 and walks down in equal gaps of T/steps.")



# -- exercise 4: a whole DDIM sampler ------------------------------------------------------------------------------

def _ddim_variant(denoiser, diffusion, x_T, steps, eta, generator, kind: str):
    """A typical wrong version of the sampler (same draws from `generator` as the right one)."""
    ab = diffusion.schedule.alphas_cumprod
    seq = timestep_sequence(diffusion.num_timesteps, steps, "trailing")
    x = x_T
    z_once = torch.randn(x.shape, generator=generator, dtype=x.dtype) if kind == "one_z" else None
    for t, t_prev in zip(seq, seq[1:] + [-1]):
        x0, eps = denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long))
        a_t = float(ab[t])
        a_prev = float(ab[t_prev]) if (t_prev >= 0 or kind == "neg_index") else 1.0
        if kind == "consecutive":
            sigma = ddim_sigma(a_t, float(ab[t - 1]) if t > 0 else 1.0, eta)
        else:
            sigma = ddim_sigma(a_t, a_prev, 0.0 if kind == "no_eta" else eta)
        if isinstance(sigma, complex):        # ᾱ_prev < ᾱ_t (the wrapped index): no real σ; keep the mean part
            sigma = 0.0
        x = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            z = z_once if kind == "one_z" else torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + sigma * z
    return x


_DDIM_MISTAKES = {
    "neg_index": "on the last step, t_prev = −1 is the data and ᾱ_prev = 1; alphas_cumprod[-1] is Python's *last* "
                 "entry, ᾱ_{T−1} ≈ 0 (the noisiest one).",
    "consecutive": "σ must use the jump's own ᾱ_prev (alphas_cumprod[t_prev]), not the neighbouring step's "
                   "ᾱ_{t−1}: with big jumps the noise level is that of the whole jump.",
    "no_eta": "your sampler ignores η: with η > 0 it must add the noise σ(η) z, with σ from your my_ddim_sigma.",
    "one_z": "you drew z once and reused it: every step with σ > 0 needs a fresh z ~ N(0, I).",
}


def check_ddim_sampler(sampler_fn) -> None:
    """`sampler_fn(denoiser, diffusion, x_T, steps, eta, generator)` must return x_0 of DDIM: the trailing timesteps
    τ_1 > … > τ_S, then t_prev = −1 (ᾱ = 1, the data); at each step (x̂_0, ε̂) = denoiser(x, t), σ from eq. 16
    for the jump t → t_prev, x ← √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, with
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype) drawn when σ > 0. Compared with `samplers.ddim`
    on the exact denoiser of 8 Gaussians on a ring (linear schedule, T = 1000) for η = 0, 0.5, 1."""
    from ..toys import ExactGMMDenoiser, GaussianMixture

    diffusion = GaussianDiffusion("linear", 1000)
    T = diffusion.num_timesteps
    ring = GaussianMixture.ring(8, radius=0.7, std=0.07, dtype=torch.float64)
    denoiser = make_denoiser(ExactGMMDenoiser(ring, diffusion.schedule), diffusion, threshold=None)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def run(steps, eta, seed):
        watched = WatchedDenoiser(denoiser, T, x_T.shape[0],
                                  below_zero="the denoiser was asked for t = {t}: ask it at the current timestep t "
                                             "of each step, never at t_prev (−1 is the data, where there is nothing "
                                             "left to denoise).")
        negative = ("On the last step t_prev = −1 is the data, ᾱ_prev = 1; alphas_cumprod[-1] is Python's *last* "
                    "entry, ᾱ_{T−1} ≈ 0, smaller than ᾱ_t, which makes 1 − ᾱ_t/ᾱ_prev in σ negative.")
        try:
            out = call_answer(sampler_fn, "my_ddim", watched, diffusion, x_T.clone(), steps, eta,
                              torch.Generator().manual_seed(seed))
        except NotAnsweredError:
            raise
        except ExerciseError as err:
            if "math domain error" in str(err):
                raise ExerciseError(f"{err} (steps = {steps}, η = {eta}): a square root of a negative number. "
                                    f"{negative}") from None
            raise
        if (torch.is_tensor(out) and out.is_complex()) or isinstance(out, complex):
            raise ExerciseError(f"your samples are complex numbers (steps = {steps}, η = {eta}): a square root of a "
                                f"negative number. {negative}")
        return as_tensor(out, "my_ddim(...)"), watched

    for steps, eta in ((10, 0.0), (7, 0.5), (4, 1.0)):
        where = f"(steps = {steps}, η = {eta})"
        got, watched = run(steps, eta, 2)
        ref = ddim(denoiser, diffusion, x_T, steps=steps, eta=eta, spacing="trailing",
                   generator=torch.Generator().manual_seed(2))
        if got.shape != ref.shape:
            raise ExerciseError(f"my_ddim returned shape {tuple(got.shape)}, expected the shape of x_T "
                                f"{tuple(ref.shape)}.")
        if not torch.isfinite(got).all():
            raise ExerciseError(f"NaN or inf in your samples {where}: a square root of a negative number? "
                                f"1 − ᾱ_prev − σ² is ≥ 0 when σ comes from the same ᾱ_t, ᾱ_prev.")
        if watched.first_x is not None and not torch.allclose(watched.first_x, x_T):
            raise ExerciseError("the first denoiser call did not get x_T: start from the given x_T (do not draw a "
                                "new one), so that a seed fixes the sample.")
        seq = timestep_sequence(T, steps, "trailing")
        if watched.ts != seq:
            if watched.ts == seq[:-1]:
                raise ExerciseError(f"the last step is missing {where}: after t = {seq[-1]} comes one more step, "
                                    f"to t_prev = −1 (ᾱ_prev = 1), which lands on the data.")
            if sorted(watched.ts) == sorted(timestep_sequence(T, steps, "leading")):
                raise ExerciseError(f"those are the 'leading' timesteps {where}, which never visit t = T − 1: use "
                                    f"your trailing spacing, my_trailing(T, steps).")
            if watched.ts and watched.ts[0] == seq[1]:
                raise ExerciseError(f"the denoiser is asked at the current timestep t, not at t_prev {where}.")
            raise ExerciseError(f"the denoiser should be called once per step, at the trailing timesteps {seq[:4]}… "
                                f"{where}; it was called at {watched.ts[:4]}… ({len(watched.ts)} calls).")
        if allclose(got, ref, rtol=1e-5, atol=1e-6):
            continue
        for kind, message in _DDIM_MISTAKES.items():
            if kind in ("no_eta", "one_z") and eta == 0:
                continue
            wrong = _ddim_variant(denoiser, diffusion, x_T.clone(), steps, eta, torch.Generator().manual_seed(2), kind)
            if allclose(got, wrong, rtol=1e-5, atol=1e-6):
                raise ExerciseError(f"{message} {where}")
        if eta > 0:
            again, _ = run(steps, eta, 2)
            if not torch.equal(again, got):
                raise ExerciseError("two runs with the same generator seed differ: draw z from `generator` "
                                    "(torch.randn(x.shape, generator=generator, dtype=x.dtype)).")
        raise ExerciseError(f"your samples differ from samplers.ddim's {where} by up to "
                            f"{(got - ref).abs().max().item():.3g}: x ← √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, "
                            f"σ from ᾱ_t and ᾱ_prev of the jump, z drawn after the denoiser call when σ > 0.")
    passed("your sampler matches samplers.ddim (trailing spacing) for η = 0, 0.5 and 1, the last step landing on the "
           "data. The next cell runs it on the digits model.")


# -- predict, then run: what do more steps buy with a learned network? -------------------------------------------

PLATEAU_CHOICES = {
    "a": "it keeps falling, down to about where the exact denoiser gets with 50 steps",
    "b": "it barely falls: it levels off at an error set by the network, well above the exact denoiser's",
    "c": "it rises: more steps pile up more of the network's errors",
}

_PLATEAU_MISTAKES = {
    "a": "That is what happens while the sampler is the bottleneck (few steps). Past the crossover the network's "
         "own error dominates, and no number of steps removes it.",
    "c": "More, smaller steps do not add up more of the network's error: a deterministic solver converges, to the "
         "solution of the learned model's ODE, which sits at a fixed distance from the data.",
}


def commit_plateau_prediction(prediction) -> str:
    """Before §7's runs: what happens to the learned DDIM sampler's error from 20 to 50 steps?"""
    return commit_choice(prediction, PLATEAU_CHOICES)


def plateau_truth(total_20: float, total_50: float, exact_50: float) -> str:
    """From the measured distances to the data: the learned sampler at 20 and 50 steps, the exact one at 50."""
    if total_50 > 1.05 * total_20:
        return "c"
    return "a" if total_50 < 1.5 * exact_50 else "b"


def reveal_plateau(prediction, total_20: float, total_50: float, exact_50: float) -> bool:
    """After the runs: the measured distances decide; the reasoning is printed either way."""
    truth = plateau_truth(total_20, total_50, exact_50)
    key = commit_choice(prediction, PLATEAU_CHOICES, echo=False)
    why = ("with the learned network, DDIM solves the learned model's probability-flow ODE, not the true one. By 20 "
           "steps its discretisation error (the exact denoiser's) is already smaller than the network's own error, "
           "so more steps only solve the wrong ODE more accurately: the error levels off at the model "
           "error. Only a better network lowers it.")
    return reveal_choice(key, truth, PLATEAU_CHOICES, why,
                         wrong_why={("b", k): text for k, text in _PLATEAU_MISTAKES.items()},
                         measured=f"measured SW₂ to the data: learned DDIM {total_20:.3f} at 20 steps, {total_50:.3f} "
                                  f"at 50; exact denoiser at 50 steps {exact_50:.3f}")
