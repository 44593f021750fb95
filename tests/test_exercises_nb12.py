"""The checks of notebook 12 pass the reference solutions and reject typical mistakes, each by name."""

from pathlib import Path

import pytest
import torch

from ddpm_lite import metrics
from ddpm_lite.conditioning import TextCondition, call_model
from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb12
from ddpm_lite.pipeline import TextToImage
from ddpm_lite.subjects import load_subject

ROOT = Path(__file__).resolve().parents[1]


def _todo(*args):
    raise NotImplementedError()


# -- exercise 1: the prior-preservation loss ------------------------------------------------------------------------

def term(model, diffusion, x, c, t, noise):
    return diffusion.training_losses(model, x, t=t, noise=noise, y=c)["loss"].mean()


def dreambooth_loss(model, diffusion, x, c, x_pr, c_pr, lam, t, noise, t_pr, noise_pr):
    return term(model, diffusion, x, c, t, noise) + lam * term(model, diffusion, x_pr, c_pr, t_pr, noise_pr)


def test_loss_reference_passes(capsys):
    from ddpm_lite.personalize import prior_preservation_loss

    nb12.check_prior_preservation_loss(dreambooth_loss)
    nb12.check_prior_preservation_loss(prior_preservation_loss)  # the package's own (returns a dict)
    assert capsys.readouterr().out.count("Correct") == 2


def _raw(model, diffusion, x, c, t, noise):
    xt = diffusion.q_sample(x, t, noise)
    return ((call_model(model, xt, t, c) - noise) ** 2).mean()


def _swap(c, like):
    n = len(like)
    return TextCondition(c.context[:1].expand(n, -1, -1), c.mask[:1].expand(n, -1), c.null_context, c.null_mask)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: term(m, d, x, c, t, n) + term(m, d, xp, cp, tp, np_),
         "λ is missing"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: lam * term(m, d, x, c, t, n) + term(m, d, xp, cp, tp, np_),
         "λ multiplies the wrong term"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: term(m, d, x, c, t, n), "prior-preservation term is missing"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: term(m, d, x, _swap(cp, x), t, n)
         + lam * term(m, d, xp, _swap(c, xp), tp, np_), "prompts are swapped"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: term(m, d, x, c, t, n)
         + lam * term(m, d, xp, _swap(c, xp), tp, np_), "class images must be read with the class prompt"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: term(m, d, x, c, t, n)
         + lam * term(m, d, xp[:3], cp[:3], t, n), "reused the subject's t and noise"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: term(m, d, x, c, t, n)
         + lam * term(m, d, xp[:3], cp[:3], t, np_[:3]), "own timesteps t_pr"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: d.training_losses(m, x, t=t, noise=n, y=c)["loss"].sum()
         + lam * d.training_losses(m, xp, t=tp, noise=np_, y=cp)["loss"].sum(), "not the sum"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: _raw(m, d, x, c, t, n) + lam * _raw(m, d, xp, cp, tp, np_),
         "unweighted ε-MSE"),
        (lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: ((call_model(m, x, t, c) - n) ** 2).mean()
         + lam * ((call_model(m, xp, tp, cp) - np_) ** 2).mean(), "clean images"),
    ],
)
def test_loss_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb12.check_prior_preservation_loss(wrong)


def test_loss_shape_and_unanswered():
    with pytest.raises(ExerciseError, match="one number"):
        nb12.check_prior_preservation_loss(
            lambda m, d, x, c, xp, cp, lam, t, n, tp, np_: d.training_losses(m, x, t=t, noise=n, y=c)["loss"])
    with pytest.raises(ExerciseError, match="eq. 2 gives"):
        nb12.check_prior_preservation_loss(lambda *a: dreambooth_loss(*a) * 1.5)
    with pytest.raises(NotAnsweredError):
        nb12.check_prior_preservation_loss(_todo)


# -- exercise 2: the class-image set -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd():
    return TextToImage.from_pretrained(ROOT / "assets" / "checkpoints" / "mnist5k-sd")


@pytest.fixture(scope="module")
def classifier():
    return metrics.load_classifier("mnist5k")


@pytest.fixture(scope="module")
def subject():
    return load_subject(ROOT / "assets" / "subjects" / "hollow-seven")


def class_images(pipe, class_noun, n, generator):
    return pipe.sample_base([f"a {class_noun}"] * n, guidance=3.0, steps=20, generator=generator)


def test_class_images_reference_passes(sd, classifier, subject, capsys):
    images = nb12.check_class_images(class_images, sd, classifier, subject)
    assert images.shape == (8, 1, 28, 28)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda p, cn, n, g: p([f"a {cn}"] * n, steps=20, generator=g), "decoded"),
        (lambda p, cn, n, g: p.sample_base([f"a sks {cn}"] * n, steps=20, generator=g), "does not know the identifier"),
        (lambda p, cn, n, g: p.sample_base([""] * n, steps=20, generator=g), "read as sevens"),
        (lambda p, cn, n, g: p.sample_base(["a one"] * n, steps=20, generator=g), "read as sevens"),
        (lambda p, cn, n, g: p.sample_base([f"a {cn}"], steps=20, generator=g).repeat(n, 1, 1, 1), "are the same"),
        (lambda p, cn, n, g: p.sample_base([f"a {cn}"] * (n - 2), steps=20, generator=g), "asked for n = 8"),
    ],
)
def test_class_images_mistakes_are_named(sd, classifier, subject, wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb12.check_class_images(wrong, sd, classifier, subject)


def test_class_images_that_are_the_subject_are_named(classifier, subject):
    """A pixel-space pipeline stand-in whose "samples" are the subject images: the check names the mistake."""

    class Pixel:
        autoencoder = None
        base_shape = image_shape = (1, 28, 28)

    with pytest.raises(ExerciseError, match="those are the subject images"):
        nb12.check_class_images(lambda p, cn, n, g: subject.repeat(2, 1, 1, 1), Pixel(), classifier, subject)
    with pytest.raises(NotAnsweredError):
        nb12.check_class_images(_todo, Pixel(), classifier, subject)


# -- predict, then run ------------------------------------------------------------------------------------------

def test_drift_prediction_commit_and_reveal(capsys):
    assert nb12.commit_drift_prediction("(C)") == "c"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb12.commit_drift_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb12.commit_drift_prediction("d")
    # the truth comes from the measurement, never typed in
    assert [nb12.drift_truth(a) for a in (1.0, 0.9, 0.5, 0.39, 0.0)] == ["a", "a", "b", "c", "c"]
    capsys.readouterr()
    assert nb12.reveal_drift("c", 0.17) is True
    out = capsys.readouterr().out
    assert "Right" in out and "17%" in out and "Why:" in out
    for wrong in ("a", "b"):  # both wrong predictions are said to be wrong, with the reasoning
        assert nb12.reveal_drift(wrong, 0.17) is False
        out = capsys.readouterr().out
        assert "Not what happened" in out and "weak prior" in out
    assert nb12.reveal_drift("a", 0.95) is True and nb12.reveal_drift("c", 0.95) is False
