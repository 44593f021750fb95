"""The checks of notebook 07 pass the reference solutions and reject typical mistakes."""

import pytest
import torch

from ddpm_lite.exercises import ExerciseError
from ddpm_lite.exercises import nb07


# -- exercise 1: dynamic thresholding --------------------------------------------------------------------------

def dynamic_threshold(x0, percentile=0.995):
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=1)
    s = s.clamp(min=1.0).reshape(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s


def test_dynamic_threshold_reference_passes(capsys):
    nb07.check_dynamic_threshold(dynamic_threshold)
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
        nb07.check_dynamic_threshold(wrong)


# -- exercise 2: guidance scale -> weight ----------------------------------------------------------------------

def test_scale_to_w_reference_passes(capsys):
    nb07.check_scale_to_w(lambda s: s - 1)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [lambda s: s, lambda s: s + 1, lambda s: 1 / s, lambda s: "s - 1"])
def test_scale_to_w_rejects_mistakes(wrong):
    with pytest.raises(ExerciseError):
        nb07.check_scale_to_w(wrong)


# -- exercise 3: saturated fraction ----------------------------------------------------------------------------

def saturated_fraction(x, tol=1e-3):
    return (x.abs() >= 1 - tol).float().flatten(1).mean(dim=1)


def test_saturated_fraction_reference_passes(capsys):
    nb07.check_saturated_fraction(saturated_fraction)
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
        nb07.check_saturated_fraction(wrong)
