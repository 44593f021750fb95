"""Exponential moving average (EMA) of a model's weights, with warm-up and resumable state.

Diffusion models are sampled from an EMA of the training weights (Ho et al. 2020 use decay 0.9999): the raw
weights jitter from step to step, the average is much smoother and gives visibly cleaner samples.

    shadow ← d · shadow + (1 − d) · weights          after every optimizer step

Warm-up. With a fixed d = 0.9999 the average remembers about 1/(1 − d) = 10 000 steps, so for the first
few thousand steps it is still dominated by the *random initial weights*: sample from it early (or after a
short run) and you get pure noise even though the raw model has already learned something. This is the
classic "EMA too early → samples are noise" failure the course shows. We therefore ramp the decay up:

    d_step = min(decay, (1 + step) / (warmup + step))        (warmup = 10 by default)

which is 0.1 at step 0 (the shadow is almost a copy of the weights), 0.5 at step 8, 0.9 at step 80,
0.99 at step 890 and reaches 0.9999 only after ~90 000 steps. The average then always covers roughly the
last ~10% of training, which is what you want for both short and long runs. This is the schedule of
TensorFlow's `ExponentialMovingAverage(num_updates=...)`; `warmup=None` (or 0) disables it.

Buffers (e.g. BatchNorm running statistics) are not averaged: they are copied from the model at every
update, as they are already running averages themselves.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP, DataParallel
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


class EMA:
    """An exponential moving average of `model`'s parameters (a "shadow" copy of the model).

    Args:
        model: the model being trained (may be wrapped in DDP or torch.compile; it is unwrapped).
        decay: the target decay, e.g. 0.9999 (Ho et al. 2020). Must be in [0, 1).
        warmup: the constant of the warm-up `min(decay, (1 + step) / (warmup + step))`; None or 0 = no warm-up.

    Use:
        ema = EMA(model, decay=0.9999)
        ...  optimizer.step(); ema.update(model)
        samples = sample(ema.module, diffusion, ...)      # or ema.copy_to(other_model)
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: int | None = 10):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1) (e.g. 0.9999), got {decay}")
        if warmup is not None and warmup < 0:
            raise ValueError(f"EMA warmup must be None or >= 0 (e.g. 10), got {warmup}")
        self.decay = float(decay)
        self.warmup = int(warmup) if warmup else None
        self.step = 0  # number of update() calls so far
        self.module = copy.deepcopy(unwrap_model(model))
        self.module.eval()
        self.module.requires_grad_(False)

    def current_decay(self, step: int | None = None) -> float:
        """The decay used by the update at `step` (default: the next update)."""
        step = self.step if step is None else step
        if self.warmup is None:
            return self.decay
        return min(self.decay, (1.0 + step) / (self.warmup + step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow ← d · shadow + (1 − d) · weights, for every parameter; buffers are copied."""
        model = unwrap_model(model)
        d = self.current_decay()
        shadow_params = dict(self.module.named_parameters())
        floats_s, floats_p = [], []
        for name, p in model.named_parameters():
            s = shadow_params.get(name)
            if s is None:
                raise ValueError(f"EMA.update: parameter {name!r} is not in the EMA copy; was the model changed "
                                 f"after the EMA was created? Create the EMA from the final model.")
            if s.is_floating_point():
                floats_s.append(s)
                floats_p.append(p.detach().to(s.dtype))
            else:
                s.copy_(p)
        if floats_s:
            # s + (1 - d)(p - s) = d s + (1 - d) p, for all parameters in one multi-tensor kernel (on the CPU
            # a Python loop of ~100 small lerp_ calls costs a few percent of a digits training step)
            torch._foreach_lerp_(floats_s, floats_p, 1.0 - d)
        shadow_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            if name in shadow_buffers:
                shadow_buffers[name].copy_(b)
        self.step += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Copy the averaged weights (and buffers) into `model` (unwrapped if needed)."""
        unwrap_model(model).load_state_dict(self.module.state_dict())

    def averaged_model(self) -> nn.Module:
        """The averaged model (in eval mode); the same object as `ema.module`."""
        return self.module

    def to(self, device=None, dtype=None) -> "EMA":
        self.module.to(device=device, dtype=dtype)
        return self

    def state_dict(self) -> dict:
        """{'decay', 'warmup', 'step', 'shadow': the averaged model's state_dict}."""
        return {"decay": self.decay, "warmup": self.warmup, "step": self.step, "shadow": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        missing = {"step", "shadow"} - set(state)
        if missing:
            raise ValueError(f"EMA.load_state_dict: missing keys {sorted(missing)}; expected a dict from EMA.state_dict()")
        self.decay = float(state.get("decay", self.decay))
        self.warmup = state.get("warmup", self.warmup) or None
        self.step = int(state["step"])
        self.module.load_state_dict(state["shadow"])

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, warmup={self.warmup}, step={self.step}, next decay={self.current_decay():.6f})"
