"""The checks of notebook 04 pass the reference solutions and reject typical mistakes."""

import pytest
import torch

from ddpm_lite.exercises import ExerciseError
from ddpm_lite.exercises import nb04


# -- exercise 1: the guided ε ----------------------------------------------------------------------------------

def guided_eps(eps_cond, eps_uncond, w):
    return (1 + w) * eps_cond - w * eps_uncond


def test_guided_eps_reference_passes(capsys):
    nb04.check_guided_eps(guided_eps)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda c, u, w: u + w * (c - u), "guidance scale"),        # s-form with s = w
        (lambda c, u, w: (1 + w) * u - w * c, "swapped"),             # ε_c and ε_∅ swapped
        (lambda c, u, w: c + w * u, "differs"),                       # made-up formula
        (lambda c, u, w: w * c - (1 - w) * u, "w = 0"),               # wrong at w = 0
        (lambda c, u, w: None, "None"),
    ],
)
def test_guided_eps_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb04.check_guided_eps(wrong)


def test_guided_eps_not_implemented():
    def todo(c, u, w):
        raise NotImplementedError()

    with pytest.raises(ExerciseError, match="NotImplementedError"):
        nb04.check_guided_eps(todo)


# -- exercise 2: label dropout ---------------------------------------------------------------------------------

def drop_labels(y, p, num_classes, generator=None):
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


def test_drop_labels_reference_passes(capsys):
    nb04.check_drop_labels(drop_labels)
    assert "Correct" in capsys.readouterr().out


def _to_zero(y, p, num_classes, generator=None):
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.zeros_like(y), y)


def _to_last_digit(y, p, num_classes, generator=None):
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, num_classes - 1), y)


def _inverted(y, p, num_classes, generator=None):
    drop = torch.rand(y.shape, generator=generator) > p
    return torch.where(drop, torch.full_like(y, num_classes), y)


def _in_place(y, p, num_classes, generator=None):
    drop = torch.rand(y.shape, generator=generator) < p
    y[drop] = num_classes
    return y


def _float(y, p, num_classes, generator=None):
    return drop_labels(y, p, num_classes, generator).float()


def _ignores_generator(y, p, num_classes, generator=None):
    return drop_labels(y, p, num_classes, None)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_to_zero, "null class"),
        (_to_last_digit, "last real class"),
        (_inverted, "wrong way round"),
        (_in_place, "in place"),
        (_float, "integers"),
        (_ignores_generator, "generator"),
    ],
)
def test_drop_labels_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb04.check_drop_labels(wrong)
