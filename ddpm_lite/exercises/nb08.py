"""Checks for notebook 08 (classifier-free guidance: the fidelity/diversity trade-off, thresholding).

Exercises:
    1. `check_dynamic_threshold(fn)`: Imagen's dynamic thresholding (Saharia et al. 2022, §2.3), compared with
       `ddpm_lite.diffusion.dynamic_threshold`.
    2. `check_scale_to_w(fn)`: convert a "guidance scale" s (diffusers' `guidance_scale`, Imagen's and
       Stable Diffusion's w) to this package's weight w, checked by running both guided predictions.
    3. `check_saturated_fraction(fn)`: the fraction of pixels clipped to ±1, the number the notebook uses to
       show what static clipping does at large guidance weights.
    4. `check_guided_predictions(fn)`: the guided, thresholded denoiser a sampler calls at every step,
       fn(model, diffusion, x_t, t, y, w, threshold, percentile) -> (x̂_0, ε̂): ε̃ from the class and the null
       class, x̂_0 from ε̃, x̂_0 thresholded (None / "static" / "dynamic"), ε̂ recomputed from the thresholded
       x̂_0; compared with `GaussianDiffusion.model_predictions`. The notebook's large-w experiment then samples
       with the learner's function.
    Predict, then run: `DIVERSITY_CHOICES`, `commit_diversity_prediction(p)` before the guidance slider,
       `reveal_diversity(p, lo, hi)` after the trade-off is measured: what happens to within-class diversity as
       w grows?

Every reference is computed by the package at check time, never typed in. Each planted mistake (w used as the
scale s, the branches swapped, class 0 as the null class, no guidance, x̂_0 with ᾱ_t instead of √ᾱ_t or without
the division, the threshold left out, static clipping for "dynamic", ε̂ not recomputed after thresholding) gets a
message naming it.
"""

from __future__ import annotations

import torch

from ..diffusion import dynamic_threshold, static_threshold
from ..metrics import saturated
from . import ExerciseError, allclose, as_tensor, call_answer, commit_choice, passed, reveal_choice
from .nb05 import TinyConditionalNet

__all__ = ["check_dynamic_threshold", "check_scale_to_w", "check_saturated_fraction", "check_guided_predictions",
           "DIVERSITY_CHOICES", "commit_diversity_prediction", "diversity_truth", "reveal_diversity"]


def _test_batch() -> torch.Tensor:
    """x̂_0 predictions of very different ranges, one per sample: the per-sample s matters."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 1, 8, 8, generator=g)
    scales = torch.tensor([0.3, 0.9, 1.5, 3.0, 6.0]).reshape(5, 1, 1, 1)
    x = x / x.abs().amax(dim=(1, 2, 3), keepdim=True) * scales  # sample i has max |x| = scales[i]
    x[2] = x[2] + 0.8  # a lopsided sample: quantile of |x|, not of x
    return x


# -- exercise 1: dynamic thresholding --------------------------------------------------------------------------

def check_dynamic_threshold(dynamic_threshold) -> None:
    """`dynamic_threshold(x0, percentile)`: per sample, s = max(1, quantile(|x0|, percentile)); return
    clip(x0, −s, s) / s. Compared with `ddpm_lite.diffusion.dynamic_threshold` for two percentiles."""
    from ..diffusion import dynamic_threshold as reference

    x = _test_batch()
    for p in (0.995, 0.9):
        x_in = x.clone()
        got = as_tensor(call_answer(dynamic_threshold, "dynamic_threshold", x_in, p), "dynamic_threshold(x0, p)")
        if not torch.equal(x_in, x):
            raise ExerciseError("dynamic_threshold modified x0 in place: return a new tensor.")
        ref = reference(x, p).double()
        if got.shape != ref.shape:
            raise ExerciseError(f"dynamic_threshold returned shape {tuple(got.shape)}, expected the shape of x0 "
                                f"{tuple(ref.shape)}")
        if torch.allclose(got, ref, atol=1e-5):
            continue
        flat = x.reshape(x.shape[0], -1)
        whole = torch.quantile(flat.abs().flatten(), p).clamp(min=1.0)
        if torch.allclose(got, (x.clamp(-whole, whole) / whole).double(), atol=1e-5):
            raise ExerciseError("one s is used for the whole batch: compute s per sample (quantile over "
                                "dim=1 of x0.reshape(B, -1)).")
        small = x.abs().amax(dim=(1, 2, 3)) < 1.0
        if not torch.allclose(got[small], x[small].double(), atol=1e-5):
            raise ExerciseError("a sample whose values all lie inside [−1, 1] must come back unchanged: s must "
                                "be at least 1 (s = max(1, quantile)), otherwise faint samples get blown up.")
        s_signed = torch.quantile(flat, p, dim=1).clamp(min=1.0).reshape(-1, 1, 1, 1)
        if torch.allclose(got, (torch.maximum(torch.minimum(x, s_signed), -s_signed) / s_signed).double(), atol=1e-5):
            raise ExerciseError("take the quantile of |x0|, not of x0: large negative values count too.")
        s = torch.quantile(flat.abs(), p, dim=1).clamp(min=1.0).reshape(-1, 1, 1, 1)
        if torch.allclose(got, torch.maximum(torch.minimum(x, s), -s).double(), atol=1e-5):
            raise ExerciseError("you clip to [−s, s] but forget to divide by s: the result must lie in [−1, 1].")
        if torch.allclose(got, x.clamp(-1, 1).double(), atol=1e-5):
            raise ExerciseError("that is static clipping to [−1, 1]; dynamic thresholding rescales by s first.")
        raise ExerciseError(f"with percentile {p} your result differs from the reference by up to "
                            f"{(got - ref).abs().max().item():.3g}.")
    passed("per-sample s = max(1, quantile of |x̂0|), clip to [−s, s], divide by s: matches the package.")


# -- exercise 2: guidance scale s -> weight w ------------------------------------------------------------------

def check_scale_to_w(scale_to_w) -> None:
    """`scale_to_w(s)`: diffusers computes ε_∅ + s (ε_c − ε_∅); the package computes (1 + w) ε_c − w ε_∅.

    Checked by running both on a small conditional network for several s (including s = 1, "no guidance").
    """
    from ..diffusion import GaussianDiffusion, null_labels

    diffusion = GaussianDiffusion("linear", timesteps=1000)
    net = TinyConditionalNet(seed=1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 8, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    y = torch.tensor([1, 3, 5, 7])
    eps_c, eps_u = net(x, t, y), net(x, t, null_labels(net, y))
    for s in (2.0, 4.0, 7.5, 1.0):
        w = call_answer(scale_to_w, "scale_to_w", s)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ExerciseError(f"scale_to_w should return a number, got {type(w).__name__}") from None
        # the typical mistakes, named (s = 2 tells them apart: s, s + 1, 1/s, s/2 are all different there)
        for wrong, message in ((s, "you returned s itself: the two forms weigh ε_c differently, (1 + w) here and "
                                   "s in ε_∅ + s (ε_c − ε_∅)."),
                               (s + 1, "w = s + 1 goes the wrong way: with s = 1 (\"no guidance\" in the scale "
                                       "form) the package's w must be 0."),
                               (1 / s, "w is not 1/s: expand ε_∅ + s (ε_c − ε_∅) and (1 + w) ε_c − w ε_∅ and match "
                                       "the coefficients of ε_c.")):
            if s == 2.0 and abs(w - wrong) < 1e-9:
                raise ExerciseError(f"scale_to_w(2) = {w:g}: {message}")
        target = eps_u + s * (eps_c - eps_u)  # diffusers' form
        if w < 0:
            raise ExerciseError(f"scale_to_w({s}) = {w}: the package's w must be >= 0 for s >= 1 (w = 0 is the "
                                f"plain conditional model, s = 1).")
        got = diffusion.model_output(net, x, t, y, guidance=w)
        if not torch.allclose(got, target, rtol=1e-5, atol=1e-5):
            raise ExerciseError(f"scale_to_w({s}) returned w = {w:g}, but (1 + w)·ε_c − w·ε_∅ then differs from "
                                f"ε_∅ + s·(ε_c − ε_∅). Expand both and match the coefficient of ε_c.")
    passed("w = s − 1: diffusers' guidance_scale 7.5 is w = 6.5 here, and s = 1 (w = 0) means no guidance.")


# -- exercise 3: the saturated fraction ------------------------------------------------------------------------

def check_saturated_fraction(saturated_fraction) -> None:
    """`saturated_fraction(x, tol=1e-3)`: the fraction of entries with |x| >= 1 − tol, per sample ([B])."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, 1, 8, 8, generator=g) * torch.linspace(0.2, 3.0, 6).reshape(6, 1, 1, 1)).clamp(-1, 1)
    x[0, 0, 0, :4] = -1.0
    ref = saturated(x, tol=1e-3).double().flatten(1).mean(dim=1)
    got = as_tensor(call_answer(saturated_fraction, "saturated_fraction", x.clone()), "saturated_fraction(x)")
    if got.shape == ():
        if torch.isclose(got, ref.mean().to(got.dtype)):
            raise ExerciseError("return one fraction per sample (shape [B]), not the mean over the batch: "
                                "average over every dimension except the first.")
    if got.shape != ref.shape:
        raise ExerciseError(f"saturated_fraction returned shape {tuple(got.shape)}, expected [B] = [{x.shape[0]}]")
    plus_only = (x >= 1 - 1e-3).double().flatten(1).mean(dim=1)
    if torch.allclose(got, plus_only) and not torch.allclose(plus_only, ref):
        raise ExerciseError("count both ends: pixels clipped to −1 are saturated too (use |x|).")
    if not torch.allclose(got, ref, atol=1e-9):
        raise ExerciseError(f"the fractions differ from the reference by up to {(got - ref).abs().max().item():.3g}: "
                            f"count entries with |x| >= 1 − tol and divide by the number of entries per sample.")
    if (got < 0).any() or (got > 1).any():
        raise ExerciseError("a fraction must lie in [0, 1].")
    passed("per-sample fraction of pixels at ±1.")


# -- exercise 4: the guided, thresholded denoiser ---------------------------------------------------------------

def _denoiser_setup():
    """A stand-in class-conditional network on 8×8 images (null class 10), a linear schedule, x_t at timesteps
    from nearly clean to nearly pure noise (so that x̂_0 leaves [−1, 1] and the thresholds matter), labels."""
    from ..diffusion import GaussianDiffusion

    net = TinyConditionalNet(dim=64, seed=3).double()     # float64: ε̂ recomputed at t = 5 amplifies rounding (the package quantiles in float32: atol 1e-4)
    diffusion = GaussianDiffusion("linear", timesteps=1000)
    g = torch.Generator().manual_seed(17)
    x = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([5, 150, 400, 750, 980])
    y = torch.tensor([0, 3, 5, 7, 9])
    return net, diffusion, x, t, y


# (threshold, w, percentile): w > 0 everywhere (w = 0 hides the guidance mistakes), both thresholds, two p
_DENOISER_CASES = ((None, 2.0, 0.9), ("static", 2.0, 0.9), ("dynamic", 2.0, 0.9), ("dynamic", 5.0, 0.75))


def _variant(net, diffusion, x, t, y, w, threshold, p, combine="cfg", x0_form="right", thresholding="right"):
    """(x̂_0, ε̂) computed right, or with one mistake."""
    from ..diffusion import null_labels

    eps_c = net(x, t, y)
    eps_u = net(x, t, torch.zeros_like(y) if combine == "class0" else null_labels(net, y))
    eps = {"cfg": (1 + w) * eps_c - w * eps_u, "class0": (1 + w) * eps_c - w * eps_u,
           "scale": eps_u + w * (eps_c - eps_u), "swapped": (1 + w) * eps_u - w * eps_c, "cond": eps_c}[combine]
    ab = diffusion.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x.dtype)
    x0 = {"right": (x - (1 - ab).sqrt() * eps) / ab.sqrt(), "no_sqrt": (x - (1 - ab) * eps) / ab,
          "no_divide": x - (1 - ab).sqrt() * eps}[x0_form]
    if threshold is None or thresholding == "none":
        return x0, eps
    use = "static" if thresholding == "static_always" else threshold
    x0_thr = static_threshold(x0) if use == "static" else dynamic_threshold(x0, p)
    if thresholding == "no_recompute":
        return x0_thr, eps
    return x0_thr, (x - ab.sqrt() * x0_thr) / (1 - ab).sqrt()


_DENOISER_MISTAKES = [
    (dict(combine="scale"), "you used w as the guidance scale s: ε_∅ + w (ε_c − ε_∅). The package's weight w means "
                            "ε̃ = (1 + w) ε_c − w ε_∅ (exercise 1: w = s − 1)."),
    (dict(combine="swapped"), "the two branches are swapped: guidance extrapolates *towards* the class, "
                              "(1 + w) ε(x_t, c) − w ε(x_t, ∅)."),
    (dict(combine="class0"), "the unconditional branch is the null class, label num_classes = 10 "
                             "(null_labels(model, y)), not class 0."),
    (dict(combine="cond"), "no guidance: that is the conditional prediction ε(x_t, c) alone; combine it with the "
                           "null class's, (1 + w) ε_c − w ε_∅."),
    (dict(x0_form="no_sqrt"), "x̂_0 = (x_t − √(1 − ᾱ_t) ε̃) / √ᾱ_t: you used ᾱ_t and 1 − ᾱ_t without the square "
                              "roots."),
    (dict(x0_form="no_divide"), "x̂_0 = (x_t − √(1 − ᾱ_t) ε̃) / √ᾱ_t: you forgot to divide by √ᾱ_t."),
    (dict(thresholding="none"), "the threshold is not applied: with threshold=\"static\" clip x̂_0 to [−1, 1], with "
                                "\"dynamic\" use your dynamic threshold at `percentile`."),
    (dict(thresholding="static_always"), "threshold=\"dynamic\" must use dynamic thresholding (your "
                                         "my_dynamic_threshold at `percentile`), not static clipping."),
    (dict(thresholding="no_recompute"), "after thresholding x̂_0, recompute ε̂ from it, ε̂ = (x_t − √ᾱ_t x̂_0) / "
                                        "√(1 − ᾱ_t): otherwise the sampler's next step mixes the thresholded x̂_0 "
                                        "with an ε̂ that still points at the unthresholded one."),
]


def _unpack_pair(out):
    if out is None:
        raise ExerciseError("`guided_predictions` returned None: return the pair (x0, eps).")
    if torch.is_tensor(out):
        raise ExerciseError("return the pair (x0, eps), not a single tensor: the sampler needs both.")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ExerciseError(f"return the pair (x0, eps), got {type(out).__name__}.")
    return as_tensor(out[0], "x0"), as_tensor(out[1], "eps")


def check_guided_predictions(fn) -> None:
    """`fn(model, diffusion, x_t, t, y, w, threshold, percentile)` (threshold None, "static" or "dynamic") must
    return (x̂_0, ε̂): ε̃ = (1 + w) ε(x_t, y) − w ε(x_t, ∅) with ∅ the null class, x̂_0 = (x_t − √(1 − ᾱ_t) ε̃) /
    √ᾱ_t, thresholded, and ε̂ recomputed from the thresholded x̂_0 (unchanged ε̃ when threshold is None)."""
    net, diffusion, x, t, y = _denoiser_setup()
    answers, refs = [], []
    for threshold, w, p in _DENOISER_CASES:
        with torch.no_grad():
            got = _unpack_pair(call_answer(fn, "guided_predictions", net, diffusion, x.clone(), t.clone(),
                                           y.clone(), w, threshold, p))
            ref = diffusion.model_predictions(net, x, t, y, w, threshold=threshold, percentile=p)
        for a, r, name in zip(got, ref, ("x0", "eps")):
            if a.shape != r.shape:
                raise ExerciseError(f"{name} should have x_t's shape {list(r.shape)}, got {list(a.shape)}.")
        answers.append(got)
        refs.append(ref)

    def same(pairs, others):
        return all(allclose(a[0], b[0].double(), rtol=1e-5, atol=1e-4) and
                   allclose(a[1], b[1].double(), rtol=1e-5, atol=1e-4) for a, b in zip(pairs, others))

    if same(answers, refs):
        passed("ε̃ = (1 + w) ε(x_t, c) − w ε(x_t, ∅) with the null class, x̂_0 from ε̃, thresholded, and ε̂ "
               "recomputed from the thresholded x̂_0: GaussianDiffusion.model_predictions, what every sampler "
               "calls. Section 4 samples with your function.")
        return
    with torch.no_grad():
        for kwargs, message in _DENOISER_MISTAKES:
            wrong = [_variant(net, diffusion, x, t, y, w, th, p, **kwargs) for th, w, p in _DENOISER_CASES]
            if same(answers, wrong):
                raise ExerciseError(message)
    for (threshold, w, p), got, ref in zip(_DENOISER_CASES, answers, refs):
        for a, r, name in zip(got, ref, ("x̂_0", "ε̂")):
            if not torch.isfinite(a).all():
                raise ExerciseError(f"NaN or inf in your {name} (threshold={threshold!r}, w = {w:g}).")
            if not allclose(a, r.double(), rtol=1e-5, atol=1e-4):
                raise ExerciseError(f"with threshold={threshold!r}, w = {w:g}, percentile {p}: your {name} differs "
                                    f"from the reference by up to {(a - r.double()).abs().max().item():.3g}.")


# -- predict, then run: diversity under guidance -------------------------------------------------------------------

DIVERSITY_CHOICES = {
    "a": "it grows: guidance sharpens every class, so the samples spread out more",
    "b": "it stays about the same (within ±20 %): guidance only makes the class clearer, not the shapes fewer",
    "c": "it drops by more than 20 %: each class collapses towards its most typical shapes",
}


def commit_diversity_prediction(prediction) -> str:
    """Before the guidance slider: what happens to the within-class diversity of the samples (relative to real
    digits) between w = 0 and the largest weight?"""
    return commit_choice(prediction, DIVERSITY_CHOICES)


def diversity_truth(diversity_low_w: float, diversity_high_w: float) -> str:
    """The choice that the measured change of diversity falls in (the ratio high-w / low-w)."""
    ratio = diversity_high_w / diversity_low_w
    return "a" if ratio > 1.2 else "b" if ratio >= 0.8 else "c"


def reveal_diversity(prediction, diversity_low_w: float, diversity_high_w: float, w_low: float = 0.0,
                     w_high: float = 4.0) -> bool:
    """After section 3's measurement: the measured diversities decide; the reasoning is printed either way."""
    why = ("the guided prediction is ε_c + w (ε_c − ε_∅), and ε_c − ε_∅ is (minus σ_t times) the gradient of log "
           "p(c | x_t), an implicit classifier. Guidance therefore pushes every sample towards where that "
           "classifier is most sure, i.e. towards the few shapes most typical of the class, away from the "
           "unusual ways of writing it. Fidelity up, diversity down: the same noises that gave varied sevens at "
           "w = 0 give more alike ones at large w.")
    return reveal_choice(prediction, diversity_truth(diversity_low_w, diversity_high_w), DIVERSITY_CHOICES, why,
                         measured=f"measured: diversity {diversity_low_w:.2f} at w = {w_low:g}, "
                                  f"{diversity_high_w:.2f} at w = {w_high:g}")
