"""Checks for notebook 10, "CLIP from scratch".

Exercises:
    1. `check_clip_loss(fn)`: CLIP's symmetric InfoNCE loss (Radford et al. 2021, Fig. 3),
       fn(image_emb, text_emb, logit_scale) -> one number: L2-normalise both [N, d] embeddings, logits =
       logit_scale · cosine similarities [N, N], cross-entropy with targets 0..N−1 over the rows (images →
       captions) and over the columns (captions → images), averaged; compared with `ddpm_lite.clip.clip_loss`.
    2. `check_zero_shot(fn)`: a zero-shot classifier from embeddings with prompt ensembling (CLIP §3.1.4),
       fn(image_emb, template_embs) -> the predicted class per image: average the [T, K, d] per-template class
       embeddings over the T templates, re-normalise, cosine similarity with each image [B, d], argmax over the
       K classes; compared with the same steps written with the package's `F.normalize`, which is what
       `CLIP.class_embeddings` and `CLIP.zero_shot_classify` do.
    Predict, then run: `UPSIDE_DOWN_CHOICES`, `commit_upside_down_prediction(p)` before the held-out pairs are
       tested, `reveal_upside_down(p, share, other)` after your zero-shot classifier has read the upside-down test
       sevens (a rotation the captions never applied to a seven): what share does it call "seven"?

Every reference is computed by the package at check time, never typed in. Each planted mistake (one direction
only, no or inverted temperature, missing normalisation, sum instead of mean, wrong targets; no
re-normalisation, one template, argmax or softmax over the wrong dimension) gets a message that names it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..clip import INIT_TEMPERATURE, MAX_LOGIT_SCALE, clip_loss
from . import ExerciseError, allclose, as_tensor, call_answer, commit_choice, passed, reveal_choice

__all__ = ["check_clip_loss", "check_zero_shot", "UPSIDE_DOWN_CHOICES", "commit_upside_down_prediction",
           "upside_down_truth", "reveal_upside_down"]


# -- exercise 1: the symmetric InfoNCE loss ------------------------------------------------------------------------

def _loss_inputs():
    """Two cases of unnormalised embeddings (rows of very different lengths, so normalisation matters), the
    captions loosely matching their images (a realistic, not a random, loss), and a logit scale."""
    gen = torch.Generator().manual_seed(9)
    cases = []
    for n, d, scale in ((6, 8, 1 / INIT_TEMPERATURE), (5, 16, 3.0)):
        image = torch.randn(n, d, generator=gen, dtype=torch.float64)
        text = image + 0.8 * torch.randn(n, d, generator=gen, dtype=torch.float64)
        image = image * (0.3 + 3 * torch.rand(n, 1, generator=gen, dtype=torch.float64))
        text = text * (0.3 + 3 * torch.rand(n, 1, generator=gen, dtype=torch.float64))
        cases.append((image, text, torch.tensor(scale, dtype=torch.float64)))
    return cases


def _ce(logits, target=None, reduction="mean"):
    target = torch.arange(logits.shape[0]) if target is None else target
    return F.cross_entropy(logits, target, reduction=reduction)


def _loss_mistakes(image, text, scale):
    """(wrong loss, message) for the typical mistakes."""
    i, t = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    cos = i @ t.t()
    logits = scale * cos
    n = logits.shape[0]
    both = lambda lg, **kw: 0.5 * (_ce(lg, **kw) + _ce(lg.t(), **kw))  # noqa: E731
    return [
        (_ce(logits), "you used one direction only (images → captions, the rows). CLIP's loss is symmetric: "
                      "average it with the cross-entropy of the transposed logits (captions → images)."),
        (_ce(logits.t()), "you used one direction only (captions → images, the columns). CLIP's loss is "
                          "symmetric: average it with the cross-entropy of the logits' rows (images → captions)."),
        (_ce(logits) + _ce(logits.t()), "you added the two directions; CLIP averages them: ½ (L_images + L_text)."),
        (both(cos), "no temperature: multiply the cosine similarities by logit_scale (= 1/τ) before the "
                    "cross-entropy; cosines alone lie in [−1, 1], too flat for a softmax over the batch."),
        (both(cos / scale), "you divided by logit_scale: it is already 1/τ, so *multiply* the cosine "
                            "similarities by it (logits = logit_scale · cos)."),
        (both(scale.exp() * cos), "logit_scale is already exp(t) = 1/τ (the model's clamped_logit_scale()): "
                                  "multiply by it as it is, without another exp."),
        (both(scale * image @ text.t()), "the embeddings must be L2-normalised first (F.normalize(x, dim=-1)): "
                                         "the logits are scaled *cosine* similarities."),
        (both(scale * i @ text.t()), "normalise the text embeddings too: both sides must have unit length."),
        (both(scale * image @ t.t()), "normalise the image embeddings too: both sides must have unit length."),
        (both(scale * F.normalize(image, dim=0) @ F.normalize(text, dim=0).t()),
         "you normalised over the wrong dimension (dim=0, across the batch): each embedding (row) gets unit "
         "length, F.normalize(x, dim=-1)."),
        (both(logits, reduction="sum"), "you summed the cross-entropy over the pairs; take the mean over the "
                                        "batch (F.cross_entropy's default), so the loss does not grow with N."),
        (_ce(logits, reduction="sum") + _ce(logits.t(), reduction="sum"),
         "you summed over the pairs and over the two directions; take the mean over the batch and average the "
         "two directions."),
        (both(logits, target=torch.zeros(n, dtype=torch.long)),
         "wrong targets: caption i belongs to image i, so the targets are torch.arange(N) (the diagonal), "
         "not all zeros."),
        (both(logits, target=torch.arange(n - 1, -1, -1)),
         "wrong targets: the matching pairs are on the diagonal, so the target of row i is i (torch.arange(N))."),
        (both(logits.softmax(-1)), "F.cross_entropy applies log-softmax itself: pass it the logits, not "
                                   "softmax probabilities."),
        (0.5 * (F.binary_cross_entropy_with_logits(logits, torch.eye(n, dtype=logits.dtype))
                + F.binary_cross_entropy_with_logits(logits.t(), torch.eye(n, dtype=logits.dtype))),
         "that is a binary (sigmoid) loss per pair; CLIP's is a softmax cross-entropy over each row and "
         "column with targets torch.arange(N)."),
        (-(logits.diagonal()).mean(), "the loss is a cross-entropy: the diagonal logits must also be compared "
                                      "with the rest of their row and column (softmax), not just maximised."),
    ]


def check_clip_loss(fn) -> None:
    """`fn(image_emb, text_emb, logit_scale)` (unnormalised [N, d] embeddings of N matching pairs, and
    logit_scale = 1/τ, a 0-dim tensor) must return CLIP's loss: one number,
    ½ [CE(s · Î Tᵀ, arange N) + CE(s · T Îᵀ, arange N)] with Î, T the L2-normalised embeddings."""
    for k, (image, text, scale) in enumerate(_loss_inputs()):
        out = call_answer(fn, "clip_loss", image.clone(), text.clone(), scale.clone())
        got = as_tensor(out, "clip_loss")
        ref = clip_loss(image, text, scale).detach()
        if got.numel() != 1:
            n = image.shape[0]
            if got.shape == (n,) and allclose(got, 0.5 * (_ce(scale * F.normalize(image, dim=-1) @ F.normalize(
                    text, dim=-1).t(), reduction="none") + _ce(scale * F.normalize(text, dim=-1) @ F.normalize(
                    image, dim=-1).t(), reduction="none")), rtol=1e-6):
                raise ExerciseError("you return one loss per pair: average them over the batch (one number).")
            if got.shape == (n, n):
                raise ExerciseError("that is an [N, N] matrix (the logits?); the loss is one number: the "
                                    "cross-entropy of its rows and of its columns, averaged.")
            raise ExerciseError(f"`clip_loss` should return one number, got shape {tuple(got.shape)}.")
        got = got.reshape(())
        if not torch.isfinite(got):
            raise ExerciseError("`clip_loss` is NaN or inf: did you normalise by a zero norm, or take log(0)?")
        if allclose(got, ref, rtol=1e-5, atol=1e-8):
            continue
        for wrong, message in _loss_mistakes(image, text, scale):
            if allclose(got, wrong.detach(), rtol=1e-5, atol=1e-8):
                raise ExerciseError(message)
        raise ExerciseError(f"for N = {image.shape[0]} pairs of {image.shape[1]}-dimensional embeddings and "
                            f"logit_scale {float(scale):.3g} you return {float(got):.5g}, expected "
                            f"{float(ref):.5g}. Normalise, scale the cosine similarities, then average the "
                            f"cross-entropies of the rows and of the columns (targets torch.arange(N)).")
    passed("½ [CE(s · cos, arange N) over the rows + the same over the columns], with L2-normalised embeddings "
           "and s = logit_scale = 1/τ: the symmetric InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3).")


# -- exercise 2: zero-shot prediction with prompt ensembling ------------------------------------------------------

def _zero_shot_inputs():
    """Unit-length image embeddings [B, d] and per-template class embeddings [T, K, d] (each unit length), built
    so that every typical mistake changes some predictions: the templates of some classes disagree a lot (their
    mean is short, so skipping the re-normalisation matters) and each template alone errs on other images."""
    gen = torch.Generator().manual_seed(19)
    T, K, d, B = 3, 10, 16, 60
    centres = torch.randn(K, d, generator=gen, dtype=torch.float64)
    spread = torch.linspace(0.3, 1.6, K, dtype=torch.float64)[torch.randperm(K, generator=gen)]
    templates = F.normalize(centres + spread[:, None] * torch.randn(T, K, d, generator=gen, dtype=torch.float64),
                            dim=-1)
    labels = torch.arange(B) % K
    images = F.normalize(centres[labels] + 1.2 * torch.randn(B, d, generator=gen, dtype=torch.float64), dim=-1)
    return images, templates


def _ensemble_predict(images, templates):
    """The reference: CLIP's prompt ensembling (as `CLIP.class_embeddings` + `zero_shot_classify`)."""
    classes = F.normalize(templates.mean(0), dim=-1)  # [K, d]
    return (images @ classes.t()).argmax(1)


def _zero_shot_mistakes(images, templates):
    mean = templates.mean(0)
    sim = images @ F.normalize(mean, dim=-1).t()  # [B, K]
    out = [
        ((images @ mean.t()).argmax(1),
         "you did not re-normalise after averaging the templates (or you averaged the similarities, which is the "
         "same): the mean of unit vectors is shorter than 1, more so where the templates disagree. "
         "F.normalize(template_embs.mean(0), dim=-1) before the cosine similarity."),
        ((images @ F.normalize(templates.mean(1), dim=-1).t()).argmax(1),
         "you averaged over the classes (dim 1) instead of the templates (dim 0): template_embs is [T, K, d]."),
        ((torch.einsum("bd,tkd->btk", images, templates).amax(1)).argmax(1),
         "you took each class's best template per image (max over templates); prompt ensembling averages the "
         "embeddings of all templates."),
    ]
    for scale in (1.0, 1 / INIT_TEMPERATURE, MAX_LOGIT_SCALE):
        out.append(((scale * sim).softmax(0).argmax(1),
                    "softmax over the images (dim 0): each image's prediction then depends on the other images in "
                    "the batch. A softmax, if you use one, goes over the classes (dim −1); argmax alone is enough."))
    for t in range(templates.shape[0]):
        out.append(((images @ templates[t].t()).argmax(1),
                    f"those are the predictions of template {t} alone: average the embeddings of all "
                    f"{templates.shape[0]} templates (dim 0 of template_embs), then re-normalise."))
    return out


def _as_predictions(value, B: int, K: int) -> torch.Tensor:
    if value is None:
        raise ExerciseError("`zero_shot_predict` returned None: did you forget to return the predictions?")
    try:
        pred = torch.as_tensor(value).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ExerciseError(f"`zero_shot_predict` should return a tensor of class indices, got "
                            f"{type(value).__name__}") from None
    if pred.shape == (B, K):
        raise ExerciseError(f"you return scores of shape [B, K] = {tuple(pred.shape)}; return the predicted class "
                            "per image: the argmax over the classes (dim 1).")
    if pred.shape == (K,):
        raise ExerciseError(f"you return {K} values, one per class: that is an argmax over the images. Take "
                            f"the argmax over the classes, one prediction per image (shape [{B}]).")
    if pred.shape != (B,):
        raise ExerciseError(f"`zero_shot_predict` should return one class index per image, shape [{B}], got "
                            f"{tuple(pred.shape)}.")
    if pred.is_floating_point():
        if not torch.equal(pred, pred.round()):
            raise ExerciseError("the predictions should be class indices (integers from argmax), not scores.")
        pred = pred.long()
    return pred.long()


def check_zero_shot(fn) -> None:
    """`fn(image_emb, template_embs)` (unit-length image embeddings [B, d]; class embeddings per template
    [T, K, d], each unit length) must return the predicted class per image ([B] integers): the argmax over
    classes of cos(image, normalise(mean over templates))."""
    images, templates = _zero_shot_inputs()
    B, K = images.shape[0], templates.shape[1]
    ref = _ensemble_predict(images, templates)
    got = _as_predictions(call_answer(fn, "zero_shot_predict", images.clone(), templates.clone()), B, K)
    if not torch.equal(got, ref):
        for wrong, message in _zero_shot_mistakes(images, templates):
            if torch.equal(got, wrong):
                raise ExerciseError(message)
        alone = torch.cat([_as_predictions(call_answer(fn, "zero_shot_predict", images[i:i + 1].clone(),
                                                       templates.clone()), 1, K) for i in range(4)])
        if not torch.equal(alone, got[:4]):
            raise ExerciseError("an image's prediction changes with the other images in the batch (a softmax "
                                "or a normalisation over the images, dim 0?): classify each image on its own, "
                                "argmax over the classes.")
        wrong = int((got != ref).sum())
        raise ExerciseError(f"{wrong} of {B} predictions differ from prompt ensembling's. Average the templates' "
                            f"embeddings (dim 0), re-normalise each class embedding, take the cosine similarity "
                            f"with every image and the argmax over the classes.")
    # the same on a second batch, in float32 as the model's embeddings are
    more = F.normalize(images.flip(0)[: B // 2] + 0.3 * images[: B // 2], dim=-1).float()
    got2 = _as_predictions(call_answer(fn, "zero_shot_predict", more.clone(), templates.float()), B // 2, K)
    if not torch.equal(got2, _ensemble_predict(more.double(), templates)):
        raise ExerciseError("right on the first batch, wrong on a second one (float32, 30 images): does your "
                            "function depend on the batch size or on the dtype?")
    passed("average the T templates' embeddings, re-normalise, cosine similarity, argmax over the classes: CLIP's "
           "zero-shot classifier with prompt ensembling (Radford et al. 2021, §3.1.4).")


# -- predict, then run: does the CLIP read an upside-down seven? --------------------------------------------------

UPSIDE_DOWN_CHOICES = {
    "a": "most of them (over 60 %): it knows \"seven\" and it knows \"upside-down\", and the probe says it composes",
    "b": "some of them (20 % to 60 %)",
    "c": "few of them (under 20 %): it reads them as other digits",
}


def commit_upside_down_prediction(prediction) -> str:
    """Before the run: what share of the upside-down test sevens will the zero-shot classifier call "seven"?"""
    return commit_choice(prediction, UPSIDE_DOWN_CHOICES)


def upside_down_truth(share_read_as_seven: float) -> str:
    """The choice that the measured share of upside-down sevens read as "seven" falls in."""
    return "a" if share_read_as_seven > 0.6 else "b" if share_read_as_seven >= 0.2 else "c"


def reveal_upside_down(prediction, share_read_as_seven: float, most_common: str = "") -> bool:
    """After the run: the measured share decides; the reasoning is printed either way."""
    why = ("the zero-shot classifier asks \"which of 'a zero' … 'a nine' is nearest?\", and a seven turned by 180° "
           "has the shape of no upright seven: its bar sits at the bottom, its stem leans up from it. \"seven\" was "
           "only ever said of upright sevens, so the image encoder never learned to map this "
           "shape near it; the nearest digit name is the one whose upright or rotated shapes it resembles. The "
           "probe succeeded because it asked an easier question: *given* a seven, upright or upside down? That "
           "needs only the orientation, which the encoder learned from the other nine digits. Composition works "
           "when the transformation keeps the shape that the word names, not when it makes a new one.")
    measured = f"measured: {share_read_as_seven:.0%} read as \"seven\""
    if most_common:
        measured += f", most often as \"{most_common}\""
    return reveal_choice(prediction, upside_down_truth(share_read_as_seven), UPSIDE_DOWN_CHOICES, why,
                         measured=measured)
