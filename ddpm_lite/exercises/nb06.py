"""Checks for notebook 06, "Fast sampling: DDIM and DPM-Solver++".

Exercises:
    1. `check_ddim_sigma(fn)`: the DDIM noise level σ_τ(η) = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
       (Song, Meng & Ermon 2021, eq. 16), compared with `ddpm_lite.samplers.ddim_sigma` and, at η = 1, with
       DDPM's posterior variance β̃_t.
    2. `check_ddim_step(fn)`: one generalised DDIM update with noise (eq. 12),
       x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, compared with `samplers.ddim_steps`.
    3. `check_trailing_timesteps(fn)`: the "trailing" timestep spacing, compared with
       `samplers.timestep_sequence(T, S, "trailing")`.

Every reference is computed by the package at check time, never typed in.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import GaussianDiffusion
from ..samplers import ddim_sigma, ddim_steps, timestep_sequence
from . import ExerciseError, as_tensor, call_answer, passed

__all__ = ["check_ddim_sigma", "check_ddim_step", "check_trailing_timesteps"]


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
