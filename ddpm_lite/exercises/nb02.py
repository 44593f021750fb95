"""Checks for notebook 02, "q and p: the maths of DDPM".

Exercises:
    1. `check_posterior_coefficients`: the two coefficients of the posterior mean μ̃_t(x_t, x_0) of
       q(x_{t−1} | x_t, x_0) (Ho et al. 2020, eq. 7), from the β schedule.
    2. `check_eps_to_x0` and `check_x0_to_v`: converting between the ε, x_0 and v parameterisations
       (eq. 4 solved for x_0; v of Salimans & Ho 2022, §4).
    3. `check_prior_bpd`: the prior term L_T = KL(q(x_T | x_0) ‖ N(0, I)) of the bound (eq. 5), in bits/dim.
    4. `check_reverse_step`: one step of the reverse process p_θ (eq. 11 and Algorithm 2, line 4),
       fn(model, x_t, t, z, sched) -> x_{t−1} = μ_θ(x_t, t) + σ_t z with σ_t² = β̃_t; the notebook's ancestral
       sampling (§8) then runs 1000 of the learner's steps.
    Predict, then run: `VARIANCE_CHOICES`, `commit_variance_prediction(p)` before §5's bound,
       `reveal_variance(p, bpd_large, bpd_small, share_early)` after it: which σ_t² gives the tighter bound?

(The notebook numbers them in reading order: 1 posterior coefficients, 2 the reverse step, 3 conversions, 4 L_T.)
Every reference is computed by the package (`NoiseSchedule`, `GaussianDiffusion`); the checks recognise the
usual mistakes, name them and say what to look at.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import NoiseSchedule
from . import ExerciseError, allclose, as_tensor, call_answer, commit_choice, expect_close, passed, reveal_choice

__all__ = ["check_posterior_coefficients", "check_eps_to_x0", "check_x0_to_v", "check_prior_bpd",
           "check_reverse_step", "VARIANCE_CHOICES", "commit_variance_prediction", "variance_truth",
           "reveal_variance"]


def _matches(got: torch.Tensor, wrong: torch.Tensor, tol: float = 1e-3) -> bool:
    """`got` equals `wrong` up to float32 rounding: per sample, ‖got − wrong‖ ≤ tol · ‖wrong‖ (+ a tiny floor).

    A norm per sample (not an element-wise test) so that float32 answers, whose elements near zero or after a
    cancellation carry a large *relative* error, are still recognised as the mistake they are.
    """
    if got.shape != wrong.shape or not torch.isfinite(got).all():
        return False
    g, w = got.reshape(got.shape[0], -1).double(), wrong.reshape(wrong.shape[0], -1).double()
    err = (g - w).norm(dim=1)
    return bool((err <= tol * w.norm(dim=1) + 1e-9).all())


def _low_precision(*values) -> bool:
    """True when an answer came back in float32 (or lower), so comparisons need float32 tolerances."""
    return any(torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float64 for v in values)


# -- exercise 1: the posterior mean coefficients (eq. 7) ------------------------------------------------------


def check_posterior_coefficients(fn) -> None:
    """`fn(betas)` must return `(coef1, coef2)`, two tensors [T] with

        μ̃_t = coef1[t] · x_0 + coef2[t] · x_t,
        coef1 = √ᾱ_{t−1} β_t / (1 − ᾱ_t),   coef2 = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),   ᾱ_{−1} := 1   (eq. 7).

    It is called with the float64 β of a linear (T = 1000) and a cosine (T = 50) schedule.
    """
    for name, T in (("linear", 1000), ("cosine", 50)):
        schedule = NoiseSchedule(name, T)
        betas = schedule.betas.clone()
        out = call_answer(fn, "posterior_coefficients", betas.clone())
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ExerciseError(f"return two tensors, `(coef1, coef2)`: the x_0 and the x_t coefficient; got "
                                f"{type(out).__name__}")
        c1, c2 = as_tensor(out[0], "coef1"), as_tensor(out[1], "coef2")
        # float32 answers: 1 − ᾱ_t at the first linear steps (≈ 1e-4) loses ~4 digits to cancellation.
        rtol = 2e-3 if _low_precision(*out) else 1e-6
        ref1, ref2 = schedule.posterior_mean_coef1, schedule.posterior_mean_coef2
        for got, ref, label in ((c1, ref1, "coef1"), (c2, ref2, "coef2")):
            if got.shape != ref.shape:
                raise ExerciseError(f"`{label}` has shape {tuple(got.shape)}, expected {tuple(ref.shape)}: one value "
                                    f"per timestep")

        def close(a, b):
            return allclose(a, b, rtol=rtol, atol=1e-9)

        if close(c1, ref2) and close(c2, ref1):
            raise ExerciseError("the two coefficients are swapped: coef1 multiplies x_0 (it has β_t in it), coef2 "
                                "multiplies x_t (it has √α_t in it).")
        ab, ab_prev, alphas = schedule.alphas_cumprod, schedule.alphas_cumprod_prev, schedule.alphas
        right1, right2 = close(c1, ref1), close(c2, ref2)
        if not right1 and close(c1, ab.sqrt() * betas / (1 - ab)):
            raise ExerciseError("coef1 uses √ᾱ_t; eq. 7 has √ᾱ_{t−1} (the signal left one step *earlier*).")
        if not right1 and close(c1, ab_prev * betas / (1 - ab)):
            raise ExerciseError("coef1 is missing a square root: it is √ᾱ_{t−1} β_t / (1 − ᾱ_t).")
        if not right2 and close(c2, alphas * (1 - ab_prev) / (1 - ab)):
            raise ExerciseError("coef2 is missing a square root: it is √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).")
        if not right2 and (close(c2, alphas.sqrt() * (1 - ab) / (1 - ab)) or close(c2, alphas.sqrt())):
            raise ExerciseError("coef2 uses 1 − ᾱ_t in the numerator; it should be 1 − ᾱ_{t−1}.")
        if (not (right1 and right2)) and close(c1[1:], ref1[1:]) and close(c2[1:], ref2[1:]):
            raise ExerciseError("right for every t except t = 0: there ᾱ_{t−1} must be 1 (nothing has been noised "
                                "before the first step). Build ᾱ_{t−1} as torch.cat([ones(1), ᾱ[:-1]]).")
        expect_close(c1, ref1, "coef1", rtol=rtol, atol=1e-9,
                     hint="coef1 = √ᾱ_{t−1} β_t / (1 − ᾱ_t), with ᾱ_{t−1} = 1 at t = 0.")
        expect_close(c2, ref2, "coef2", rtol=rtol, atol=1e-9,
                     hint="coef2 = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), with ᾱ_{t−1} = 1 at t = 0.")
    passed("coef1 and coef2 match NoiseSchedule.posterior_mean_coef1/2 (eq. 7) on a linear and a cosine schedule.")


# -- exercise 2: ε → x_0 and (x_0, ε) → v --------------------------------------------------------------------


def _conversion_inputs():
    diffusion = GaussianDiffusion("linear", 1000)
    gen = torch.Generator().manual_seed(2020)
    t = torch.tensor([0, 10, 250, 500, 750, 990], dtype=torch.long)
    x0 = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    eps = torch.randn(6, 1, 8, 8, generator=gen)
    xt = diffusion.q_sample(x0, t, noise=eps)
    alpha_bar = diffusion.schedule.alphas_cumprod.to(torch.float32)[t].reshape(-1, 1, 1, 1)
    return diffusion, t, x0, eps, xt, alpha_bar


def check_eps_to_x0(fn) -> None:
    """`fn(x_t, eps, alpha_bar)` must return x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t  (eq. 4 solved for x_0).

    `alpha_bar` is ᾱ_t per sample, shaped [B, 1, 1, 1] so it broadcasts over the pixels.
    """
    diffusion, t, x0, eps, xt, ab = _conversion_inputs()
    got = as_tensor(call_answer(fn, "eps_to_x0", xt.clone(), eps.clone(), ab.clone()), "x0_hat")
    reference = diffusion.predict_x0_from_eps(xt, t, eps).double()
    a, x, e = ab.double(), xt.double(), eps.double()
    mistakes = [
        ((x - (1 - a) * e) / a, "use square roots: x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."),
        ((x - (1 - a).sqrt() * e) / a, "divide by √ᾱ_t, not by ᾱ_t."),
        ((x + (1 - a).sqrt() * e) / a.sqrt(), "sign: the noise is *subtracted* from x_t."),
        (x - (1 - a).sqrt() * e, "you removed the noise but forgot to divide by √ᾱ_t to undo the signal's shrinking."),
        ((x - a.sqrt() * e) / (1 - a).sqrt(), "the weights are swapped: √(1 − ᾱ_t) multiplies ε, √ᾱ_t divides."),
    ]
    if got.shape == reference.shape:
        for wrong, message in mistakes:
            if _matches(got, wrong):
                raise ExerciseError(message)
    expect_close(got, reference, "x0_hat", rtol=1e-4, atol=1e-4,
                 hint="x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t.")
    if not torch.allclose(got, x0.double(), atol=1e-3):
        raise ExerciseError("x̂_0 should give back the x_0 the inputs were made from.")
    passed("eps_to_x0 matches GaussianDiffusion.predict_x0_from_eps and recovers x_0 from (x_t, ε).")


def check_x0_to_v(fn) -> None:
    """`fn(x0, eps, alpha_bar)` must return v = √ᾱ_t ε − √(1 − ᾱ_t) x_0  (Salimans & Ho 2022, §4)."""
    diffusion, t, x0, eps, xt, ab = _conversion_inputs()
    got = as_tensor(call_answer(fn, "x0_to_v", x0.clone(), eps.clone(), ab.clone()), "v")
    reference = diffusion.get_v(x0, eps, t).double()
    a, x, e = ab.double(), x0.double(), eps.double()
    mistakes = [
        ((1 - a).sqrt() * x - a.sqrt() * e, "the sign is flipped: v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (ε comes with +)."),
        ((1 - a).sqrt() * e - a.sqrt() * x, "the weights are swapped: √ᾱ_t multiplies ε, √(1 − ᾱ_t) multiplies x_0."),
        (a * e - (1 - a) * x, "use square roots: v = √ᾱ_t ε − √(1 − ᾱ_t) x_0."),
        (a.sqrt() * e + (1 - a).sqrt() * x, "v has a minus sign: √ᾱ_t ε **−** √(1 − ᾱ_t) x_0."),
    ]
    if got.shape == reference.shape:
        for wrong, message in mistakes:
            if _matches(got, wrong):
                raise ExerciseError(message)
    expect_close(got, reference, "v", rtol=1e-4, atol=1e-5, hint="v = √ᾱ_t ε − √(1 − ᾱ_t) x_0.")
    back = diffusion.predict_x0_from_v(xt, t, got.float())
    if not torch.allclose(back.double(), x0.double(), atol=1e-3):  # pragma: no cover - implied by the check above
        raise ExerciseError("x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v should give back x_0 from your v.")
    passed("x0_to_v matches GaussianDiffusion.get_v, and √ᾱ_t x_t − √(1 − ᾱ_t) v gives back x_0.")


# -- exercise 3: the prior term L_T in bits/dim ---------------------------------------------------------------


def check_prior_bpd(fn) -> None:
    """`fn(x0, alpha_bar_T)` must return L_T per sample [B], in bits/dim:

        L_T = KL(N(√ᾱ_T x_0, (1 − ᾱ_T) I) ‖ N(0, I)) / (D · ln 2),
        with the per-dimension KL ½ (ᾱ_T x_0² + (1 − ᾱ_T) − 1 − log(1 − ᾱ_T)).

    `alpha_bar_T` is a 0-d float64 tensor. It is called for a standard schedule (ᾱ_T ≈ 4·10⁻⁵, L_T tiny)
    and for a deliberately short one (ᾱ_T ≈ 0.67), where L_T is large.
    """
    gen = torch.Generator().manual_seed(7)
    x0 = torch.rand(5, 1, 8, 8, generator=gen) * 2 - 1
    cases = (
        ("the standard linear schedule (T = 1000)", GaussianDiffusion("linear", 1000)),
        ("a too-short schedule (20 steps of β = 0.02)", GaussianDiffusion(NoiseSchedule(betas=torch.full((20,), 0.02)))),
    )
    for label, diffusion in cases:
        ab_T = diffusion.schedule.alphas_cumprod[-1].clone()
        answer = call_answer(fn, "prior_bpd", x0.clone(), ab_T.clone())
        got = as_tensor(answer, "L_T")
        reference = diffusion.prior_bpd(x0.double())  # float64: L_T ≈ 1e-5 here, float32 keeps ~3 digits of it
        if got.ndim == 0:
            raise ExerciseError("return one value per sample (shape [B]): average over the pixels only, not the batch.")
        if got.shape != reference.shape:
            raise ExerciseError(f"L_T has shape {tuple(got.shape)}, expected {tuple(reference.shape)} (one value per "
                                f"sample): average over every dimension but the first.")
        # In float32, (1 − ᾱ_T) − 1 − log(1 − ᾱ_T) cancels to ~1e-9 with an absolute error of ~1e-8 per pixel.
        rtol, atol = (1e-3, 2e-7) if _low_precision(answer) else (1e-6, 1e-12)
        a = float(ab_T)
        kl = 0.5 * (a * x0.double() ** 2 + (1 - a) - 1 - math.log(1 - a))
        per_sample = kl.mean(dim=(1, 2, 3))
        d = x0[0].numel()
        mistakes = [
            (per_sample, "that is in nats: divide by ln 2 for bits."),
            (per_sample * d / math.log(2), "you summed over the pixels: bits/*dim* is the mean over dimensions."),
            ((0.5 * (a ** 2 * x0.double() ** 2 + (1 - a) - 1 - math.log(1 - a))).mean(dim=(1, 2, 3)) / math.log(2),
             "the mean of q(x_T | x_0) is √ᾱ_T x_0, so its square is ᾱ_T x_0² (not ᾱ_T² x_0²)."),
            ((0.5 * (a * x0.double() ** 2 + (1 - a) - 1 - 0.5 * math.log(1 - a))).mean(dim=(1, 2, 3)) / math.log(2),
             "the log term is log σ² = log(1 − ᾱ_T), the log of the *variance*, not of the standard deviation."),
        ]
        if not allclose(got, reference, rtol=rtol, atol=atol):
            for wrong, message in mistakes:
                if allclose(got, wrong, rtol=rtol, atol=atol):
                    raise ExerciseError(f"{message} (checked on {label})")
        expect_close(got, reference, "L_T", rtol=rtol, atol=atol,
                     hint=f"(checked on {label}) KL per dimension: ½(μ² + σ² − 1 − log σ²) with μ = √ᾱ_T x_0, "
                          f"σ² = 1 − ᾱ_T; then the mean over dimensions and ÷ ln 2.")
    passed("your L_T matches GaussianDiffusion.prior_bpd: ≈ 0 bits/dim for a full schedule, large when ᾱ_T is not ≈ 0.")


# -- exercise (§4): one reverse step, used by §8's ancestral sampling -----------------------------------------------


def _reverse_setup():
    from ..toys import ExactGMMDenoiser, GaussianMixture

    diffusion = GaussianDiffusion("linear", 1000, variance="fixed_small")
    gmm = GaussianMixture.ring(8, radius=0.7, std=0.07)
    model = ExactGMMDenoiser(gmm, diffusion.schedule)
    return diffusion, gmm, model


def check_reverse_step(fn) -> None:
    """`fn(model, x_t, t, z, sched)` (t a Python int, the same for the whole batch; `sched` a `NoiseSchedule`)
    must return x_{t−1} = μ_θ(x_t, t) + σ_t z with μ_θ = (x_t − β_t/√(1 − ᾱ_t) · ε_θ(x_t, t))/√α_t (eq. 11) and
    σ_t² = β̃_t (0 at t = 0), without clipping. Compared with `GaussianDiffusion(variance="fixed_small")
    .p_mean_variance(..., clip_denoised=False)` plus √variance · z, on the 2D ring with its exact denoiser."""
    diffusion, gmm, model = _reverse_setup()
    s = diffusion.schedule
    gen = torch.Generator().manual_seed(21)
    for t in (999, 500, 100, 5, 1, 0):
        x0 = gmm.sample(64, generator=gen)
        t_vec = torch.full((64,), t, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t_vec, generator=gen)
        z = torch.randn(x_t.shape, generator=gen)
        got = as_tensor(call_answer(fn, "reverse_step", model, x_t.clone(), t, z.clone(), s), "x_{t-1}")
        with torch.no_grad():
            out = diffusion.p_mean_variance(model, x_t, t_vec, clip_denoised=False)
            mean, var = out["mean"].double(), out["variance"].double()
            # no noise at the last step (Algorithm 2: z = 0 for t = 1); p_mean_variance's variance there is the
            # clipped log-variance of Ho et al.'s code, used only for the likelihood
            reference = mean + var.sqrt() * z.double() if t > 0 else mean
            eps = model(x_t, t_vec).double()
        if got.shape != reference.shape:
            raise ExerciseError(f"x_(t−1) has shape {tuple(got.shape)}, expected {tuple(reference.shape)} (the shape "
                                f"of x_t).")
        if allclose(got, reference, rtol=1e-4, atol=2e-5):
            continue
        xt, zz = x_t.double(), z.double()
        a, b, ab = float(s.alphas[t]), float(s.betas[t]), float(s.alphas_cumprod[t])
        bt = float(s.posterior_variance[t])
        mu = (xt - b / math.sqrt(1 - ab) * eps) / math.sqrt(a)
        with torch.no_grad():
            clipped = diffusion.p_mean_variance(model, x_t, t_vec, clip_denoised=True)["mean"].double()
        mistakes = [
            (mu, f"the noise is missing: add σ_t z with σ_t = √β̃_t (at t = {t}, √β̃_t = {math.sqrt(bt):.3g}); only "
                 f"the last step, t = 0, adds none (β̃_0 = 0)."),
            (mu + bt * zz, "z is scaled by the variance β̃_t: scale it by the standard deviation σ_t = √β̃_t."),
            (mu + math.sqrt(b) * zz, "that is σ_t² = β_t (\"fixed_large\"): this exercise and §8 use σ_t² = β̃_t = "
                                     "(1 − ᾱ_(t−1))/(1 − ᾱ_t) · β_t (sched.posterior_variance)."),
            ((xt - b / math.sqrt(1 - ab) * eps) / math.sqrt(ab) + math.sqrt(bt) * zz,
             "divide by √α_t, the one-step α_t = 1 − β_t, not by √ᾱ_t (the cumulative product)."),
            ((xt - b / (1 - ab) * eps) / math.sqrt(a) + math.sqrt(bt) * zz,
             "ε̂ is multiplied by β_t/√(1 − ᾱ_t): you divided by 1 − ᾱ_t without the square root."),
            ((xt + b / math.sqrt(1 - ab) * eps) / math.sqrt(a) + math.sqrt(bt) * zz,
             "the sign of the ε̂ term: μ_θ = (x_t **−** β_t/√(1 − ᾱ_t) ε̂)/√α_t, the predicted noise is removed."),
            (clipped + math.sqrt(bt) * zz, "x̂_0 was clipped to [−1, 1]: eq. 11 uses ε̂ as it is (no clipping here)."),
            (xt - b / math.sqrt(1 - ab) * eps + math.sqrt(bt) * zz,
             "the division by √α_t is missing: μ_θ = (x_t − β_t/√(1 − ᾱ_t) ε̂)/√α_t."),
        ]
        for wrong, message in mistakes:
            if allclose(got, wrong, rtol=1e-4, atol=2e-5) and not allclose(wrong, reference, rtol=1e-6, atol=1e-7):
                raise ExerciseError(f"(at t = {t}) {message}")
        expect_close(got, reference, "x_{t-1}", rtol=1e-4, atol=2e-5,
                     hint=f"(at t = {t}) μ_θ = (x_t − β_t/√(1 − ᾱ_t) · model(x_t, t_vec))/√α_t with t_vec = "
                          f"torch.full((B,), t), then + √β̃_t · z.")
    passed("your reverse step equals GaussianDiffusion.p_mean_variance (eq. 11, σ_t² = β̃_t) plus σ_t z at every t "
           "checked, from t = 999 down to 0. §8 samples the ring with 1000 of your steps.")


# -- predict, then run (§5): which variance gives the tighter bound? ------------------------------------------------

VARIANCE_CHOICES = {
    "a": "σ_t² = β̃_t, the posterior's own variance, gives the lower (tighter) bound",
    "b": "σ_t² = β_t, the larger variance, gives the lower (tighter) bound",
    "c": "they agree within 0.05 bits/dim: with 1000 small steps the variance hardly matters",
}


def commit_variance_prediction(prediction) -> str:
    """Before §5's bound: for the exact denoiser, which of σ_t² = β_t and β̃_t gives the lower bound?"""
    return commit_choice(prediction, VARIANCE_CHOICES)


def variance_truth(bpd_large: float, bpd_small: float) -> str:
    """The choice that the two measured bounds (bits/dim; `large` = σ² = β_t, `small` = β̃_t) fall in."""
    if abs(bpd_small - bpd_large) < 0.05:
        return "c"
    return "b" if bpd_large < bpd_small else "a"


def reveal_variance(prediction, bpd_large: float, bpd_small: float, share_early: float) -> bool:
    """After the run: the two measured bounds decide. `share_early` is the share of their difference that comes
    from the first 100 of the 1000 steps."""
    why = ("β̃_t is the right variance only when x_0 is known exactly. The exact denoiser knows x_t, not x_0, so the "
           "true reverse step q(x_(t−1) | x_t) is a mixture over every x_0 that could have produced x_t, with variance "
           "β̃_t plus the spread of the posterior means: never below β̃_t. At small t the noise added so far is far "
           "narrower than each mode (std 0.07), so locally the data look like a broad Gaussian and the true variance "
           "is ≈ β_t, Ho et al.'s \"x_0 ~ N(0, I)\" case; there β̃_t ≪ β_t, and a Gaussian that is too narrow "
           "is what the KL punishes hardest (the cost grows with the variance ratio, while one that is too wide "
           "pays only a logarithm). At large t the two variances agree anyway.")
    measured = (f"measured: {bpd_large:.3f} bits/dim with β_t, {bpd_small:.3f} with β̃_t; "
                f"{share_early:.0%} of the difference comes from the first 100 of 1000 steps")
    return reveal_choice(prediction, variance_truth(bpd_large, bpd_small), VARIANCE_CHOICES, why, measured=measured)
