"""Checks for notebook 09, "Latent diffusion".

Exercises:
    1. `check_reparam_kl(fn)`: the reparameterised sample of the autoencoder's posterior and its KL to N(0, I),
       fn(mean, logvar, eps) -> (z, kl) with z = μ + σ ⊙ ε, σ = exp(½ log σ²), and
       kl = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²) per image (Kingma & Welling 2014, App. B), compared with
       `ddpm_lite.autoencoder.DiagonalGaussian`.
    2. `check_scale_factor(fn)`: the latent scale factor 1 / std of the latents (LDM §4.3.2), compared with
       1 / std computed at check time on latents of known spread.
    3. `check_sdedit_timesteps(fn)`: SDEdit's part of a sampler's timestep sequence, fn(seq, strength) -> the
       last round(strength · len(seq)) timesteps, compared with `ddpm_lite.editing.sdedit_timesteps`.

    Predict, then run: `SCALE_CHOICES`, `commit_scale_prediction(p)` before the latent model is given latents
       3× too wide, `reveal_scale_error(p, ts, errors_wrong, errors_right)` after: at which timesteps does its
       noise prediction go wrong?

The notebook then uses the learner's functions: `my_reparam_kl` draws the posterior samples, `my_scale_factor`
measures the autoencoder's scale factor, `my_sdedit_timesteps` drives an SDEdit run by hand.

Every reference is computed by the package at check time, never typed in.
"""

from __future__ import annotations

import math

import torch

from ..autoencoder import DiagonalGaussian
from ..editing import sdedit_timesteps
from . import ExerciseError, allclose, as_tensor, call_answer, commit_choice, passed, reveal_choice

__all__ = ["check_reparam_kl", "check_sdedit_timesteps", "check_scale_factor", "SCALE_CHOICES",
           "commit_scale_prediction", "scale_error_truth", "reveal_scale_error"]


# -- exercise 1: z = μ + σ ε and the closed-form KL --------------------------------------------------------------

def _posterior_inputs():
    gen = torch.Generator().manual_seed(8)
    mean = torch.randn(3, 4, 7, 7, generator=gen, dtype=torch.float64)
    logvar = 1.5 * torch.randn(3, 4, 7, 7, generator=gen, dtype=torch.float64) - 1.0   # σ from ~0.1 to ~3
    eps = torch.randn(3, 4, 7, 7, generator=gen, dtype=torch.float64)
    return mean, logvar, eps


def _z_mistakes(mean, logvar, eps):
    return [
        (mean + logvar * eps, "you used log σ² as the standard deviation: σ = exp(½ · logvar)."),
        (mean + logvar.exp() * eps, "exp(logvar) is the variance σ²; the noise is scaled by σ = exp(½ · logvar)."),
        (mean + (0.5 * logvar) * eps, "½ · logvar is log σ, not σ: take the exponential, σ = exp(½ · logvar)."),
        (mean + eps, "the noise must be scaled by σ = exp(½ · logvar)."),
        (mean * eps + logvar.mul(0.5).exp(), "μ and σ are swapped: z = μ + σ ⊙ ε."),
        (mean.clone(), "that is the mean μ alone (the mode); the sample adds σ ⊙ ε."),
    ]


def _kl_mistakes(mean, logvar):
    var = logvar.exp()
    per_dim = 0.5 * (mean ** 2 + var - 1 - logvar)
    full = per_dim.flatten(1).sum(1)
    return [
        (2 * full, "the KL has a factor ½ in front: ½ Σ (μ² + σ² − 1 − log σ²)."),
        (per_dim.flatten(1).mean(1), "you averaged over the latent dimensions: the KL of the whole latent is the "
                                     "*sum* over its c·h·w dimensions (one number per image)."),
        (0.5 * (mean ** 2 + logvar.mul(0.5).exp() - 1 - logvar).flatten(1).sum(1),
         "the second term is the variance σ² = exp(logvar), not σ."),
        (0.5 * (mean ** 2 + var - 1 + logvar).flatten(1).sum(1), "the log-variance enters with a minus sign: − log σ²."),
        (0.5 * (mean ** 2 + var - logvar).flatten(1).sum(1), "you forgot the − 1 in ½ Σ (μ² + σ² − 1 − log σ²)."),
        (0.5 * (mean + var - 1 - logvar).flatten(1).sum(1), "the first term is μ², not μ."),
        (0.5 * (mean ** 2 + var - 1 - logvar).flatten(1).sum(1).mean().expand(mean.shape[0]),
         "the KL is one number *per image*: do not average over the batch."),
    ]


def check_reparam_kl(fn) -> None:
    """`fn(mean, logvar, eps)` (tensors [B, c, h, w]) must return `(z, kl)`: z = μ + σ ⊙ ε with σ = exp(½ logvar)
    ([B, c, h, w]) and kl = ½ Σ (μ² + σ² − 1 − log σ²) summed over the latent dimensions ([B], one per image)."""
    mean, logvar, eps = _posterior_inputs()
    out = call_answer(fn, "reparam_kl", mean.clone(), logvar.clone(), eps.clone())
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ExerciseError(f"`reparam_kl` should return two things, `(z, kl)`, got {type(out).__name__}")
    z = as_tensor(out[0], "z")
    kl = as_tensor(out[1], "kl")
    post = DiagonalGaussian(mean, logvar)
    z_ref = post.mean + post.std * eps
    kl_ref = post.kl()
    if not allclose(z, z_ref, rtol=1e-6, atol=1e-8):
        for wrong, message in _z_mistakes(mean, logvar, eps):
            if allclose(z, wrong, rtol=1e-6, atol=1e-8):
                raise ExerciseError(f"z: {message}")
        if z.shape != z_ref.shape:
            raise ExerciseError(f"z has shape {tuple(z.shape)}, expected {tuple(z_ref.shape)} (the shape of mean).")
        raise ExerciseError(f"z differs from μ + σ ⊙ ε by up to {float((z - z_ref).abs().max()):.3g}. "
                            "z = mean + exp(0.5 * logvar) * eps.")
    if kl.dim() == 0:
        if math.isclose(float(kl), float(kl_ref.sum()), rel_tol=1e-6):
            raise ExerciseError("kl: you summed over the batch as well; return one KL per image (shape [B]): "
                                "sum over dimensions 1, 2, 3 only.")
        if math.isclose(float(kl), float(kl_ref.mean()), rel_tol=1e-6):
            raise ExerciseError("kl: that is the batch mean; return one KL per image (shape [B]).")
        raise ExerciseError(f"kl should have one value per image, shape ({mean.shape[0]},), got a single number.")
    if not allclose(kl, kl_ref, rtol=1e-6, atol=1e-8):
        for wrong, message in _kl_mistakes(mean, logvar):
            if allclose(kl, wrong, rtol=1e-6, atol=1e-8):
                raise ExerciseError(f"kl: {message}")
        if kl.shape != kl_ref.shape:
            raise ExerciseError(f"kl has shape {tuple(kl.shape)}, expected ({mean.shape[0]},): one KL per image, "
                                "summed over the latent's channels and positions.")
        raise ExerciseError(f"kl differs from ½ Σ (μ² + σ² − 1 − log σ²) by up to "
                            f"{float((kl - kl_ref).abs().max()):.3g} nats.")
    # the closed form must be the KL to N(0, I): zero exactly for the standard normal posterior
    zero = as_tensor(call_answer(fn, "reparam_kl", torch.zeros_like(mean), torch.zeros_like(logvar), eps.clone())[1],
                     "kl")
    if not allclose(zero, torch.zeros(mean.shape[0], dtype=torch.float64), atol=1e-9):
        raise ExerciseError("kl: for μ = 0, log σ² = 0 (q = N(0, I) itself) the KL must be 0.")
    passed(f"z = μ + exp(½ log σ²) ⊙ ε, and KL = ½ Σ (μ² + σ² − 1 − log σ²) per image "
           f"(here {', '.join(f'{v:.1f}' for v in kl_ref.tolist())} nats over {mean[0].numel()} latent dimensions).")


# -- exercise 2: SDEdit's timesteps ------------------------------------------------------------------------------

CASES = [
    (list(range(999, -1, -20)), (0.02, 0.25, 0.3, 0.5, 0.51, 0.75, 0.99, 1.0, 0.0)),   # 50 steps
    ([999, 899, 799, 699, 599, 499, 399, 299, 199, 99], (0.04, 0.05, 0.14, 0.15, 0.26, 0.5, 0.66, 0.96, 1.0, 0.0)),
    ([999, 749, 499, 249], (0.1, 0.13, 0.2, 0.375, 0.5, 0.63, 0.9, 1.0, 0.0)),
]  # strength 0 last: a wrong answer that only fails there gets the seq[-0:] message, others a more telling one


def _as_int_list(value, name: str) -> list[int]:
    if torch.is_tensor(value):
        value = value.tolist()
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise ExerciseError(f"`{name}` should return a list of timesteps (ints), got {type(value).__name__}") from None


def _sdedit_mistake(got: list[int], seq: list[int], strength: float) -> str | None:
    S = len(seq)
    n = round(strength * S)
    if n == 0 and got == seq:
        return ("at strength 0 nothing should run (return []), but you return the whole sequence: careful, "
                "seq[-0:] is seq[0:], the whole list. Slice with seq[len(seq) - n:].")
    if got == seq[:n]:
        return ("you took the *head* of the sequence (its noisiest steps); SDEdit runs the *tail*: it starts "
                "part-way down, at t₀, and goes all the way to the clean end.")
    for k, how in ((math.floor(strength * S), "rounded down (int() or floor)"),
                   (math.ceil(strength * S), "rounded up (ceil)")):
        if k != n and got == seq[S - k:]:
            return f"you {how} strength · len(seq); round it to the nearest integer, n = round(strength · len(seq))."
    if n < S and got == seq[S - n - 1:]:
        return "off by one: you run one step too many; the run is the last n = round(strength · len(seq)) entries."
    if n > 0 and got == seq[S - n + 1:]:
        return "off by one: you run one step too few; the run is the last n = round(strength · len(seq)) entries."
    if got == seq[n:] and n != S - n:
        return ("you skipped the first round(strength · len(seq)) steps; it is the other way round: strength is "
                "the fraction of the steps that *run*, so strength 1 runs all of them.")
    if got == list(reversed(seq[S - n:])):
        return "the timesteps must stay in the sampler's order, noisiest first."
    return None


def check_sdedit_timesteps(fn) -> None:
    """`fn(seq, strength)` must return the timesteps SDEdit runs: the last round(strength · len(seq)) entries of
    `seq` (noisiest first), [] at strength 0 and all of `seq` at strength 1."""
    for seq, strengths in CASES:
        for s in strengths:
            got = _as_int_list(call_answer(fn, "sdedit_timesteps", list(seq), s), "sdedit_timesteps")
            ref = sdedit_timesteps(list(seq), s)
            if got == ref:
                continue
            message = _sdedit_mistake(got, list(seq), s)
            where = f"(len(seq) = {len(seq)}, strength = {s})"
            if message:
                raise ExerciseError(f"{message} {where}")
            raise ExerciseError(f"for {where} you return {got[:6]}{'…' if len(got) > 6 else ''} ({len(got)} steps), "
                                f"expected {ref[:6]}{'…' if len(ref) > 6 else ''} ({len(ref)} steps).")
    passed("SDEdit runs the last round(strength · len(seq)) timesteps: it starts at t₀ = that tail's first entry "
           "(strength 0: nothing runs, 1: the whole sampler from pure noise).")


# -- exercise 3: the scale factor --------------------------------------------------------------------------------

def check_scale_factor(fn) -> None:
    """`fn(latents)` (a tensor [N, c, h, w] of unscaled latents) must return one number, 1 / std of all their
    values, so that `scale_factor · latents` has unit standard deviation."""
    gen = torch.Generator().manual_seed(5)
    for spread, shift in ((4.0, 0.0), (0.25, 0.0), (2.5, 0.7)):
        latents = spread * torch.randn(64, 4, 7, 7, generator=gen, dtype=torch.float64) + shift
        value = call_answer(fn, "scale_factor", latents.clone())
        if torch.is_tensor(value) and value.numel() != 1:
            raise ExerciseError(f"`scale_factor` should return one number for the whole latent space, got a tensor "
                                f"of shape {tuple(value.shape)} (per channel or per image?). Use the std of *all* values.")
        try:
            got = float(value)
        except (TypeError, ValueError):
            raise ExerciseError(f"`scale_factor` should return a number, got {type(value).__name__}") from None
        std = float(latents.std())
        ref = 1.0 / std
        if math.isclose(got, ref, rel_tol=1e-3):
            continue
        if math.isclose(got, std, rel_tol=1e-3):
            raise ExerciseError("that is the std itself: the factor that *brings the std to 1* is 1 / std.")
        if math.isclose(got, 1.0 / std ** 2, rel_tol=1e-3):
            raise ExerciseError("you divided by the variance; the scale factor is 1 / standard deviation.")
        if math.isclose(got, 1.0 / float(latents.abs().max()), rel_tol=1e-3):
            raise ExerciseError("1 / max |z| squeezes the latents into [−1, 1] but leaves their std far below 1: "
                                "use 1 / std.")
        rms = float(latents.pow(2).mean().sqrt())
        if shift and math.isclose(got, 1.0 / rms, rel_tol=1e-3):
            raise ExerciseError("1 / √mean(z²) ignores the latents' mean; use the standard deviation (z.std()).")
        raise ExerciseError(f"for latents with std {std:.3f} you return {got:.4g}, expected 1 / std = {ref:.4g}.")
    passed("scale_factor = 1 / std(z): the scaled latents have unit standard deviation, like the noise.")


# -- predict, then run: latents at the wrong scale -------------------------------------------------------------------

SCALE_CHOICES = {
    "a": "at large t, near T: there z_T still holds signal, which the model never saw at that noise level",
    "b": "at small t, where there is little noise: the extra signal is taken for noise",
    "c": "about equally at every t: the inputs are wrong at every noise level",
}


def commit_scale_prediction(prediction) -> str:
    """Before the run: where will the latent model's noise error be largest when its latents are 3× too wide?"""
    return commit_choice(prediction, SCALE_CHOICES)


def scale_error_truth(ts, errors_wrong, errors_right) -> str:
    """The choice the measurement supports: the excess error (wrong scale minus right scale) averaged over the
    timesteps below T/2 and over those from T/2 on, T taken as max(ts) + 1. One half with 3× the other's excess
    decides; otherwise "about equally"."""
    ts = [int(t) for t in ts]
    half = (max(ts) + 1) / 2
    excess = [float(w) - float(r) for w, r in zip(errors_wrong, errors_right)]
    low = [e for t, e in zip(ts, excess) if t < half]
    high = [e for t, e in zip(ts, excess) if t >= half]
    if not low or not high:
        raise ValueError("need timesteps on both sides of T/2")
    low, high = sum(low) / len(low), sum(high) / len(high)
    return "b" if low > 3 * high else "a" if high > 3 * low else "c"


def reveal_scale_error(prediction, ts, errors_wrong, errors_right, m: float = 3.0) -> bool:
    """After the run: the measured errors decide; the reasoning is printed either way."""
    ts = [int(t) for t in ts]
    worst = max(range(len(ts)), key=lambda i: float(errors_wrong[i]) - float(errors_right[i]))
    why = ("the model predicts ε as ε̂ = (z_t − √ᾱ_t ẑ_0) / √(1 − ᾱ_t), with ẑ_0 its guess of a unit-variance "
           f"latent. Latents {m:g}× too wide leave a part of the signal that no unit-variance latent explains, and "
           "the model books it as noise. A misjudged signal δ costs √ᾱ_t δ / √(1 − ᾱ_t) in ε: huge at small t, "
           "where √(1 − ᾱ_t) is tiny, and negligible near T, where √ᾱ_t is (at t = 999, √ᾱ ≈ 0.006: even 3× "
           "the signal is invisible). The leftover signal in z_T is real, but too small to show in ε; it matters "
           "for where sampling starts, not for this error.")
    return reveal_choice(prediction, scale_error_truth(ts, errors_wrong, errors_right), SCALE_CHOICES, why,
                         measured=f"measured: mean (ε̂ − ε)² {float(errors_wrong[0]):.2f} at t = {ts[0]} against "
                                  f"{float(errors_right[0]):.2f} at the right scale, {float(errors_wrong[-1]):.3f} "
                                  f"against {float(errors_right[-1]):.3f} at t = {ts[-1]}; the largest excess at "
                                  f"t = {ts[worst]}")
