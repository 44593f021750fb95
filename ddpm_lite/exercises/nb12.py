"""Checks for notebook 12, "DreamBooth: personalising the text-to-image model".

Exercises:
    1. `check_prior_preservation_loss(fn)`: DreamBooth's loss (Ruiz et al. 2023, eq. 2),
       fn(model, diffusion, x, c, x_pr, c_pr, lam, t, noise, t_pr, noise_pr) -> a scalar: the diffusion loss of
       the subject images x under the instance prompt c (at timesteps t with noise `noise`) plus λ times the
       diffusion loss of the class images x_pr under the class prompt c_pr (at t_pr with noise_pr), each the batch
       mean of `diffusion.training_losses(...)["loss"]`; compared with `personalize.prior_preservation_loss`,
       which the notebook's fine-tuning then runs with the learner's function.
    2. `check_class_images(fn, pipe)`: the prior-preservation set, fn(pipe, class_noun, n, generator) -> n samples
       of the *frozen* model for the class prompt "a <class>", kept in the space the model denoises (4×7×7
       latents for mini Stable Diffusion): checked by shape, by decoding and classifying them (they must be
       the class, and varied), and against the typical mistakes.
    Predict, then run: `DRIFT_CHOICES`, `commit_drift_prediction(p)` before the fine-tuning without prior
       preservation, `reveal_drift(p, accuracy)` after it: what share of "a seven" samples stay sevens?

Every reference is computed by the package at check time. Each planted mistake (λ left out or on the wrong term,
prompts swapped, the class images noised with the subject's noise or timesteps, the sum over the batch instead
of the mean, the unweighted ε-MSE, the model fed clean images, the prior term alone; decoded images, the
instance prompt, the empty prompt, the subject images themselves, one image repeated) gets a message naming it.
"""

from __future__ import annotations

import torch

from ..conditioning import TextCondition, call_model
from ..diffusion import GaussianDiffusion
from ..personalize import class_prompt, prior_preservation_loss
from . import ExerciseError, as_tensor, call_answer, commit_choice, passed, reveal_choice, small_text_unet

__all__ = ["check_prior_preservation_loss", "check_class_images", "DRIFT_CHOICES", "commit_drift_prediction",
           "drift_truth", "reveal_drift"]


# -- exercise 1: the prior-preservation loss ------------------------------------------------------------------------

def _loss_setup():
    """A small text-conditioned UNet (random, perturbed weights so that the prompt matters), min-SNR-5 like the
    shipped model, two prompts' TextConditions, subject and class batches of different sizes, their t and noise."""
    model, g = small_text_unet(21)
    diffusion = GaussianDiffusion("linear", timesteps=1000, min_snr_gamma=5.0)
    L = 4

    def cond(n, seed):
        gg = torch.Generator().manual_seed(seed)
        ctx = torch.randn(1, L, 6, generator=gg, dtype=torch.float64).expand(n, -1, -1).clone()
        mask = (torch.arange(L) < 3)[None].expand(n, -1).clone()
        return TextCondition(ctx, mask, torch.zeros(L, 6, dtype=torch.float64), torch.arange(L) < 2)

    x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    x_pr = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    t, t_pr = torch.tensor([3, 250, 800]), torch.tensor([40, 500, 999, 120])
    noise = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    noise_pr = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    return model, diffusion, x, cond(3, 1), x_pr, cond(4, 2), t, noise, t_pr, noise_pr


def _term(model, diffusion, x, c, t, noise, reduce="mean", weighted=True, clean=False):
    if clean:
        out = call_model(model, x, t, c)
        loss = ((out - noise) ** 2).flatten(1).mean(1)
    elif weighted:
        loss = diffusion.training_losses(model, x, t=t, noise=noise, y=c)["loss"]
    else:
        xt = diffusion.q_sample(x, t, noise)
        loss = ((call_model(model, xt, t, c) - noise) ** 2).flatten(1).mean(1)
    return loss.sum() if reduce == "sum" else loss.mean()


def _loss_mistakes(model, diffusion, x, c, x_pr, c_pr, t, noise, t_pr, noise_pr, lam):
    """[(wrong value, message)] for the typical mistakes."""
    with torch.no_grad():
        inst = _term(model, diffusion, x, c, t, noise)
        prior = _term(model, diffusion, x_pr, c_pr, t_pr, noise_pr)
        swapped_i = _term(model, diffusion, x, c_pr[:3], t, noise)
        swapped_p = _term(model, diffusion, x_pr, TextCondition(c.context[:1].expand(4, -1, -1), c.mask[:1].expand(4, -1),
                                                               c.null_context, c.null_mask), t_pr, noise_pr)
        shared = _term(model, diffusion, x_pr[:3], c_pr[:3], t, noise)
        shared_t = _term(model, diffusion, x_pr[:3], c_pr[:3], t, noise_pr[:3])
        shared_n = _term(model, diffusion, x_pr[:3], c_pr[:3], t_pr[:3], noise)
        sum_i = _term(model, diffusion, x, c, t, noise, "sum")
        sum_p = _term(model, diffusion, x_pr, c_pr, t_pr, noise_pr, "sum")
        raw_i = _term(model, diffusion, x, c, t, noise, weighted=False)
        raw_p = _term(model, diffusion, x_pr, c_pr, t_pr, noise_pr, weighted=False)
        clean_i = _term(model, diffusion, x, c, t, noise, clean=True)
        clean_p = _term(model, diffusion, x_pr, c_pr, t_pr, noise_pr, clean=True)
    return [
        (inst + prior, "λ is missing: the class term is multiplied by lam (λ), L = L_subject + λ · L_prior."),
        (lam * inst + prior, "λ multiplies the wrong term: it weighs the *prior* (class) term, "
                             "L = L_subject + λ · L_prior."),
        (inst, "the prior-preservation term is missing: add λ times the diffusion loss of the class images x_pr "
               "under the class prompt c_pr."),
        (lam * prior, "the subject term is missing: the loss is L_subject + λ · L_prior."),
        (swapped_i + lam * swapped_p, "the prompts are swapped: the subject images go with the instance prompt c "
                                      "(\"a [V] seven\"), the class images with the class prompt c_pr (\"a seven\")."),
        (inst + lam * swapped_p, "the class images must be read with the class prompt c_pr, not the instance "
                                 "prompt c: that is what keeps \"a seven\" meaning an ordinary seven."),
        (swapped_i + lam * prior, "the subject images must be read with the instance prompt c (\"a [V] seven\"): "
                                  "with the class prompt, the subject overwrites the class."),
        (inst + lam * shared, "the class images have their own timesteps t_pr and noise noise_pr (eq. 2's t' and "
                              "ε'): you reused the subject's t and noise."),
        (inst + lam * shared_t, "the class term uses its own timesteps t_pr, not the subject's t."),
        (inst + lam * shared_n, "the class term uses its own noise noise_pr, not the subject's noise."),
        (sum_i + lam * sum_p, "each term is the *mean* over its batch (…[\"loss\"].mean()), not the sum: with "
                              "a sum, the step size would depend on the batch sizes."),
        (raw_i + lam * raw_p, "that is the unweighted ε-MSE. The shipped model trains with min-SNR-γ weights "
                              "(w_t of eq. 2): use diffusion.training_losses(model, x, t=t, noise=noise, y=c)"
                              "[\"loss\"].mean(), which applies them."),
        (clean_i + lam * clean_p, "the model was given the clean images: it denoises x_t = q_sample(x, t, noise), "
                                  "which diffusion.training_losses forms for you."),
    ]


def check_prior_preservation_loss(fn) -> None:
    """`fn(model, diffusion, x, c, x_pr, c_pr, lam, t, noise, t_pr, noise_pr)` must return a scalar tensor:
    mean training loss of (x, c) at (t, noise) + lam × mean training loss of (x_pr, c_pr) at (t_pr, noise_pr)."""
    model, diffusion, x, c, x_pr, c_pr, t, noise, t_pr, noise_pr = _loss_setup()
    for lam in (1.0, 0.35):
        with torch.no_grad():
            got = call_answer(fn, "dreambooth_loss", model, diffusion, x.clone(), c, x_pr.clone(), c_pr, lam,
                              t.clone(), noise.clone(), t_pr.clone(), noise_pr.clone())
            if isinstance(got, dict) and "loss" in got:
                got = got["loss"]
            got = as_tensor(got, "dreambooth_loss")
            ref = prior_preservation_loss(model, diffusion, x, c, x_pr, c_pr, lam, t, noise, t_pr,
                                          noise_pr)["loss"].double()
        if got.numel() != 1:
            raise ExerciseError(f"dreambooth_loss should return one number (a scalar tensor), got shape "
                                f"{list(got.shape)}: average each term over its batch.")
        got = got.reshape(())
        if torch.isclose(got, ref, rtol=1e-6, atol=1e-10):
            continue
        for wrong, message in _loss_mistakes(model, diffusion, x, c, x_pr, c_pr, t, noise, t_pr, noise_pr, lam):
            if torch.isclose(got, wrong.double(), rtol=1e-6, atol=1e-10):
                raise ExerciseError(message)
        raise ExerciseError(f"with λ = {lam} your loss is {got.item():.6g}, eq. 2 gives {ref.item():.6g}.")
    passed("L = mean training loss of the subject images under \"a [V] <class>\" + λ · mean training loss of the "
           "class images under \"a <class>\", each with its own t and ε: DreamBooth's eq. 2 "
           "(personalize.prior_preservation_loss). The fine-tuning below runs with your function.")


# -- exercise 2: the class-image set -------------------------------------------------------------------------------

def check_class_images(fn, pipe, classifier, subject=None, class_noun: str = "seven", label: int = 7,
                       n: int = 8) -> torch.Tensor:
    """`fn(pipe, class_noun, n, generator)` must return n samples of the frozen `pipe` for "a <class_noun>" in
    the space its model denoises ([n, *pipe.base_shape]). Returns them (decoded) when right."""
    from .. import metrics
    from ..latent import decode_latents

    gen = torch.Generator().manual_seed(11)
    try:
        got = fn(pipe, class_noun, n, gen)
    except NotImplementedError:
        from . import NOT_ANSWERED, NotAnsweredError

        raise NotAnsweredError(NOT_ANSWERED) from None
    except ValueError as err:
        if "unknown word" in str(err):
            raise ExerciseError(f"the frozen model does not know the identifier ({err}): the class images come "
                                f"from the class prompt {class_prompt(class_noun)!r} alone.") from None
        raise ExerciseError(f"`class_images` raised ValueError: {err}") from err
    except Exception as err:
        raise ExerciseError(f"`class_images` raised {type(err).__name__}: {err}") from err
    got = as_tensor(got, "class_images").float()
    base, image = tuple(pipe.base_shape), tuple(pipe.image_shape)
    if tuple(got.shape[1:]) == image and base != image:
        raise ExerciseError(f"you returned decoded {list(image)} images: keep the samples in the space the model "
                            f"denoises ({list(base)}, what pipe.sample_base returns); the loss compares the "
                            f"model's predictions there, and decoding then re-encoding only loses detail.")
    if got.shape[0] != n:
        raise ExerciseError(f"asked for n = {n} class images, got {got.shape[0]}.")
    if tuple(got.shape[1:]) != base:
        raise ExerciseError(f"each class image should have the model's shape {list(base)}, got "
                            f"{list(got.shape[1:])}.")
    if not torch.isfinite(got).all():
        raise ExerciseError("NaN or inf in your class images.")
    if (got - got[:1]).abs().max() < 1e-6:
        raise ExerciseError("all your class images are the same: draw them as one batch of n prompts (or keep "
                            "one generator running); the class set should show the class's variety.")
    images = decode_latents(pipe.autoencoder, got) if pipe.autoencoder is not None else got
    if subject is not None:
        d = torch.cdist(images.flatten(1), subject.flatten(1)).min(1).values
        if (d < 1e-3).any():
            raise ExerciseError("those are the subject images: the class images are new samples of the *frozen* "
                                "model for the class prompt, ordinary members of the class.")
    acc = metrics.sample_accuracy(images, torch.full((n,), label), classifier)
    if acc < 0.75:
        raise ExerciseError(f"only {acc:.0%} of your class images are read as {class_noun}s: sample from the "
                            f"class prompt {class_prompt(class_noun)!r} with guidance (w = 3), not the empty "
                            f"prompt or another one.")
    passed(f"{n} samples of the frozen model for {class_prompt(class_noun)!r}, kept as {list(base)} latents; "
           f"{acc:.0%} read as {class_noun}s. The prior-preservation set below is built with your function.")
    return images


# -- predict, then run: language drift ----------------------------------------------------------------------------

DRIFT_CHOICES = {
    "a": "about all of them (90% or more): \"a seven\" was never a training prompt, so it cannot change",
    "b": "some of them (40% to 90%)",
    "c": "few of them (under 40%): \"a seven\" turns into the subject",
}


def commit_drift_prediction(prediction) -> str:
    """Before the run: what share of "a seven" samples will the classifier still read as a seven after fine-tuning
    on "a [V] seven" alone (λ = 0)?"""
    return commit_choice(prediction, DRIFT_CHOICES)


def drift_truth(accuracy: float) -> str:
    """The choice that the measured accuracy of "a seven" samples falls in."""
    return "a" if accuracy >= 0.9 else "b" if accuracy >= 0.4 else "c"


def reveal_drift(prediction, accuracy: float) -> bool:
    """After the run: the measured accuracy decides; the reasoning is printed either way."""
    why = ("the prompts share almost everything. \"a [V] seven\" and \"a seven\" differ by one token whose "
           "embedding carries little (a weak prior), so their text states, and the U-Net's reading of them, are "
           "nearly the same; the quickest way to fit four hollow sevens is to change what the shared part, "
           "\"seven\", draws. Nothing in the loss says \"a seven\" must stay as it was; the prior-preservation "
           "term is exactly that sentence.")
    return reveal_choice(prediction, drift_truth(accuracy), DRIFT_CHOICES, why,
                         measured=f"measured: {accuracy:.0%} still read as sevens")
