"""Checks for notebook 11, "Text to image: a mini Stable Diffusion and a mini Imagen".

Exercises:
    1. `check_cross_attention(fn)`: multi-head cross-attention from queries, keys and values with a padding mask
       (Rombach et al. 2022, §3.3), fn(q, k, v, mask) -> (output, weights): weights = softmax(Q Kᵀ / √d) over
       the L tokens, padded tokens (mask False) getting exactly 0, output = weights · V; compared with
       `ddpm_lite.transformer.attention`, which the U-Net's `CrossAttention` uses.
    2. `check_text_guidance(fn)`: classifier-free guidance against the **empty prompt**, fn(model, x_t, t, cond, w)
       -> ε̃ = (1 + w) ε(x_t, c) − w ε(x_t, ∅) with ∅ = `cond.null()` (the encoding of "" and its mask);
       compared with `GaussianDiffusion.model_output(model, x_t, t, cond, guidance=w)`, what every sampler uses.
    3. `check_noise_augmentation(fn)`: a cascade's noise-conditioning augmentation (Ho et al. 2022 §3.2; Imagen
       §2.5), fn(low, size, aug_level, alphas_cumprod, noise) -> the low-resolution image upsampled bilinearly
       to `size`, then forward-noised to timestep `aug_level`: √ᾱ_s · up + √(1 − ᾱ_s) · noise; compared with
       `text_to_image.upsample` and `GaussianDiffusion.q_sample`, what the super-resolution stage does.
    Predict, then run: `HELD_OUT_CHOICES`, `commit_held_out_prediction(p)` before the held-out prompts are
       sampled, `reveal_held_out(p, digit, upside_down)` after: what do the two systems draw for "an upside-down
       seven", a combination no training caption had?

Every reference is computed by the package at check time, never typed in. Each planted mistake (no √d scaling,
softmax over the positions, the mask ignored, inverted or applied after the softmax, masked scores set to 0,
values from the keys; branches swapped, the guidance scale s used as w, a zero or unmasked null context, the
prompt's mask on the empty prompt; ᾱ without the square root, signal not scaled, coefficients swapped,
nearest or corner-aligned upsampling, ᾱ at the wrong timestep) gets a message that names it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..conditioning import TextCondition
from ..diffusion import GaussianDiffusion
from ..text_to_image import upsample
from ..transformer import attention
from . import ExerciseError, allclose, as_tensor, call_answer, commit_choice, passed, reveal_choice, small_text_unet

__all__ = ["check_cross_attention", "check_text_guidance", "check_noise_augmentation", "HELD_OUT_CHOICES",
           "commit_held_out_prediction", "held_out_truth", "reveal_held_out"]


# -- exercise 1: cross-attention with a padding mask ---------------------------------------------------------------

def _attention_inputs():
    """Two cases: q [B, h, N, d], k and v [B, h, L, d] (N ≠ L, so a softmax over the wrong axis shows) and a
    padding mask [B, L] with prompts of different lengths (and one without padding)."""
    gen = torch.Generator().manual_seed(10)
    cases = []
    for B, h, N, L, d, real in ((2, 2, 5, 7, 8, (3, 7)), (3, 4, 9, 6, 4, (2, 5, 1))):
        q = 1.5 * torch.randn(B, h, N, d, generator=gen, dtype=torch.float64)
        k = 1.5 * torch.randn(B, h, L, d, generator=gen, dtype=torch.float64)
        v = torch.randn(B, h, L, d, generator=gen, dtype=torch.float64)
        mask = torch.arange(L)[None] < torch.tensor(real)[:, None]
        cases.append((q, k, v, mask))
    return cases


def _attention_mistakes(q, k, v, mask):
    """(wrong weights, wrong output, message) for the typical mistakes."""
    d = q.shape[-1]
    raw = q @ k.transpose(-1, -2)
    m = mask[:, None, None, :]
    scaled = raw / math.sqrt(d)
    masked = scaled.masked_fill(~m, float("-inf"))
    out = []

    def add(weights, message, values=v):
        out.append((weights, weights @ values, message))

    add(raw.masked_fill(~m, float("-inf")).softmax(-1),
        "no √d scaling: divide the scores Q Kᵀ by √d (d = the last dimension of q) before the softmax, or "
        "they grow with d and the softmax saturates.")
    add((raw / d).masked_fill(~m, float("-inf")).softmax(-1),
        "you divided the scores by d; the scaling is 1/√d (math.sqrt(q.shape[-1])).")
    add((raw * math.sqrt(d)).masked_fill(~m, float("-inf")).softmax(-1),
        "you multiplied the scores by √d; divide by it.")
    add(masked.softmax(-2),
        "softmax over the wrong axis (dim −2, the positions): each position (query) spreads its attention over "
        "the L tokens, so the softmax runs over the last axis (dim −1) and each row of weights sums to 1.")
    add(scaled.softmax(-1),
        "the padding mask is ignored: padded tokens (mask False) must get weight exactly 0. Set their scores to "
        "−inf before the softmax (scores.masked_fill(~mask[:, None, None, :], float('-inf'))).")
    add(scaled.softmax(-1) * m,
        "you zeroed the padded tokens' weights *after* the softmax without renormalising: the remaining "
        "weights no longer sum to 1. Mask the scores with −inf *before* the softmax.")
    add(scaled.masked_fill(~m, 0.0).softmax(-1),
        "you set the padded tokens' scores to 0, which is not \"no attention\" (e⁰ = 1): use −inf, so their "
        "weight after the softmax is exactly 0.")
    add(scaled.masked_fill(m, float("-inf")).softmax(-1).nan_to_num(0.0),
        "the mask is inverted: True marks a real token (attend), False a padding token (weight 0).")
    add(masked.softmax(-1), "the output is weights · V, the values; you multiplied the weights with the keys.",
        values=k)
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN where the other has NaN (a mistake may produce NaN rows)."""
    return a.shape == b.shape and bool(torch.allclose(a, b.to(a.dtype), rtol=1e-6, atol=1e-9, equal_nan=True))


def _unpack_attention(answer, shape_out, shape_w):
    if answer is None:
        raise ExerciseError("`cross_attention` returned None: return (output, weights).")
    if torch.is_tensor(answer):
        if tuple(answer.shape) == shape_out:
            raise ExerciseError("you returned only the output: return the pair (output, weights), the weights "
                                "being the softmax [B, heads, N, L] (notebook 11 draws them).")
        raise ExerciseError(f"return the pair (output, weights), got one tensor of shape {tuple(answer.shape)}.")
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise ExerciseError(f"return the pair (output, weights), got {type(answer).__name__}.")
    out, weights = (as_tensor(a, name) for a, name in zip(answer, ("output", "weights")))
    if tuple(out.shape) == shape_w and tuple(weights.shape) == shape_out:
        raise ExerciseError("return (output, weights) in this order: the output first.")
    if tuple(weights.shape) != shape_w:
        raise ExerciseError(f"the weights should have shape [B, heads, N, L] = {list(shape_w)} (one weight per "
                            f"position and token), got {list(weights.shape)}.")
    if tuple(out.shape) != shape_out:
        raise ExerciseError(f"the output should have shape [B, heads, N, d] = {list(shape_out)}, like q, got "
                            f"{list(out.shape)}.")
    return out, weights


def check_cross_attention(fn) -> None:
    """`fn(q, k, v, mask)` (q [B, h, N, d]; k, v [B, h, L, d]; mask [B, L] bool, True = a real token) must return
    (output [B, h, N, d], weights [B, h, N, L]): weights = softmax over L of Q Kᵀ / √d with padded tokens at
    weight 0, output = weights · V."""
    for q, k, v, mask in _attention_inputs():
        B, h, N, d = q.shape
        L = k.shape[2]
        ref_out, ref_w = attention(q, k, v, mask)
        out, weights = _unpack_attention(call_answer(fn, "cross_attention", q.clone(), k.clone(), v.clone(),
                                                     mask.clone()), (B, h, N, d), (B, h, N, L))
        if _same(weights, ref_w) and _same(out, ref_out):
            continue
        for wrong_w, wrong_out, message in _attention_mistakes(q, k, v, mask):
            if _same(out, wrong_out) or (not _same(wrong_w, ref_w) and _same(weights, wrong_w)):
                raise ExerciseError(message)
        if not torch.isfinite(weights).all() or not torch.isfinite(out).all():
            raise ExerciseError("NaN or inf in your result: a row whose scores are all −inf gives NaN in the "
                                "softmax. Is the mask inverted? True marks a real token (attend), False a padding "
                                "token (weight 0); every prompt has at least one real token.")
        if _same(weights, ref_w):
            raise ExerciseError("the weights are right but the output is not: it is weights @ v, shape "
                                "[B, heads, N, d].")
        padded = weights.masked_select(~mask[:, None, None, :].expand(B, h, N, L))
        if padded.numel() and padded.abs().max() > 1e-9:
            raise ExerciseError("padded tokens (mask False) still get attention: their weights must be exactly 0.")
        raise ExerciseError(f"for q of shape {list(q.shape)} your weights differ from softmax(Q Kᵀ / √d) (padding "
                            f"masked) by up to {(weights - ref_w).abs().max().item():.3g}.")
    passed("weights = softmax(Q Kᵀ / √d) over the tokens with padding at −inf (weight 0), output = weights · V: "
           "the cross-attention of the U-Net's SpatialTransformer (ddpm_lite.transformer.attention).")


# -- exercise 2: classifier-free guidance against the empty prompt ------------------------------------------------

def _guidance_setup():
    """A small text-conditioned UNet (random, perturbed weights so that the context matters) and a TextCondition
    whose null is an "empty prompt" encoding with its own mask (1 real token), unlike the prompts' masks."""
    model, g = small_text_unet(11)
    L = 5
    context = torch.randn(3, L, 6, generator=g, dtype=torch.float64)
    mask = torch.arange(L)[None] < torch.tensor([3, 5, 2])[:, None]
    null_context = torch.randn(L, 6, generator=g, dtype=torch.float64)
    null_mask = torch.arange(L) < 2
    prompts = ["a seven", "a thick two, shifted to the left", "a one"]
    cond = TextCondition(context, mask, null_context, null_mask, prompts)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([40, 400, 900])
    return model, cond, x, t


def _guidance_mistakes(model, cond, x, t):
    """{name: (function of w, message)} for the typical mistakes."""
    with torch.no_grad():
        e_c = model(x, t, **cond.model_kwargs())
        null = cond.null()
        e_u = model(x, t, **null.model_kwargs())
        zero = model(x, t, context=torch.zeros_like(cond.context), context_mask=cond.mask)
        zero_nomask = model(x, t, context=torch.zeros_like(cond.context))
        unmasked_null = model(x, t, context=null.context)
        prompt_mask_null = model(x, t, context=null.context, context_mask=cond.mask)
        e_c_unmasked = model(x, t, context=cond.context)
    return [
        (lambda w: w * e_c + (1 - w) * e_u,
         "you used w as the guidance scale s: ε_∅ + w (ε_c − ε_∅). In this course w = s − 1: (1 + w) ε_c − w ε_∅, "
         "so w = 0 gives the plain conditional prediction."),
        (lambda w: (1 + w) * e_u - w * e_c,
         "the two branches are swapped: guidance pushes towards the prompt, (1 + w) ε(x, c) − w ε(x, ∅)."),
        (lambda w: w * e_c - (1 + w) * e_u + 0 * w,
         "w and 1 + w are swapped: (1 + w) multiplies the conditional prediction, w the unconditional one."),
        (lambda w: (1 - w) * e_c + w * e_u,
         "wrong sign: ε̃ = (1 + w) ε_c − w ε_∅ moves *away* from the unconditional prediction."),
        (lambda w: e_c + 0 * w, "that is the conditional prediction alone: no guidance for any w."),
        (lambda w: (1 + w) * e_c - w * zero,
         "the unconditional branch is the encoding of the empty prompt \"\" (cond.null()), not a context of "
         "zeros: the U-Net learned ε(x, ∅) from captions dropped to \"\" (caption dropout)."),
        (lambda w: (1 + w) * e_c - w * zero_nomask,
         "the unconditional branch is the encoding of the empty prompt \"\" (cond.null(), with its mask), not a "
         "context of zeros."),
        (lambda w: (1 + w) * e_c - w * unmasked_null,
         "the empty prompt's branch was called without its mask: pass cond.null()'s context_mask too (the model "
         "otherwise attends to its padding tokens, which it never did in training)."),
        (lambda w: (1 + w) * e_c - w * prompt_mask_null,
         "the empty prompt's context needs the empty prompt's own mask (cond.null().mask: only <start> and <end> "
         "are real), not the prompts' masks. Use cond.null() whole: model(x, t, **cond.null().model_kwargs())."),
        (lambda w: (1 + w) * e_c_unmasked - w * e_u,
         "the conditional branch was called without the prompts' padding mask: pass context_mask=cond.mask (or "
         "**cond.model_kwargs())."),
    ]


def check_text_guidance(fn) -> None:
    """`fn(model, x_t, t, cond, w)` (a text-conditioned UNet, called as model(x_t, t, context=...,
    context_mask=...); cond a `TextCondition`) must return (1 + w) ε(x_t, c) − w ε(x_t, ∅), the unconditional
    branch being `cond.null()`: the empty prompt's encoding and mask."""
    model, cond, x, t = _guidance_setup()
    diffusion = GaussianDiffusion("linear", timesteps=1000)
    weights = (0.0, 1.0, 3.0, 7.5)
    answers, refs = [], []
    for w in weights:
        with torch.no_grad():
            got = call_answer(fn, "text_guided_eps", model, x.clone(), t.clone(), cond, w)
        got = as_tensor(got, "text_guided_eps")
        if got.shape != x.shape:
            raise ExerciseError(f"text_guided_eps should return a prediction shaped like x_t {list(x.shape)}, got "
                                f"{list(got.shape)}.")
        with torch.no_grad():
            refs.append(diffusion.model_output(model, x, t, cond, guidance=w).double())
        answers.append(got)
    if all(allclose(a, r, rtol=1e-6, atol=1e-9) for a, r in zip(answers, refs)):
        passed("ε̃ = (1 + w) ε(x_t, c) − w ε(x_t, ∅) with ∅ = the empty prompt (cond.null()) matches "
               "GaussianDiffusion.model_output for w = 0, 1, 3, 7.5: Stable Diffusion's guidance.")
        return
    for form, message in _guidance_mistakes(model, cond, x, t):
        if all(allclose(a, form(w).double(), rtol=1e-6, atol=1e-9) for a, w in zip(answers, weights)):
            raise ExerciseError(message)
    if not allclose(answers[0], refs[0], rtol=1e-6, atol=1e-9):
        raise ExerciseError("with w = 0 guidance is off: the result must be the conditional prediction "
                            "model(x_t, t, **cond.model_kwargs()) exactly.")
    worst = max((a - r).abs().max().item() for a, r in zip(answers, refs))
    raise ExerciseError(f"your guided prediction differs from (1 + w) ε(x_t, c) − w ε(x_t, ∅) by up to "
                        f"{worst:.3g}.")


# -- exercise 3: noise-conditioning augmentation ------------------------------------------------------------------

def _augmentation_inputs():
    gen = torch.Generator().manual_seed(12)
    diffusion = GaussianDiffusion("linear", timesteps=1000)
    low = torch.rand(3, 1, 14, 14, generator=gen, dtype=torch.float64) * 2 - 1
    size = 28
    aug_level = torch.tensor([0, 120, 250])
    noise = torch.randn(3, 1, size, size, generator=gen, dtype=torch.float64)
    return diffusion, low, size, aug_level, noise


def _augmentation_mistakes(diffusion, low, size, aug_level, noise):
    ac = diffusion.schedule.alphas_cumprod.double()
    a = ac[aug_level][:, None, None, None]
    up = upsample(low, (size, size))
    nearest = F.interpolate(low, size=(size, size), mode="nearest")
    corners = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=True)
    prev = ac[(aug_level - 1).clamp(min=0)][:, None, None, None]
    nxt = ac[(aug_level + 1).clamp(max=len(ac) - 1)][:, None, None, None]
    return [
        (a * up + (1 - a) * noise, "the coefficients are √ᾱ_s and √(1 − ᾱ_s): you used ᾱ_s and 1 − ᾱ_s without "
                                   "the square roots."),
        (a.sqrt() * up + (1 - a) * noise, "the noise's coefficient is √(1 − ᾱ_s), the square root."),
        (a * up + (1 - a).sqrt() * noise, "the image's coefficient is √ᾱ_s, the square root of alphas_cumprod."),
        (up + (1 - a).sqrt() * noise, "the image must be scaled by √ᾱ_s too: x_s = √ᾱ_s · up + √(1 − ᾱ_s) · "
                                      "noise (q_sample), so the total variance stays about 1."),
        ((1 - a).sqrt() * up + a.sqrt() * noise, "the coefficients are swapped: √ᾱ_s multiplies the image, "
                                                 "√(1 − ᾱ_s) the noise."),
        (a.sqrt() * nearest + (1 - a).sqrt() * noise, "the upsampling is bilinear (F.interpolate(..., "
                                                      "mode='bilinear', align_corners=False)), not nearest."),
        (a.sqrt() * corners + (1 - a).sqrt() * noise, "use align_corners=False (the package's `upsample`, as the "
                                                      "training views were made)."),
        (prev.sqrt() * up + (1 - prev).sqrt() * noise, "ᾱ at the wrong timestep: index alphas_cumprod with "
                                                       "aug_level itself (timestep s, 0-based)."),
        (nxt.sqrt() * up + (1 - nxt).sqrt() * noise, "ᾱ at the wrong timestep: index alphas_cumprod with "
                                                     "aug_level itself (timestep s, 0-based)."),
        (up, "no noise was added: noise-conditioning augmentation forward-noises the upsampled image to timestep "
             "aug_level."),
    ]


def check_noise_augmentation(fn) -> None:
    """`fn(low, size, aug_level, alphas_cumprod, noise)` (low [B, C, h, w] in [-1, 1]; size an int; aug_level [B]
    timesteps; alphas_cumprod [T]; noise [B, C, size, size]) must return √ᾱ_s · up + √(1 − ᾱ_s) · noise, with
    up = `low` upsampled bilinearly (align_corners=False) to size × size and s = aug_level per image."""
    diffusion, low, size, aug_level, noise = _augmentation_inputs()
    alphas_cumprod = diffusion.schedule.alphas_cumprod.double().clone()
    got = as_tensor(call_answer(fn, "noise_augment", low.clone(), size, aug_level.clone(), alphas_cumprod,
                                noise.clone()), "noise_augment")
    ref = diffusion.q_sample(upsample(low, (size, size)), aug_level, noise)
    if tuple(got.shape) == tuple(low.shape):
        raise ExerciseError(f"the result has the low resolution {list(low.shape)}: upsample to size × size first "
                            f"(the super-resolution stage works at {size}×{size}).")
    if got.shape != ref.shape:
        raise ExerciseError(f"the result should have shape {list(ref.shape)} (like noise), got {list(got.shape)}.")
    if allclose(got, ref, rtol=1e-6, atol=1e-9):
        passed("up = bilinear upsampling, then x_s = √ᾱ_s · up + √(1 − ᾱ_s) · ε at each image's aug_level: the "
               "super-resolution stage's noise-conditioning augmentation (q_sample of the upsampled low-res image).")
        return
    for wrong, message in _augmentation_mistakes(diffusion, low, size, aug_level, noise):
        if allclose(got, wrong, rtol=1e-6, atol=1e-9):
            raise ExerciseError(message)
    same_level = [allclose(got[i], ref[i], rtol=1e-6, atol=1e-9) for i in range(len(aug_level))]
    if any(same_level) and not all(same_level):
        raise ExerciseError(f"right for some images only ({sum(same_level)} of {len(same_level)}): each image has "
                            f"its own aug_level; index alphas_cumprod with the whole [B] tensor and reshape to "
                            f"[B, 1, 1, 1].")
    raise ExerciseError(f"your augmented images differ from √ᾱ_s · up + √(1 − ᾱ_s) · noise by up to "
                        f"{(got - ref).abs().max().item():.3g}.")


# -- predict, then run: a held-out combination --------------------------------------------------------------------

HELD_OUT_CHOICES = {
    "a": "upside-down sevens: the models know both words and compose them, as they do for \"a small five\"",
    "b": "something upside-down that, turned back, is not a seven",
    "c": "upright sevens: the models ignore \"upside-down\" for a digit they never saw turned",
}


def commit_held_out_prediction(prediction) -> str:
    """Before the run: what do mini-SD and mini-Imagen draw for "an upside-down seven"?"""
    return commit_choice(prediction, HELD_OUT_CHOICES)


def held_out_truth(digit: float, upside_down: float) -> str:
    """The choice the measurements support. `digit`: share of the images read as a seven once rotated back;
    `upside_down`: share the CLIP judges upside-down (both averaged over the systems). Mostly not upside down:
    (c); upside down and a seven: (a); upside down but not a seven: (b)."""
    if upside_down < 0.5:
        return "c"
    return "a" if digit >= 0.5 else "b"


def reveal_held_out(prediction, digit: float, upside_down: float) -> bool:
    """After the run: the measurements decide; the reasoning is printed either way."""
    why = ("the U-Net learned \"upside-down\" from the other nine digits, so it turns whatever it draws; but what "
           "it draws for \"seven\" it learned from upright sevens only. An upside-down seven is "
           "a new shape, and nothing in the text encoder's states (the same CLIP's, which did not read upside-down "
           "sevens as sevens either) tells the U-Net what it looks like. So the words do not compose into the "
           "picture: the models follow \"upside-down\" and fall back on strokes of the upside-down digits they "
           "saw. \"A small five\" composes because shrinking keeps the shape that \"five\" names.")
    return reveal_choice(prediction, held_out_truth(digit, upside_down), HELD_OUT_CHOICES, why,
                         measured=f"measured over both systems: {upside_down:.0%} judged upside-down by the CLIP, "
                                  f"{digit:.0%} read as a seven once rotated back")
