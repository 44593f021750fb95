"""Checks for notebook 04, "The training loop".

Exercises (the notebook numbers them: 1 = `check_training_step`, in §1 where the loop uses it; 2–4 = the others):
    1. `check_simple_loss`: one training step's loss by hand: perturb x_0 to x_t with ε (eq. 4), ask the model
       for ε_θ(x_t, t, y), and average ‖ε − ε_θ‖² (L_simple, Ho et al. 2020, eq. 14; Algorithm 1, line 5).
    2. `check_ema_update`: one exponential-moving-average update of the weights, shadow ← d·shadow + (1−d)·θ.
    3. `check_ema_warmup`: the warm-up of the EMA decay, d_k = min(decay, (1 + k)/(warmup + k)).
    4. `check_training_step`: one whole training step, fn(model, opt, diffusion, x0, y, t, noise) -> the batch's
       loss as a float (steps 4–7 of the recipe: x_t, ε̂, L_simple, zero_grad / backward / step); the notebook's
       first training loop then runs with the learner's function.
    Predict, then run: `FIRST_LOSS_CHOICES`, `commit_first_loss_prediction(p)` before the `Trainer` run,
       `reveal_first_loss(p, first_loss, diffusion)` after it: where does the logged loss start?

References are computed by the package (`GaussianDiffusion.training_losses`, `ema.EMA`, `losses.min_snr_weight`);
each planted mistake (no backward, no optimiser step, step before backward, gradients accumulated without
zero_grad, the wrong target or input, the sum instead of the mean, the labels left out, a tensor returned that
keeps its graph) gets a message naming it.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from ..diffusion import GaussianDiffusion
from ..ema import EMA
from . import ExerciseError, as_tensor, call_answer, commit_choice, expect_close, passed, reveal_choice

__all__ = ["check_simple_loss", "check_ema_update", "check_ema_warmup", "TinyEpsModel", "check_training_step",
           "FIRST_LOSS_CHOICES", "commit_first_loss_prediction", "first_loss_truth", "reveal_first_loss"]


class TinyEpsModel(nn.Module):
    """A small deterministic class-conditional network `model(x, t, y)` whose output depends on x, t and y: just
    enough for the checks to tell a right loss from a wrong one."""

    def __init__(self, channels: int = 1, num_classes: int = 10, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.class_bias = nn.Embedding(num_classes + 1, channels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        scale = 1.0 + t.float().reshape(-1, 1, 1, 1) / 1000.0
        return torch.tanh(self.conv(x)) * scale + self.class_bias(y)[:, :, None, None]


# -- exercise 1: L_simple by hand -----------------------------------------------------------------------------


def check_simple_loss(fn) -> None:
    """`fn(model, x0, t, noise, alphas_cumprod, y)` must return the batch mean of ‖ε − ε_θ(x_t, t, y)‖² / D,
    with x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a 0-d tensor that gradients flow through (eq. 14).

    Compared with `GaussianDiffusion.training_losses(model, x0, t, noise, y)["loss"].mean()`.
    """
    diffusion = GaussianDiffusion("linear", 1000)
    model = TinyEpsModel()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(8, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 3, 50, 200, 400, 600, 800, 999], dtype=torch.long)
    y = torch.arange(8, dtype=torch.long) % 10
    ab = diffusion.schedule.alphas_cumprod.to(torch.float32)
    got = call_answer(fn, "l_simple", model, x0.clone(), t.clone(), noise.clone(), ab.clone(), y.clone())
    if not torch.is_tensor(got):
        raise ExerciseError(f"return the loss as a torch tensor (a float cannot be back-propagated), got "
                            f"{type(got).__name__}: did you call .item()?")
    if got.ndim != 0:
        raise ExerciseError(f"the loss should be one number (a 0-d tensor), got shape {tuple(got.shape)}: take the "
                            f"mean over the batch too.")
    if not got.requires_grad:
        raise ExerciseError("the loss does not require grad: compute it from the model's output, outside "
                            "torch.no_grad(), without .detach().")
    value = as_tensor(got, "loss")
    with torch.no_grad():
        reference = diffusion.training_losses(model, x0, t=t, noise=noise, y=y)["loss"].mean().double()
        a = ab[t].reshape(-1, 1, 1, 1)

        def mse(xt, target, yy=y, tt=t):
            return ((model(xt, tt, yy) - target) ** 2).mean().double()

        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        mistakes = [
            (mse(a * x0 + (1 - a) * noise, noise), "x_t uses square roots: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (eq. 4)."),
            (mse(xt, x0), "the target of an ε-model is the noise ε, not x_0."),
            (mse(x0, noise), "the model must see the noisy x_t, not the clean x_0."),
            (mse(noise, noise), "the model must see the noisy x_t, not the noise itself."),
            (mse(xt, noise, yy=None), "pass the class labels y to the model: model(x_t, t, y)."),
            (((model(xt, t, y) - noise) ** 2).sum().double(), "use the mean of the squared error, not the sum."),
            (((model(xt, t, y) - noise) ** 2).sum(dim=(1, 2, 3)).mean().double(),
             "average over the pixels too (the package's loss is the mean over all dimensions)."),
            (((model(xt, t, y) - noise).abs()).mean().double(), "that is an L1 loss: square the error."),
        ]
        t1 = torch.clamp(t + 1, max=999)
        a1 = ab[t1].reshape(-1, 1, 1, 1)
        mistakes.append((mse(a1.sqrt() * x0 + (1 - a1).sqrt() * noise, noise),
                         "off by one: index ᾱ with t itself (0-based), not t + 1."))
    for wrong, message in mistakes:
        if torch.allclose(value, wrong, rtol=1e-4, atol=1e-7) and not torch.allclose(wrong, reference, rtol=1e-6):
            raise ExerciseError(message)
    expect_close(value, reference, "loss", rtol=1e-4, atol=1e-6,
                 hint="x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, then mean((model(x_t, t, y) − ε)²).")
    passed(f"your L_simple ({float(value):.4f}) equals GaussianDiffusion('linear', 1000).training_losses(...)"
           f"['loss'].mean() (unweighted: min_snr_gamma=None).")


# -- exercise 2: one EMA update -------------------------------------------------------------------------------


def _pair(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 3))
    shadow = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        for p in shadow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    shadow.requires_grad_(False)
    return shadow, model


def check_ema_update(fn) -> None:
    """`fn(shadow, model, decay)` must update `shadow`'s parameters in place to d·shadow + (1 − d)·model and
    leave `model` unchanged. Compared with `ddpm_lite.ema.EMA.update` (without warm-up)."""
    decay = 0.9
    shadow, model = _pair()
    model_before = copy.deepcopy(model.state_dict())
    shadow_before = copy.deepcopy(shadow.state_dict())
    reference = EMA(shadow, decay=decay, warmup=None)  # copies `shadow` as it is now
    reference.update(model)
    call_answer(fn, "ema_update", shadow, model, decay)
    for name, p in model.state_dict().items():
        if not torch.equal(p, model_before[name]):
            raise ExerciseError(f"the model's weights changed ({name}): only the shadow copy may be updated.")
    ref_state = reference.module.state_dict()
    for name, p in shadow.state_dict().items():
        got, ref = p.double(), ref_state[name].double()
        old, new = shadow_before[name].double(), model_before[name].double()
        if torch.equal(got, old):
            raise ExerciseError(f"the shadow's {name} did not change: update its parameters in place "
                                f"(e.g. `s.mul_(d).add_(p, alpha=1 - d)` or `s.lerp_(p, 1 - d)` under torch.no_grad()).")
        if torch.allclose(got, new):
            raise ExerciseError("the shadow became a copy of the model: it should move only a fraction 1 − d towards it.")
        if torch.allclose(got, (1 - decay) * old + decay * new, rtol=1e-5):
            raise ExerciseError("d and 1 − d are swapped: the *old shadow* keeps the big weight d "
                                "(shadow ← d·shadow + (1 − d)·θ).")
        expect_close(got, ref, f"shadow.{name}", rtol=1e-5, atol=1e-7,
                     hint="shadow ← d·shadow + (1 − d)·θ for every parameter.")
    passed(f"one update moved each shadow weight 1 − d = {1 - decay:.1f} of the way towards the model, as EMA.update.")


# -- exercise 3: the EMA warm-up ------------------------------------------------------------------------------


def check_ema_warmup(fn) -> None:
    """`fn(step, decay, warmup)` must return min(decay, (1 + step) / (warmup + step)) (a float), as
    `EMA.current_decay` (TensorFlow's `num_updates` schedule)."""
    for decay, warmup in ((0.9999, 10), (0.999, 10), (0.99, 5)):
        ref_ema = EMA(nn.Linear(1, 1), decay=decay, warmup=warmup)
        for step in (0, 1, 8, 80, 890, 10_000, 1_000_000):
            got = call_answer(fn, "ema_decay", step, decay, warmup)
            got_t = as_tensor(got, "decay")
            if got_t.numel() != 1:
                raise ExerciseError(f"return one number, got shape {tuple(got_t.shape)}")
            ref = ref_ema.current_decay(step)
            value = float(got_t)
            if step == 0 and abs(value - decay) < 1e-12:
                raise ExerciseError("at step 0 the decay should be small (1/warmup), not the full decay: that is the "
                                    "point of the warm-up.")
            if abs(value - (1 + step) / (warmup + step)) < 1e-12 and abs(value - ref) > 1e-12:
                raise ExerciseError(f"cap the decay at `decay` = {decay}: at step {step} the warm-up formula alone gives "
                                    f"{value:.6f}.")
            if abs(value - ref) > 1e-9:
                raise ExerciseError(f"at step {step} (decay {decay}, warmup {warmup}) expected {ref:.6f}, got {value:.6f}. "
                                    f"Hint: min(decay, (1 + step) / (warmup + step)).")
    full = full_decay_step(0.9999, 10)
    passed(f"your warm-up gives 0.1 at step 0, 0.5 at step 8, 0.9 at step 80 and reaches the full decay 0.9999 only "
           f"at step {full:,} (≈ 9·10⁴; (1 + k)/(10 + k) ≥ d from k = (10d − 1)/(1 − d) on), as EMA.current_decay.")


def full_decay_step(decay: float, warmup: int) -> int:
    """The first update k at which the warm-up reaches the full decay: (1 + k)/(warmup + k) ≥ decay, i.e.
    k ≥ (warmup·decay − 1)/(1 − decay); found exactly with `EMA.current_decay` (89 990 for 0.9999 and 10)."""
    ema = EMA(nn.Linear(1, 1), decay=decay, warmup=warmup)
    k = max(0, math.floor((warmup * decay - 1) / (1 - decay)) - 2)   # just below the closed form; step up
    while ema.current_decay(k) < decay:
        k += 1
    return k


# -- exercise 4: one whole training step, used by the notebook's first loop -----------------------------------------

_STEP_LR = 0.1


def _step_batch(k: int, T: int = 1000):
    gen = torch.Generator().manual_seed(40 + k)
    x0 = torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(8, 1, 8, 8, generator=gen)
    t = torch.randint(0, T, (8,), generator=gen)
    t[0], t[1] = 0, T - 1
    y = torch.randint(0, 10, (8,), generator=gen)
    return x0, y, t, noise


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _close_params(a, b, rtol=1e-4, atol=1e-6) -> bool:
    return all(x.shape == y.shape and torch.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b))


def _sgd_candidate(model, start, loss_fn, lr=_STEP_LR):
    """The weights after one plain SGD step from `start` on `loss_fn(model copy)`, and that loss's value."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p, s in zip(m.parameters(), start):
            p.copy_(s)
    loss = loss_fn(m)
    grads = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    new = [s - lr * (g if g is not None else torch.zeros_like(s)) for s, g in zip(start, grads)]
    return new, [g if g is not None else torch.zeros_like(s) for s, g in zip(start, grads)], float(loss.detach())


def _step_losses(diffusion, x0, y, t, noise):
    """{name: (loss_fn(model), message)}: the right loss first, then the typical wrong ones."""
    ab = diffusion.schedule.alphas_cumprod.to(torch.float32)
    a = ab[t].reshape(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    t1 = torch.clamp(t + 1, max=len(ab) - 1)
    a1 = ab[t1].reshape(-1, 1, 1, 1)
    return {
        "right": (lambda m: ((m(xt, t, y) - noise) ** 2).mean(), ""),
        "target_x0": (lambda m: ((m(xt, t, y) - x0) ** 2).mean(),
                      "the loss compares ε̂ with x_0: the target of an ε-model is the noise ε."),
        "clean_input": (lambda m: ((m(x0, t, y) - noise) ** 2).mean(),
                        "the model was given the clean x_0: it must see the noisy x_t = q_sample(x0, t, noise)."),
        "no_sqrt": (lambda m: ((m(a * x0 + (1 - a) * noise, t, y) - noise) ** 2).mean(),
                    "x_t uses square roots: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (or diffusion.q_sample(x0, t, noise))."),
        "no_labels": (lambda m: ((m(xt, t) - noise) ** 2).mean(),
                      "the labels are missing: call model(x_t, t, y), the U-Net is class-conditional."),
        "sum": (lambda m: ((m(xt, t, y) - noise) ** 2).sum(),
                "the loss is the sum of the squared errors: take the mean (F.mse_loss), or the step size grows "
                "with the batch and the image size."),
        "off_by_one": (lambda m: ((m(a1.sqrt() * x0 + (1 - a1).sqrt() * noise, t, y) - noise) ** 2).mean(),
                       "off by one: x_t must be made with ᾱ[t] itself (t is 0-based), not ᾱ[t + 1]."),
    }


def check_training_step(fn) -> None:
    """`fn(model, opt, diffusion, x0, y, t, noise)` must take one optimiser step on the batch's L_simple,
    mean((model(x_t, t, y) − ε)²) with x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, and return that loss (measured before the step)
    as a float. Called twice in a row with a small class-conditional model and plain SGD (lr 0.1), each call's
    weights compared with one SGD step of `GaussianDiffusion.training_losses(...)["loss"].mean()`."""
    diffusion = GaussianDiffusion("linear", 1000)
    model = TinyEpsModel(seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=_STEP_LR)
    for k in range(2):
        x0, y, t, noise = _step_batch(k)
        start = _params(model)
        grads_before = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            ref_loss = float(diffusion.training_losses(model, x0, t=t, noise=noise, y=y)["loss"].mean())
        got = call_answer(fn, "training_step", model, opt, diffusion, x0.clone(), y.clone(), t.clone(), noise.clone())
        after = _params(model)
        if got is None:
            raise ExerciseError("`training_step` returned None: return the batch's loss as a number, `loss.item()`.")
        if torch.is_tensor(got) and got.requires_grad:
            raise ExerciseError("return `loss.item()`, a plain float: a tensor that requires grad keeps the whole "
                                "graph of the step alive in the notebook's list of losses.")
        if _close_params(after, start, rtol=0, atol=0):
            if all(p.grad is None for p in model.parameters()):
                raise ExerciseError("the weights did not move and no gradient is left on them: call loss.backward() "
                                    "and then opt.step() (opt.zero_grad() goes *before* backward, not after it).")
            raise ExerciseError("the weights did not move although gradients were computed: call opt.step() "
                                "*after* loss.backward() (before it, the step has no gradients to use).")
        losses = _step_losses(diffusion, x0, y, t, noise)
        right, ref_grads, _ = _sgd_candidate(model, start, losses["right"][0])
        if not _close_params(after, right):
            if grads_before and all(g is not None for g in grads_before):
                stale = [s - _STEP_LR * g for s, g in zip(start, grads_before)]
                if _close_params(after, stale):
                    raise ExerciseError("opt.step() ran before loss.backward(): it applied the *previous* batch's "
                                        "gradients. Order: zero_grad, forward, loss, backward, step.")
                summed = [s - _STEP_LR * (g + gb) for s, g, gb in zip(start, ref_grads, grads_before)]
                if _close_params(after, summed):
                    raise ExerciseError("the previous step's gradients were added to this one: call opt.zero_grad() "
                                        "before loss.backward() (PyTorch accumulates into .grad).")
            for name, (loss_fn, message) in losses.items():
                if name == "right":
                    continue
                wrong, _, _ = _sgd_candidate(model, start, loss_fn)
                if _close_params(after, wrong):
                    raise ExerciseError(message)
            raise ExerciseError(f"after call {k + 1} the weights differ from one optimiser step on this batch's "
                                f"L_simple: use the `opt` passed in, x_t = diffusion.q_sample(x0, t, noise), "
                                f"loss = mean((model(x_t, t, y) − noise)²), then zero_grad, backward, step.")
        value = float(as_tensor(got, "loss").reshape(-1)[0]) if as_tensor(got, "loss").numel() == 1 else None
        if value is None:
            raise ExerciseError("return one number, the batch's mean loss (`loss.item()`).")
        if abs(value - ref_loss) > 1e-4 * max(1.0, abs(ref_loss)):
            raise ExerciseError(f"the weights are right, but you returned {value:.5f}, not this batch's loss "
                                f"{ref_loss:.5f}: return loss.item() of the loss you stepped on.")
    passed("two calls, two correct optimiser steps on L_simple (zero_grad, backward, step in the right order) and "
           "the batch's loss returned as a float. The loop below trains the U-Net with your function.")


# -- predict, then run: where does the logged loss start? ----------------------------------------------------------

FIRST_LOSS_CHOICES = {
    "a": "about 1 (0.9 to 1.2): the untrained network outputs ε̂ = 0 and misses unit-variance noise by 1 per pixel",
    "b": "clearly below 1 (0.6 to 0.9)",
    "c": "far below 1 (under 0.6)",
    "d": "above 1.2: a random network's guesses add error on top of the noise",
}


def commit_first_loss_prediction(prediction) -> str:
    """Before the run: the first logged loss of the `Trainer` (the mean over its first logged steps)."""
    return commit_choice(prediction, FIRST_LOSS_CHOICES)


def first_loss_truth(first_loss: float) -> str:
    """The choice that the measured first loss falls in."""
    if first_loss >= 1.2:
        return "d"
    return "a" if first_loss >= 0.9 else "b" if first_loss >= 0.6 else "c"


def mean_min_snr_weight(diffusion: GaussianDiffusion) -> float:
    """The average over t ~ U{0..T−1} of the weight the diffusion's loss puts on ‖ε − ε̂‖² (1 without min-SNR-γ)."""
    from ..losses import min_snr_weight

    if diffusion.min_snr_gamma is None:
        return 1.0
    snr = diffusion.schedule.snr
    return float(min_snr_weight(snr, diffusion.min_snr_gamma, diffusion.parameterization).mean())


def reveal_first_loss(prediction, first_loss: float, diffusion: GaussianDiffusion) -> bool:
    """After the run: the measured first logged loss decides; the reasoning uses the run's own weighting."""
    w, gamma = mean_min_snr_weight(diffusion), diffusion.min_snr_gamma
    weighting = (f"but the Trainer's loss is min-SNR-γ weighted (γ = {gamma:g}): each sample's error is multiplied "
                 f"by min(SNR_t, γ)/SNR_t, which is below 1 for the almost clean steps, and over t ~ U{{0..T−1}} those "
                 f"weights average {w:.2f} (computed from this run's schedule). So an ε̂ = 0 network scores about "
                 f"{w:.2f}, not 1" if gamma is not None else
                 "and this run trains on plain L_simple, so an ε̂ = 0 network scores about 1")
    why = ("the U-Net's last layer starts at zero, so the untrained network outputs ε̂ = 0 and its squared error is "
           "‖ε‖²/D ≈ 1 per pixel at every t (not more: a zero guess is not a random one), " + weighting +
           "; the few first steps, still in the learning-rate warm-up, move it only a little.")
    return reveal_choice(prediction, first_loss_truth(first_loss), FIRST_LOSS_CHOICES, why,
                         measured=f"measured: {first_loss:.3f}")
