"""The checks of notebook 05 pass the reference solutions and reject typical mistakes."""

import pytest
import torch

from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb05

# tiny tensors: one thread is fastest, and the machine's cores are shared
pytestmark = pytest.mark.usefixtures("one_thread")


# -- exercise 1: the guided ε ----------------------------------------------------------------------------------

def guided_eps(eps_cond, eps_uncond, w):
    return (1 + w) * eps_cond - w * eps_uncond


def test_guided_eps_reference_passes(capsys):
    nb05.check_guided_eps(guided_eps)
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
        nb05.check_guided_eps(wrong)


def test_guided_eps_not_implemented():
    def todo(c, u, w):
        raise NotImplementedError()

    with pytest.raises(ExerciseError, match="NotImplementedError"):
        nb05.check_guided_eps(todo)


# -- exercise 2: label dropout ---------------------------------------------------------------------------------

def drop_labels(y, p, num_classes, generator=None):
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


def test_drop_labels_reference_passes(capsys):
    nb05.check_drop_labels(drop_labels)
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
        nb05.check_drop_labels(wrong)


def test_drop_labels_not_answered():
    def todo(y, p, num_classes, generator=None):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb05.check_drop_labels(todo)


# -- exercise 3: the conditional training loss -----------------------------------------------------------------------

def cfg_loss(model, diffusion, x0, y, p_uncond, generator=None):
    y_tilde = drop_labels(y, p_uncond, model.num_classes, generator)
    return diffusion.training_losses(model, x0, y=y_tilde, generator=generator)["loss"].mean()


def test_cfg_loss_reference_passes(capsys):
    nb05.check_cfg_loss(cfg_loss)
    assert "Correct" in capsys.readouterr().out


def _loss_with(labels_fn, reduce="mean", t_fn=None, weighted=True, clean=False):
    """A cfg_loss with one thing changed: how labels are dropped, the reduction, t, the weighting, the input."""
    def fn(model, diffusion, x0, y, p, generator=None):
        y_tilde = labels_fn(y, p, model.num_classes, generator)
        t = t_fn(len(x0), generator) if t_fn else diffusion.sample_timesteps(len(x0), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        if clean:
            loss = ((model(x0, t, y_tilde) - noise) ** 2).mean(1)
        elif weighted:
            loss = diffusion.training_losses(model, x0, t=t, noise=noise, y=y_tilde)["loss"]
        else:
            loss = ((model(diffusion.q_sample(x0, t, noise), t, y_tilde) - noise) ** 2).mean(1)
        return loss.sum() if reduce == "sum" else loss.mean() if reduce == "mean" else loss
    return fn


def _whole_batch(y, p, num_classes, generator=None):
    drop = bool(torch.rand((), generator=generator) < 0.5)   # all or nothing
    return torch.full_like(y, num_classes) if drop else y


def _fixed_p(y, p, num_classes, generator=None):
    return drop_labels(y, 0.1, num_classes, generator)


def _no_dropout(y, p, num_classes, generator=None):
    return y


def _twice(model, diffusion, x0, y, p, generator=None):
    y_tilde = drop_labels(y, p, model.num_classes, generator)
    out = diffusion.training_losses(model, x0, y=y_tilde, generator=generator)["loss"].mean()
    return out + 0 * model(x0, torch.zeros(len(x0), dtype=torch.long), y).sum()


def _global_rng(model, diffusion, x0, y, p, generator=None):
    return cfg_loss(model, diffusion, x0, y, p, None)


def _in_place(model, diffusion, x0, y, p, generator=None):
    drop = torch.rand(y.shape, generator=generator) < p
    y[drop] = model.num_classes
    return diffusion.training_losses(model, x0, y=y, generator=generator)["loss"].mean()


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_loss_with(_to_zero), "null class 10"),
        (_loss_with(_to_last_digit), "last real class"),
        (_loss_with(_inverted), "wrong way round"),
        (_loss_with(_whole_batch), "whole batch"),
        (_loss_with(_fixed_p), "not a fixed 0.1"),
        (_loss_with(_no_dropout), "no label was ever replaced"),
        (_loss_with(drop_labels, reduce="sum"), "sum of the per-example"),
        (_loss_with(drop_labels, reduce=None), "one loss per example"),
        (_loss_with(drop_labels, weighted=False), "unweighted"),
        (_loss_with(drop_labels, clean=True), "clean images"),
        (_loss_with(drop_labels, t_fn=lambda n, g: torch.full((n,), 500)), "same timestep"),
        (lambda *a: cfg_loss(*a).item(), "Python number"),
        (lambda *a: cfg_loss(*a).detach(), "no gradient"),
        (lambda m, d, x, y, p, g=None: d.training_losses(m, x, y=drop_labels(y, p, m.num_classes, g), generator=g),
         "dict"),
        (_twice, "called 2 times"),
        (_global_rng, "generator"),
        (_in_place, "in place"),
    ],
)
def test_cfg_loss_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb05.check_cfg_loss(wrong)


def test_cfg_loss_not_answered():
    def todo(model, diffusion, x0, y, p, generator=None):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb05.check_cfg_loss(todo)


# -- predict, then run: where the label matters -----------------------------------------------------------------------

def test_label_effect_prediction(capsys):
    assert nb05.commit_label_effect_prediction(" (C) ") == "c"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb05.commit_label_effect_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb05.commit_label_effect_prediction("large")
    ts = [10, 100, 300, 500, 700, 900, 999]
    # the truth is where the measured effect is largest, never typed in
    assert nb05.label_effect_truth(ts, [0.0, 0.1, 0.2, 0.3, 0.3, 0.4, 0.6]) == "c"
    assert nb05.label_effect_truth(ts, [0.0, 0.1, 0.2, 0.5, 0.3, 0.2, 0.1]) == "b"
    assert nb05.label_effect_truth(ts, [0.0, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1]) == "a"
    effect = [0.005, 0.04, 0.2, 0.33, 0.34, 0.41, 0.6]
    capsys.readouterr()
    assert nb05.reveal_label_effect("c", ts, effect) is True
    out = capsys.readouterr().out
    assert "Right" in out and "t = 999" in out and "Why:" in out
    assert nb05.reveal_label_effect("a", ts, effect) is False
    out = capsys.readouterr().out
    assert "Not what happened" in out and "nothing left to add" in out
    assert nb05.reveal_label_effect("b", ts, effect) is False
    assert "Not what happened" in capsys.readouterr().out
