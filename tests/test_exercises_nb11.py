"""The checks of notebook 11 pass the reference solutions and reject typical mistakes, each by name."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb11


def _todo(*args):
    raise NotImplementedError()


# -- exercise 1: cross-attention with a padding mask ---------------------------------------------------------------

def cross_attention(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def _scores(q, k, scale=None):
    return q @ k.transpose(-1, -2) / (math.sqrt(q.shape[-1]) if scale is None else scale)


def _m(mask):
    return mask[:, None, None, :]


def _pair(weights, v):
    return weights @ v, weights


def test_cross_attention_reference_passes(capsys):
    from ddpm_lite.transformer import attention

    nb11.check_cross_attention(cross_attention)
    nb11.check_cross_attention(attention)                                   # the package's own
    nb11.check_cross_attention(lambda q, k, v, m: list(cross_attention(q, k, v, m)))
    # the fused kernel computes the same output; its weights from the explicit softmax
    nb11.check_cross_attention(lambda q, k, v, m: (F.scaled_dot_product_attention(q, k, v, attn_mask=_m(m)),
                                                   cross_attention(q, k, v, m)[1]))
    assert capsys.readouterr().out.count("Correct") == 4


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda q, k, v, m: _pair(_scores(q, k, 1.0).masked_fill(~_m(m), -math.inf).softmax(-1), v), "no √d scaling"),
        (lambda q, k, v, m: _pair(_scores(q, k, q.shape[-1]).masked_fill(~_m(m), -math.inf).softmax(-1), v),
         "divided the scores by d"),
        (lambda q, k, v, m: _pair(_scores(q, k, 1 / math.sqrt(q.shape[-1])).masked_fill(~_m(m), -math.inf).softmax(-1),
                                  v), "multiplied the scores by √d"),
        (lambda q, k, v, m: _pair(_scores(q, k).masked_fill(~_m(m), -math.inf).softmax(-2), v), "wrong axis"),
        (lambda q, k, v, m: _pair(_scores(q, k).softmax(-1), v), "mask is ignored"),
        (lambda q, k, v, m: _pair(_scores(q, k).softmax(-1) * _m(m), v), "after\\* the softmax without renormalising"),
        (lambda q, k, v, m: _pair(_scores(q, k).masked_fill(~_m(m), 0.0).softmax(-1), v), "scores to 0"),
        (lambda q, k, v, m: _pair(_scores(q, k).masked_fill(_m(m), -math.inf).softmax(-1), v), "inverted"),
        (lambda q, k, v, m: _pair(_scores(q, k).masked_fill(_m(m), -math.inf).softmax(-1).nan_to_num(0.0), v),
         "inverted"),
        (lambda q, k, v, m: _pair(_scores(q, k).masked_fill(~_m(m), -math.inf).softmax(-1) * math.nan, v), "NaN"),
        (lambda q, k, v, m: _pair(cross_attention(q, k, v, m)[1], k), "with the keys"),
        (lambda q, k, v, m: (cross_attention(q, k, v, m)[0] * 2, cross_attention(q, k, v, m)[1]), "weights are right"),
        (lambda q, k, v, m: cross_attention(q, k, v, m)[0], "only the output"),
        (lambda q, k, v, m: cross_attention(q, k, v, m)[::-1], "output first"),
        (lambda q, k, v, m: (cross_attention(q, k, v, m)[0], cross_attention(q, k, v, m)[1][..., :-1]), "weights should"),
        (lambda q, k, v, m: (cross_attention(q, k, v, m)[0][..., :-1], cross_attention(q, k, v, m)[1]), "output should"),
        (lambda q, k, v, m: (cross_attention(q, k, v, m)[0], cross_attention(q, k, v, m)[1] + 0.01 * ~_m(m)),
         "still get attention"),
        (lambda q, k, v, m: (cross_attention(q, k, v, m)[0], cross_attention(q, k, v, m)[1] * 1.01), "differ"),
        (lambda q, k, v, m: None, "None"),
        (lambda q, k, v, m: (1, 2, 3), "the pair"),
    ],
)
def test_cross_attention_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb11.check_cross_attention(wrong)


def test_cross_attention_not_answered():
    with pytest.raises(NotAnsweredError):
        nb11.check_cross_attention(_todo)


# -- exercise 2: guidance against the empty prompt ----------------------------------------------------------------

def text_guided_eps(model, x_t, t, cond, w):
    eps_c = model(x_t, t, context=cond.context, context_mask=cond.mask)
    null = cond.null()
    eps_u = model(x_t, t, context=null.context, context_mask=null.mask)
    return (1 + w) * eps_c - w * eps_u


def _branches(model, x, t, cond, null_kwargs=None, cond_kwargs=None):
    e_c = model(x, t, **(cond_kwargs or cond.model_kwargs()))
    e_u = model(x, t, **(null_kwargs or cond.null().model_kwargs()))
    return e_c, e_u


def test_text_guidance_reference_passes(capsys):
    from ddpm_lite.conditioning import call_model

    nb11.check_text_guidance(text_guided_eps)
    # one batch of 2B, as the package does it
    def batched(model, x, t, cond, w):
        both = call_model(model, torch.cat([x, x]), torch.cat([t, t]), cond.cat(cond.null()))
        c, u = both.chunk(2)
        return c + w * (c - u)
    nb11.check_text_guidance(batched)
    assert capsys.readouterr().out.count("Correct") == 2


def _form(f, **kw):
    def answer(model, x, t, cond, w):
        e_c, e_u = _branches(model, x, t, cond, **{k: v(cond) for k, v in kw.items()})
        return f(e_c, e_u, w)
    return answer


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_form(lambda c, u, w: u + w * (c - u)), "guidance scale s"),
        (_form(lambda c, u, w: (1 + w) * u - w * c), "branches are swapped"),
        (_form(lambda c, u, w: w * c - (1 + w) * u), "w and 1 \\+ w are swapped"),
        (_form(lambda c, u, w: (1 - w) * c + w * u), "wrong sign"),
        (_form(lambda c, u, w: c), "conditional prediction alone"),
        (_form(lambda c, u, w: (1 + w) * c - w * u,
               null_kwargs=lambda cond: dict(context=torch.zeros_like(cond.context), context_mask=cond.mask)),
         "not a context of zeros"),
        (_form(lambda c, u, w: (1 + w) * c - w * u,
               null_kwargs=lambda cond: dict(context=torch.zeros_like(cond.context))), "not a context of zeros"),
        (_form(lambda c, u, w: (1 + w) * c - w * u, null_kwargs=lambda cond: dict(context=cond.null().context)),
         "without its mask"),
        (_form(lambda c, u, w: (1 + w) * c - w * u,
               null_kwargs=lambda cond: dict(context=cond.null().context, context_mask=cond.mask)), "own mask"),
        (_form(lambda c, u, w: (1 + w) * c - w * u, cond_kwargs=lambda cond: dict(context=cond.context)),
         "prompts' padding mask"),
        (_form(lambda c, u, w: (1 + w) * c - w * u + (0.1 if w == 0 else 0)), "with w = 0"),
        (_form(lambda c, u, w: (1 + w) * c - w * u + 0.01 * w), "differs"),
        (_form(lambda c, u, w: ((1 + w) * c - w * u)[:, :, :4]), "shaped like x_t"),
        (lambda model, x, t, cond, w: None, "None"),
    ],
)
def test_text_guidance_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb11.check_text_guidance(wrong)


def test_text_guidance_not_answered():
    with pytest.raises(NotAnsweredError):
        nb11.check_text_guidance(_todo)


# -- exercise 3: noise-conditioning augmentation ------------------------------------------------------------------

def noise_augment(low, size, aug_level, alphas_cumprod, noise):
    up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    a = alphas_cumprod[aug_level].reshape(-1, 1, 1, 1)
    return a.sqrt() * up + (1 - a).sqrt() * noise


def _aug(coef, mode="bilinear", corners=False, shift=0):
    def answer(low, size, aug_level, alphas_cumprod, noise):
        kw = {} if mode == "nearest" else {"align_corners": corners}
        up = F.interpolate(low, size=(size, size), mode=mode, **kw)
        a = alphas_cumprod[(aug_level + shift).clamp(0, len(alphas_cumprod) - 1)].reshape(-1, 1, 1, 1)
        return coef(up, a, noise)
    return answer


def test_noise_augmentation_reference_passes(capsys):
    from ddpm_lite.diffusion import GaussianDiffusion
    from ddpm_lite.text_to_image import upsample

    nb11.check_noise_augmentation(noise_augment)

    def with_package(low, size, aug_level, alphas_cumprod, noise):
        return GaussianDiffusion("linear", timesteps=len(alphas_cumprod)).q_sample(upsample(low, (size, size)),
                                                                                    aug_level, noise)
    nb11.check_noise_augmentation(with_package)
    assert capsys.readouterr().out.count("Correct") == 2


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_aug(lambda up, a, n: a * up + (1 - a) * n), "without the square roots"),
        (_aug(lambda up, a, n: a.sqrt() * up + (1 - a) * n), "noise's coefficient"),
        (_aug(lambda up, a, n: a * up + (1 - a).sqrt() * n), "image's coefficient"),
        (_aug(lambda up, a, n: up + (1 - a).sqrt() * n), "scaled by √ᾱ_s too"),
        (_aug(lambda up, a, n: (1 - a).sqrt() * up + a.sqrt() * n), "coefficients are swapped"),
        (_aug(lambda up, a, n: a.sqrt() * up + (1 - a).sqrt() * n, mode="nearest"), "not nearest"),
        (_aug(lambda up, a, n: a.sqrt() * up + (1 - a).sqrt() * n, corners=True), "align_corners=False"),
        (_aug(lambda up, a, n: a.sqrt() * up + (1 - a).sqrt() * n, shift=-1), "wrong timestep"),
        (_aug(lambda up, a, n: a.sqrt() * up + (1 - a).sqrt() * n, shift=1), "wrong timestep"),
        (_aug(lambda up, a, n: up + 0 * a), "no noise"),
        (lambda low, size, s, ac, n: low, "low resolution"),
        (lambda low, size, s, ac, n: noise_augment(low, size, s, ac, n)[:, :, :-1], "should have shape"),
        (lambda low, size, s, ac, n: noise_augment(low, size, s[[0, 0, 0]], ac, n), "some images only"),
        (lambda low, size, s, ac, n: noise_augment(low, size, s, ac, n) * 1.1, "differ"),
        (lambda low, size, s, ac, n: None, "None"),
    ],
)
def test_noise_augmentation_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb11.check_noise_augmentation(wrong)


def test_noise_augmentation_not_answered():
    with pytest.raises(NotAnsweredError):
        nb11.check_noise_augmentation(_todo)


# -- predict, then run: a held-out combination ----------------------------------------------------------------------

def test_held_out_prediction_commit_and_reveal(capsys):
    assert nb11.commit_held_out_prediction("(b)") == "b"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb11.commit_held_out_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb11.commit_held_out_prediction("upside-down")
    # the truth comes from the two measurements, never typed in
    assert nb11.held_out_truth(digit=0.0, upside_down=1.0) == "b"
    assert nb11.held_out_truth(digit=0.8, upside_down=0.9) == "a"
    assert nb11.held_out_truth(digit=0.5, upside_down=0.5) == "a"
    assert nb11.held_out_truth(digit=0.0, upside_down=0.1) == "c"
    assert nb11.held_out_truth(digit=0.9, upside_down=0.2) == "c"
    capsys.readouterr()
    assert nb11.reveal_held_out("b", 0.0, 1.0) is True
    out = capsys.readouterr().out
    assert "Right" in out and "100% judged upside-down" in out and "Why:" in out
    for wrong in ("a", "c"):   # both wrong predictions are said to be wrong, with the reasoning
        assert nb11.reveal_held_out(wrong, 0.0, 1.0) is False
        out = capsys.readouterr().out
        assert "Not what happened" in out and "new shape" in out
