"""The checks of notebook 08 pass the reference solutions and reject typical mistakes."""

import math

import pytest
import torch

from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb08


# -- exercise 1: z = μ + σ ε and the KL --------------------------------------------------------------------------

def reparam_kl(mean, logvar, eps):
    std = torch.exp(0.5 * logvar)
    z = mean + std * eps
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    return z, kl


def _kl(mean, logvar):
    return reparam_kl(mean, logvar, torch.zeros_like(mean))[1]


def test_reparam_kl_reference_passes(capsys):
    nb08.check_reparam_kl(reparam_kl)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda m, lv, e: (m + lv * e, _kl(m, lv)), "log σ² as the standard deviation"),
        (lambda m, lv, e: (m + lv.exp() * e, _kl(m, lv)), "variance σ²"),
        (lambda m, lv, e: (m + 0.5 * lv * e, _kl(m, lv)), "log σ, not σ"),
        (lambda m, lv, e: (m, _kl(m, lv)), "the mean μ alone"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], 2 * _kl(m, lv)), "factor ½"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], 0.5 * (m ** 2 + lv.exp() - 1 - lv).mean(dim=(1, 2, 3))),
         "averaged over the latent dimensions"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], 0.5 * (m ** 2 + (0.5 * lv).exp() - 1 - lv).sum(dim=(1, 2, 3))),
         "not σ"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], 0.5 * (m ** 2 + lv.exp() - 1 + lv).sum(dim=(1, 2, 3))),
         "minus sign"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], 0.5 * (m ** 2 + lv.exp() - lv).sum(dim=(1, 2, 3))),
         "forgot the − 1"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], _kl(m, lv).sum()), "summed over the batch"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], _kl(m, lv).mean()), "batch mean"),
        (lambda m, lv, e: (reparam_kl(m, lv, e)[0], 0.5 * (m ** 2 + lv.exp() - 1 - lv)), "shape"),
        (lambda m, lv, e: reparam_kl(m, lv, e)[0], "two things"),
    ],
)
def test_reparam_kl_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb08.check_reparam_kl(wrong)


def test_reparam_kl_not_answered():
    def todo(m, lv, e):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb08.check_reparam_kl(todo)


# -- exercise 2: SDEdit's timesteps ------------------------------------------------------------------------------

def sdedit(seq, strength):
    n = round(strength * len(seq))
    return seq[len(seq) - n:]


def test_sdedit_reference_passes(capsys):
    nb08.check_sdedit_timesteps(sdedit)
    assert "Correct" in capsys.readouterr().out


def test_sdedit_accepts_a_tensor_answer(capsys):
    nb08.check_sdedit_timesteps(lambda seq, s: torch.tensor(sdedit(seq, s), dtype=torch.long))
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda seq, s: seq[-round(s * len(seq)):], "seq\\[-0:\\]"),
        (lambda seq, s: seq[:round(s * len(seq))], "head"),
        (lambda seq, s: seq[len(seq) - int(s * len(seq)):], "rounded down"),
        (lambda seq, s: seq[len(seq) - math.ceil(s * len(seq)):], "rounded up"),
        (lambda seq, s: seq[max(len(seq) - round(s * len(seq)) - 1, 0):], "one step too many"),
        (lambda seq, s: seq[len(seq) - round(s * len(seq)) + 1:] if s > 0 else [], "one step too few"),
        (lambda seq, s: seq[round(s * len(seq)):], "skipped"),
        (lambda seq, s: list(reversed(sdedit(seq, s))), "noisiest first"),
        (lambda seq, s: seq[len(seq) - round(s * len(seq))], "list of timesteps"),
    ],
)
def test_sdedit_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb08.check_sdedit_timesteps(wrong)


# -- exercise 3: the scale factor --------------------------------------------------------------------------------

def test_scale_factor_reference_passes(capsys):
    nb08.check_scale_factor(lambda z: 1 / z.std())
    nb08.check_scale_factor(lambda z: (1 / z.std()).item())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda z: z.std(), "the std itself"),
        (lambda z: 1 / z.var(), "variance"),
        (lambda z: 1 / z.abs().max(), "max"),
        (lambda z: 1 / z.pow(2).mean().sqrt(), "mean"),
        (lambda z: 1 / z.std(dim=(0, 2, 3)), "one number"),
        (lambda z: 0.18215, "expected 1 / std"),
        (lambda z: "0.2x", "a number"),
    ],
)
def test_scale_factor_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb08.check_scale_factor(wrong)
