"""Checks for notebook 05 (class conditioning and classifier-free guidance).

Exercises:
    1. `check_guided_eps(guided_eps)`: ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅)  (Ho & Salimans 2021, eq. 6),
       compared with what `GaussianDiffusion.model_output` does inside every sampler.
    2. `check_drop_labels(drop_labels)`: label dropout, replacing each label by the null class (index
       `num_classes`) with probability p, as the trainer does to teach one network both ε_θ(x, c) and ε_θ(x, ∅).
    3. `check_cfg_loss(cfg_loss)`: the conditional training loss with label dropout,
       cfg_loss(model, diffusion, x0, y, p_uncond, generator) -> a scalar: drop labels to the null class with
       probability p_uncond, then the batch mean of `diffusion.training_losses(...)["loss"]` with the dropped
       labels. Checked through a recording model (what labels, timesteps and noisy inputs it was given) against
       `GaussianDiffusion.training_losses` on exactly those inputs; notebook 05 then trains a class-conditional
       2D model with the learner's function and samples it with the learner's `guided_eps`.
    Predict, then run: `LABEL_EFFECT_CHOICES`, `commit_label_effect_prediction(p)` before the measurement of how
       much the label changes the model's guess x̂_0 at each t, `reveal_label_effect(p, ts, effect)` after it.

Every reference is computed by the package at check time, never typed in. The planted mistakes each check names:
the guidance-scale form, swapped branches; the null class as 0, −1 or the last digit, the mask inverted, the input
modified in place, float labels, the generator ignored; for the loss, no dropout, a fixed p, the whole batch
dropped at once, the clean images or one timestep for the whole batch given to the model, the sum instead of the
mean, the unweighted ε-MSE instead of the diffusion's (min-SNR-weighted) loss, a float or a per-example vector
returned, the loss computed without gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import ExerciseError, as_tensor, call_answer, commit_choice, passed, reveal_choice

__all__ = ["check_guided_eps", "check_drop_labels", "check_cfg_loss", "TinyConditionalNet", "LABEL_EFFECT_CHOICES",
           "commit_label_effect_prediction", "label_effect_truth", "reveal_label_effect"]


class TinyConditionalNet(nn.Module):
    """A stand-in class-conditional "network" ε(x, t, y) for checks: cheap, deterministic, and different for
    every label (so mixing up ε_c and ε_∅ shows). Label `num_classes` is the null class."""

    def __init__(self, num_classes: int = 10, dim: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.config = {"num_classes": num_classes, "dim": dim, "seed": seed}
        self.register_buffer("class_shift", torch.randn(num_classes + 1, dim, generator=g))
        self.register_buffer("mix", torch.randn(dim, dim, generator=g) / math.sqrt(dim))

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
        flat = x.reshape(x.shape[0], -1)
        out = torch.tanh(flat @ self.mix) + self.class_shift[y] * (1 + t.float()[:, None] / 1000)
        return out.reshape(x.shape)


# -- exercise 1: the guided ε ----------------------------------------------------------------------------------

def check_guided_eps(guided_eps) -> None:
    """`guided_eps(eps_cond, eps_uncond, w)` must return (1 + w)·eps_cond − w·eps_uncond.

    The reference is `GaussianDiffusion.model_output(..., guidance=w)` on a small conditional network, so the
    check tests your formula against the one every sampler in the package uses.
    """
    from ..diffusion import GaussianDiffusion, null_labels

    diffusion = GaussianDiffusion("linear", timesteps=1000)
    net = TinyConditionalNet()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 8, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    y = torch.arange(6) % 10
    eps_c, eps_u = net(x, t, y), net(x, t, null_labels(net, y))
    weights = (0.0, 1.0, 3.0, 7.5)
    answers, refs = [], []
    for w in weights:
        got = as_tensor(call_answer(guided_eps, "guided_eps", eps_c, eps_u, w), "guided_eps(eps_cond, eps_uncond, w)")
        ref = diffusion.model_output(net, x, t, y, guidance=w).double()
        if got.shape != ref.shape:
            raise ExerciseError(f"guided_eps returned shape {tuple(got.shape)}, expected the shape of eps_cond "
                                f"{tuple(ref.shape)}")
        answers.append(got)
        refs.append(ref)

    def matches(form) -> bool:
        return all(torch.allclose(a, form(w).double(), rtol=1e-5, atol=1e-6) for a, w in zip(answers, weights))

    if matches(lambda w: (1 + w) * eps_c - w * eps_u):
        passed("ε̃ = (1 + w) ε_c − w ε_∅ matches GaussianDiffusion.model_output for w = 0, 1, 3, 7.5.")
        return
    if matches(lambda w: eps_u + w * (eps_c - eps_u)):
        raise ExerciseError("you returned eps_uncond + w·(eps_cond − eps_uncond): that is the 'guidance scale' "
                            "form with s = w. In this package w = s − 1, i.e. (1 + w)·eps_cond − w·eps_uncond "
                            "(w = 0 must give eps_cond).")
    if matches(lambda w: (1 + w) * eps_u - w * eps_c):
        raise ExerciseError("the conditional and unconditional predictions are swapped: guidance pushes "
                            "*towards* the class, away from the unconditional prediction.")
    if not torch.allclose(answers[0], eps_c.double(), rtol=1e-5, atol=1e-6):
        raise ExerciseError("with w = 0 guidance is off: the guided ε must equal eps_cond exactly. Check "
                            "which of the two predictions your formula keeps when w = 0.")
    for a, r, w in zip(answers, refs, weights):
        if not torch.allclose(a, r, rtol=1e-5, atol=1e-6):
            raise ExerciseError(f"at w = {w} the guided ε differs from (1 + w)·eps_cond − w·eps_uncond by up to "
                                f"{(a - r).abs().max().item():.3g}.")
    raise ExerciseError("your guided ε does not match (1 + w)·eps_cond − w·eps_uncond.")


# -- exercise 2: label dropout ---------------------------------------------------------------------------------

def check_drop_labels(drop_labels) -> None:
    """`drop_labels(y, p, num_classes, generator)` replaces each label by `num_classes` with probability p.

    Checked: shape and integer dtype kept; kept labels unchanged; dropped labels equal the null class index;
    the input tensor is not modified; p = 0 drops nothing, p = 1 drops everything; the dropped fraction on
    20 000 labels is within 5 standard deviations of p; the draw depends on the generator.
    """
    num_classes = 10
    n = 20_000
    y = torch.arange(n) % num_classes
    for p in (0.1, 0.3):
        y_in = y.clone()
        out = call_answer(drop_labels, "drop_labels", y_in, p, num_classes, torch.Generator().manual_seed(1))
        if not torch.is_tensor(out):
            raise ExerciseError(f"drop_labels should return a tensor, got {type(out).__name__}")
        if not torch.equal(y_in, y):
            raise ExerciseError("drop_labels modified its input `y` in place: return a new tensor (e.g. with "
                                "torch.where) so the dataset's labels stay intact.")
        if out.shape != y.shape:
            raise ExerciseError(f"drop_labels returned shape {tuple(out.shape)}, expected {tuple(y.shape)}")
        if out.is_floating_point() or out.dtype == torch.bool:
            raise ExerciseError(f"labels must stay integers (torch.long) for nn.Embedding, got dtype {out.dtype}")
        changed = out != y
        if changed.any():
            vals = torch.unique(out[changed]).tolist()
            if vals != [num_classes]:
                hint = ""
                if num_classes - 1 in vals:
                    hint = (f" {num_classes - 1} is the last real class (the digit {num_classes - 1}); the null class "
                            f"is the extra index num_classes = {num_classes}.")
                elif 0 in vals or -1 in vals:
                    hint = f" The null class is the extra embedding row num_classes = {num_classes}, not 0 or −1."
                raise ExerciseError(f"dropped labels must become the null class {num_classes}, got values {vals}."
                                    + hint)
        frac = (out == num_classes).double().mean().item()
        sd = math.sqrt(p * (1 - p) / n)
        if abs(frac - p) > 5 * sd:
            hint = " (that is about 1 − p: is your comparison the wrong way round?)" if abs(frac - (1 - p)) < 5 * sd \
                else ""
            raise ExerciseError(f"with p = {p} you dropped a fraction {frac:.3f} of the labels, expected about "
                                f"{p} ± {2 * sd:.3f}{hint}.")
    none = call_answer(drop_labels, "drop_labels", y.clone(), 0.0, num_classes, torch.Generator().manual_seed(2))
    if not torch.equal(torch.as_tensor(none), y):
        raise ExerciseError("with p = 0 no label may be dropped.")
    all_ = call_answer(drop_labels, "drop_labels", y.clone(), 1.0, num_classes, torch.Generator().manual_seed(2))
    if not bool((torch.as_tensor(all_) == num_classes).all()):
        raise ExerciseError("with p = 1 every label must become the null class.")
    a = call_answer(drop_labels, "drop_labels", y.clone(), 0.5, num_classes, torch.Generator().manual_seed(3))
    b = call_answer(drop_labels, "drop_labels", y.clone(), 0.5, num_classes, torch.Generator().manual_seed(3))
    c = call_answer(drop_labels, "drop_labels", y.clone(), 0.5, num_classes, torch.Generator().manual_seed(4))
    if not torch.equal(a, b) or torch.equal(a, c):
        raise ExerciseError("draw the dropout mask from the `generator` argument (e.g. torch.rand(..., "
                            "generator=generator)) so that runs are reproducible.")
    passed(f"each label becomes the null class {num_classes} with probability p; the rest are untouched.")


# -- exercise 3: the conditional training loss with label dropout ---------------------------------------------------

class _RecordingNet(nn.Module):
    """Wraps a conditional network and records every call (x_t, t, y); one learnable gain (1.0) so that the
    loss has a gradient, as a real network's would."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.num_classes = inner.num_classes
        self.config = dict(inner.config)
        self.gain = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.calls = []

    def forward(self, x, t, y=None):
        self.calls.append((x.detach().clone(), t.detach().clone() if torch.is_tensor(t) else t,
                           None if y is None else torch.as_tensor(y).detach().clone()))
        return self.inner(x, t, y) * self.gain


def _loss_setup(n: int = 600, seed: int = 0):
    from ..diffusion import GaussianDiffusion

    diffusion = GaussianDiffusion("linear", timesteps=1000, min_snr_gamma=5.0)   # weighted, as the Trainer's
    inner = TinyConditionalNet(seed=3).double()
    g = torch.Generator().manual_seed(100 + seed)
    x0 = torch.rand(n, 8, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.arange(n) % inner.num_classes
    return diffusion, inner, x0, y


def _run_loss(cfg_loss, p: float, seed: int, n: int = 600):
    """Call the learner's loss on a fresh recording network; returns what it returned, the recorder, inputs."""
    diffusion, inner, x0, y = _loss_setup(n, seed)
    net = _RecordingNet(inner)
    y_in = y.clone()
    got = call_answer(cfg_loss, "cfg_loss", net, diffusion, x0.clone(), y_in, p, torch.Generator().manual_seed(seed))
    if not torch.equal(y_in, y):
        raise ExerciseError("cfg_loss changed the labels `y` in place: build a new tensor for the dropped labels "
                            "(e.g. with torch.where), so the dataset's labels stay intact.")
    return got, net, diffusion, inner, x0, y


def _as_loss(got, n: int) -> torch.Tensor:
    if isinstance(got, dict):
        raise ExerciseError("cfg_loss returned the dict of `diffusion.training_losses`: return the scalar loss, "
                            "its [\"loss\"] entry averaged over the batch (…[\"loss\"].mean()).")
    if not torch.is_tensor(got):
        if isinstance(got, (float, int)):
            raise ExerciseError("cfg_loss returned a Python number: return the loss tensor itself (no .item()), "
                                "so that the training loop can call loss.backward() on it.")
        raise ExerciseError(f"cfg_loss should return a scalar tensor, got {type(got).__name__}")
    if got.numel() == n:
        raise ExerciseError(f"cfg_loss returned one loss per example (shape {list(got.shape)}): average them over "
                            f"the batch (.mean()) to get the scalar the optimiser minimises.")
    if got.numel() != 1:
        raise ExerciseError(f"cfg_loss should return a scalar tensor, got shape {list(got.shape)}")
    if not got.requires_grad:
        raise ExerciseError("the loss has no gradient: do not compute it under torch.no_grad() or .detach() it; "
                            "the training loop calls loss.backward() on what you return.")
    return got.detach().double().reshape(())


def _check_call(net, diffusion, x0, y, p: float) -> tuple:
    """The single forward pass: noisy inputs, one t per example, labels kept or set to the null class."""
    K = net.num_classes
    if not net.calls:
        raise ExerciseError("the model was never called: the loss compares its prediction for the noisy batch "
                            "with the noise (diffusion.training_losses(model, x0, y=..., generator=...) does both).")
    if len(net.calls) > 1:
        raise ExerciseError(f"the model was called {len(net.calls)} times: training needs one forward pass, with "
                            f"the labels after dropout (guidance's two branches are for sampling, not training).")
    x_t, t, y_seen = net.calls[0]
    if y_seen is None:
        raise ExerciseError("the model was called without labels: pass the labels after dropout (y=...).")
    if not torch.is_tensor(t) or t.shape != (len(x0),):
        raise ExerciseError("the model should get one timestep per example (a long tensor of shape [B]).")
    if torch.allclose(x_t, x0):
        raise ExerciseError("the model was given the clean images x0: it learns to denoise x_t = q_sample(x0, t, "
                            "noise), which diffusion.training_losses forms for you.")
    if int(t.unique().numel()) == 1:
        raise ExerciseError(f"every example got the same timestep t = {int(t[0])}: draw one t per example "
                            f"(diffusion.training_losses does, if you do not pass t).")
    changed = y_seen != y
    if changed.any():
        vals = torch.unique(y_seen[changed]).tolist()
        if vals != [K]:
            hint = (f" {K - 1} is the last real class; the null class is the extra index num_classes = {K}."
                    if K - 1 in vals else f" The null class is the extra embedding row num_classes = {K}, "
                                          f"model.num_classes.")
            raise ExerciseError(f"dropped labels must become the null class {K}, the model got values {vals}." + hint)
    return x_t, t, y_seen


def check_cfg_loss(cfg_loss) -> None:
    """`cfg_loss(model, diffusion, x0, y, p_uncond, generator)` must return the batch mean of
    `diffusion.training_losses(model, x0, y=ỹ, …)["loss"]`, ỹ being y with each label replaced by the null class
    `model.num_classes` with probability p_uncond, all random numbers from `generator`."""
    p, n, runs = 0.3, 600, 5
    fractions, losses = [], []
    for seed in range(runs):
        got, net, diffusion, inner, x0, y = _run_loss(cfg_loss, p, seed, n)
        loss = _as_loss(got, n)
        x_t, t, y_seen = _check_call(net, diffusion, x0, y, p)
        fractions.append(float((y_seen == net.num_classes).double().mean()))
        # the noise the learner's code used, read back from x_t = √ᾱ x0 + √(1 − ᾱ) ε
        a = diffusion.schedule.alphas_cumprod.double()[t].reshape(-1, 1)
        noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        with torch.no_grad():
            per = diffusion.training_losses(inner, x0, t=t, noise=noise, y=y_seen)["loss"]
            raw = ((inner(x_t, t, y_seen) - noise) ** 2).mean(1)
        ref = per.mean()
        losses.append(loss)
        if torch.isclose(loss, ref, rtol=1e-6, atol=1e-10):
            continue
        if torch.isclose(loss, per.sum(), rtol=1e-6):
            raise ExerciseError("that is the sum of the per-example losses: take the mean over the batch, so the "
                                "step size does not depend on the batch size.")
        if torch.isclose(loss, raw.mean(), rtol=1e-6):
            raise ExerciseError("that is the unweighted ε-MSE. This diffusion (like the Trainer's) weights each "
                                "example by min-SNR-γ: use diffusion.training_losses(model, x0, y=..., "
                                "generator=...)[\"loss\"].mean(), which applies the weights.")
        raise ExerciseError(f"the loss is {loss.item():.6g}, but the model's prediction for the inputs it was given "
                            f"gives {ref.item():.6g} with diffusion.training_losses.")
    total = sum(fractions) / runs
    sd = math.sqrt(p * (1 - p) / (n * runs))
    if all(f in (0.0, 1.0) for f in fractions) and any(f == 1.0 for f in fractions):
        raise ExerciseError("you dropped the labels of the whole batch at once (all or none): draw the dropout "
                            "independently for every example, torch.rand(B, generator=generator) < p_uncond.")
    if total == 0.0:
        raise ExerciseError("no label was ever replaced by the null class: apply label dropout (your drop_labels "
                            "from exercise 2) before computing the loss, or ε_θ(x, ∅) is never trained.")
    if abs(total - p) > 5 * sd:
        if abs(total - (1 - p)) < 5 * sd:
            raise ExerciseError(f"with p_uncond = {p} you dropped {total:.0%} of the labels, about 1 − p: the "
                                f"comparison is the wrong way round (drop where rand < p_uncond).")
        if abs(total - 0.1) < 5 * math.sqrt(0.09 / (n * runs)):
            raise ExerciseError(f"with p_uncond = {p} you dropped {total:.0%} of the labels: use the argument "
                                f"p_uncond, not a fixed 0.1.")
        raise ExerciseError(f"with p_uncond = {p} you dropped {total:.1%} of the labels, expected about {p:.0%}.")
    # reproducible: the same generator seed gives the same loss, another seed another loss
    again = _as_loss(_run_loss(cfg_loss, p, 0, n)[0], n)
    if not torch.isclose(again, losses[0], rtol=1e-9, atol=1e-12) or torch.isclose(losses[0], losses[1]):
        raise ExerciseError("draw all the randomness (the dropout mask, t and the noise) from `generator`, so a "
                            "training run is reproducible: pass generator=generator to torch.rand and to "
                            "diffusion.training_losses.")
    passed(f"labels dropped to the null class with probability p_uncond (measured {total:.1%} for p = {p}), one "
           f"forward pass on the noisy batch, the batch mean of the diffusion's (min-SNR-weighted) loss. The "
           f"next cell trains a model with your function.")


# -- predict, then run: where does the label matter? -----------------------------------------------------------------

LABEL_EFFECT_CHOICES = {
    "a": "at small t (t ≤ 250): there is little noise, so the details of the digit depend on the label",
    "b": "in the middle (250 < t < 750)",
    "c": "at large t (t ≥ 750): the image is nearly pure noise",
}

_LABEL_EFFECT_MISTAKES = {
    "a": "At small t the noisy image already shows which digit it is, so both predictions agree whatever the "
         "label says: the label has nothing left to add.",
    "b": "In the middle the image is half visible: the label still helps, but less than where nothing of the "
         "image survives.",
    "c": "",
}


def commit_label_effect_prediction(prediction) -> str:
    """Before the measurement: at which noise level does the label change the model's guess x̂_0 the most?"""
    return commit_choice(prediction, LABEL_EFFECT_CHOICES)


def label_effect_truth(ts, effect) -> str:
    """The choice that the timestep of the largest measured effect falls in."""
    ts, effect = list(ts), [float(e) for e in effect]
    if len(ts) != len(effect) or not ts:
        raise ValueError("ts and effect must have the same, non-zero length")
    t_max = ts[max(range(len(effect)), key=effect.__getitem__)]
    return "a" if t_max <= 250 else "b" if t_max < 750 else "c"


def reveal_label_effect(prediction, ts, effect) -> bool:
    """After the measurement: the largest measured change decides; the reasoning is printed either way."""
    ts, effect = list(ts), [float(e) for e in effect]
    truth = label_effect_truth(ts, effect)
    key = commit_choice(prediction, LABEL_EFFECT_CHOICES, echo=False)
    k = max(range(len(effect)), key=effect.__getitem__)
    why = ("x̂_0 is the model's estimate of E[x_0 | x_t, c]. The more noise, the less x_t says about the digit, and "
           "the more of that estimate has to come from the label. Near t = T the image carries almost nothing, "
           "and the label is the only information about what to draw.")
    return reveal_choice(key, truth, LABEL_EFFECT_CHOICES, why,
                         wrong_why={("c", k): text for k, text in _LABEL_EFFECT_MISTAKES.items()},
                         measured=f"measured: largest change {effect[k]:.2f} per pixel at t = {ts[k]}, "
                                  f"{effect[0]:.3f} at t = {ts[0]}")
