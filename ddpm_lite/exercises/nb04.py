"""Checks for notebook 04 (class conditioning and classifier-free guidance).

Exercises:
    1. `check_guided_eps(guided_eps)`: ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅)  (Ho & Salimans 2021, eq. 6),
       compared with what `GaussianDiffusion.model_output` does inside every sampler.
    2. `check_drop_labels(drop_labels)`: label dropout, replacing each label by the null class (index
       `num_classes`) with probability p, as the trainer does to teach one network both ε_θ(x, c) and ε_θ(x, ∅).

Every reference is computed by the package at check time, never typed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import ExerciseError, as_tensor, call_answer, passed

__all__ = ["check_guided_eps", "check_drop_labels", "TinyConditionalNet"]


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
