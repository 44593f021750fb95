"""The checks of notebook 09 pass the reference solutions and reject typical mistakes."""

import math

import pytest
import torch

from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb09


# -- exercise 1: z = μ + σ ε and the KL --------------------------------------------------------------------------

def reparam_kl(mean, logvar, eps):
    std = torch.exp(0.5 * logvar)
    z = mean + std * eps
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    return z, kl


def _kl(mean, logvar):
    return reparam_kl(mean, logvar, torch.zeros_like(mean))[1]


def test_reparam_kl_reference_passes(capsys):
    nb09.check_reparam_kl(reparam_kl)
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
        nb09.check_reparam_kl(wrong)


def test_reparam_kl_not_answered():
    def todo(m, lv, e):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb09.check_reparam_kl(todo)


# -- exercise 2: SDEdit's timesteps ------------------------------------------------------------------------------

def sdedit(seq, strength):
    n = round(strength * len(seq))
    return seq[len(seq) - n:]


def test_sdedit_reference_passes(capsys):
    nb09.check_sdedit_timesteps(sdedit)
    assert "Correct" in capsys.readouterr().out


def test_sdedit_accepts_a_tensor_answer(capsys):
    nb09.check_sdedit_timesteps(lambda seq, s: torch.tensor(sdedit(seq, s), dtype=torch.long))
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
        nb09.check_sdedit_timesteps(wrong)


# -- exercise 3: the scale factor --------------------------------------------------------------------------------

def test_scale_factor_reference_passes(capsys):
    nb09.check_scale_factor(lambda z: 1 / z.std())
    nb09.check_scale_factor(lambda z: (1 / z.std()).item())
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
        nb09.check_scale_factor(wrong)


# -- predict, then run: latents at the wrong scale -------------------------------------------------------------------

TS = [20, 50, 100, 200, 350, 500, 700, 999]
RIGHT = [0.61, 0.37, 0.22, 0.11, 0.05, 0.02, 0.003, 0.0]


def test_scale_prediction_commit_and_truth():
    assert nb09.commit_scale_prediction("B") == "b"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb09.commit_scale_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb09.commit_scale_prediction("large t")
    # the truth comes from the measured errors: where the excess over the right scale lies
    low_t = [3.76, 3.61, 3.34, 2.67, 1.40, 0.44, 0.05, 0.0]       # 3× too wide, as measured in the notebook
    high_t = [r + e for r, e in zip(RIGHT, [0, 0, 0, 0.01, 0.05, 0.6, 1.2, 1.5])]
    flat = [r + 0.5 for r in RIGHT]
    assert nb09.scale_error_truth(TS, low_t, RIGHT) == "b"
    assert nb09.scale_error_truth(TS, high_t, RIGHT) == "a"
    assert nb09.scale_error_truth(TS, flat, RIGHT) == "c"
    with pytest.raises(ValueError, match="both sides"):
        nb09.scale_error_truth([900, 999], [1, 1], [0, 0])


def test_scale_prediction_reveal(capsys):
    wide = [3.76, 3.61, 3.34, 2.67, 1.40, 0.44, 0.05, 0.0]
    capsys.readouterr()
    assert nb09.reveal_scale_error("b", TS, wide, RIGHT) is True
    out = capsys.readouterr().out
    assert "Right" in out and "3.76" in out and "t = 50" in out and "Why:" in out
    for wrong in ("a", "c"):   # both wrong predictions are said to be wrong, with the reasoning
        assert nb09.reveal_scale_error(wrong, TS, wide, RIGHT) is False
        out = capsys.readouterr().out
        assert "Not what happened" in out and "books it as noise" in out
