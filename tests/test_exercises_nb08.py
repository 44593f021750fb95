"""The checks of notebook 08 pass the reference solutions and reject typical mistakes."""

import pytest
import torch

from ddpm_lite.diffusion import dynamic_threshold, null_labels
from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb08


# -- exercise 1: dynamic thresholding --------------------------------------------------------------------------

def dynamic_threshold(x0, percentile=0.995):
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=1)
    s = s.clamp(min=1.0).reshape(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s


def test_dynamic_threshold_reference_passes(capsys):
    nb08.check_dynamic_threshold(dynamic_threshold)
    assert "Correct" in capsys.readouterr().out


def _no_floor(x0, p=0.995):
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), p, dim=1).reshape(-1, 1, 1, 1)
    return x0.clamp(-s, s) / s


def _whole_batch(x0, p=0.995):
    s = torch.quantile(x0.abs().flatten(), p).clamp(min=1.0)
    return x0.clamp(-s, s) / s


def _signed(x0, p=0.995):
    s = torch.quantile(x0.reshape(x0.shape[0], -1), p, dim=1).clamp(min=1.0).reshape(-1, 1, 1, 1)
    return x0.clamp(-s, s) / s


def _no_divide(x0, p=0.995):
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), p, dim=1).clamp(min=1.0).reshape(-1, 1, 1, 1)
    return x0.clamp(-s, s)


def _static(x0, p=0.995):
    return x0.clamp(-1, 1)


def _in_place(x0, p=0.995):
    out = dynamic_threshold(x0, p)
    x0.copy_(out)
    return x0


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_no_floor, "at least 1"),
        (_whole_batch, "per sample"),
        (_signed, r"\|x0\|"),
        (_no_divide, "divide by s"),
        (_static, "at least 1|static"),
        (_in_place, "in place"),
    ],
)
def test_dynamic_threshold_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb08.check_dynamic_threshold(wrong)


# -- exercise 2: guidance scale -> weight ----------------------------------------------------------------------

def test_scale_to_w_reference_passes(capsys):
    nb08.check_scale_to_w(lambda s: s - 1)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [lambda s: s, lambda s: s + 1, lambda s: 1 / s, lambda s: "s - 1"])
def test_scale_to_w_rejects_mistakes(wrong):
    with pytest.raises(ExerciseError):
        nb08.check_scale_to_w(wrong)


# -- exercise 3: saturated fraction ----------------------------------------------------------------------------

def saturated_fraction(x, tol=1e-3):
    return (x.abs() >= 1 - tol).float().flatten(1).mean(dim=1)


def test_saturated_fraction_reference_passes(capsys):
    nb08.check_saturated_fraction(saturated_fraction)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x, tol=1e-3: (x.abs() >= 1 - tol).float().mean(), "per sample"),
        (lambda x, tol=1e-3: (x >= 1 - tol).float().flatten(1).mean(dim=1), "both ends"),
        (lambda x, tol=1e-3: (x.abs() >= 1 - tol).float().flatten(1).sum(dim=1), "differ"),
    ],
)
def test_saturated_fraction_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb08.check_saturated_fraction(wrong)


@pytest.mark.parametrize(
    "wrong, message",
    [(lambda s: s, "s itself"), (lambda s: s + 1, "wrong way"), (lambda s: 1 / s, "not 1/s")],
)
def test_scale_to_w_names_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb08.check_scale_to_w(wrong)


def test_scale_to_w_unanswered():
    def todo(s):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb08.check_scale_to_w(todo)


# -- exercise 4: the guided, thresholded denoiser ----------------------------------------------------------------

def guided_predictions(model, diffusion, x_t, t, y, w, threshold=None, percentile=0.95, *, combine="cfg",
                       x0_form="right", thresholding="right"):
    eps_c = model(x_t, t, y)
    null = torch.zeros_like(y) if combine == "class0" else null_labels(model, y)
    eps_u = model(x_t, t, null)
    eps = {"cfg": (1 + w) * eps_c - w * eps_u, "class0": (1 + w) * eps_c - w * eps_u,
           "scale": eps_u + w * (eps_c - eps_u), "swapped": (1 + w) * eps_u - w * eps_c, "cond": eps_c}[combine]
    ab = diffusion.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0 = {"right": (x_t - (1 - ab).sqrt() * eps) / ab.sqrt(), "no_sqrt": (x_t - (1 - ab) * eps) / ab,
          "no_divide": x_t - (1 - ab).sqrt() * eps}[x0_form]
    if threshold is None or thresholding == "none":
        return x0, eps
    if threshold == "static" or thresholding == "static_always":
        x0_new = x0.clamp(-1, 1)
    else:
        x0_new = dynamic_threshold(x0, percentile)
    if thresholding == "no_recompute":
        return x0_new, eps
    return x0_new, (x_t - ab.sqrt() * x0_new) / (1 - ab).sqrt()


def test_guided_predictions_reference_passes(capsys):
    nb08.check_guided_predictions(guided_predictions)
    # the package's own, called the same way
    nb08.check_guided_predictions(lambda m, d, x, t, y, w, th, p: d.model_predictions(m, x, t, y, w, th, p))
    assert capsys.readouterr().out.count("Correct") == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(combine="scale"), "guidance scale s"),
        (dict(combine="swapped"), "branches are swapped"),
        (dict(combine="class0"), "not class 0"),
        (dict(combine="cond"), "no guidance"),
        (dict(x0_form="no_sqrt"), "without the square roots"),
        (dict(x0_form="no_divide"), "forgot to divide"),
        (dict(thresholding="none"), "threshold is not applied"),
        (dict(thresholding="static_always"), "not static clipping"),
        (dict(thresholding="no_recompute"), "recompute ε̂"),
    ],
)
def test_guided_predictions_mistakes_are_named(kwargs, message):
    def wrong(model, diffusion, x_t, t, y, w, threshold, percentile):
        return guided_predictions(model, diffusion, x_t, t, y, w, threshold, percentile, **kwargs)

    with pytest.raises(ExerciseError, match=message):
        nb08.check_guided_predictions(wrong)


def test_guided_predictions_shape_and_unanswered():
    def todo(*args):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb08.check_guided_predictions(todo)
    with pytest.raises(ExerciseError, match="pair"):
        nb08.check_guided_predictions(lambda m, d, x, t, y, w, th, p: guided_predictions(m, d, x, t, y, w, th, p)[0])
    with pytest.raises(ExerciseError, match="differs"):
        nb08.check_guided_predictions(lambda m, d, x, t, y, w, th, p: tuple(
            v * 1.01 for v in guided_predictions(m, d, x, t, y, w, th, p)))


# -- predict, then run: diversity under guidance -------------------------------------------------------------------

def test_diversity_prediction_commit_and_reveal(capsys):
    assert nb08.commit_diversity_prediction(" (C) ") == "c"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb08.commit_diversity_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb08.commit_diversity_prediction("d")
    # the truth comes from the two measured diversities
    assert [nb08.diversity_truth(1.0, hi) for hi in (1.5, 1.2, 1.0, 0.8, 0.79, 0.3)] == ["a", "b", "b", "b", "c", "c"]
    capsys.readouterr()
    assert nb08.reveal_diversity("c", 0.87, 0.60) is True
    out = capsys.readouterr().out
    assert "Right" in out and "0.87" in out and "0.60" in out and "Why:" in out
    for wrong in ("a", "b"):
        assert nb08.reveal_diversity(wrong, 0.87, 0.60) is False
        out = capsys.readouterr().out
        assert "Not what happened" in out and "implicit classifier" in out
    assert nb08.reveal_diversity("b", 0.9, 0.95) is True
