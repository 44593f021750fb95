"""Helpers that work on any model of the package (a `UNet`, a `ToyMLP`, or a stand-in with a ``config``).

    sample_shape(model)        the shape of one sample the model makes, from ``model.config``
    with eval_mode(model):     run a block in eval mode, then give every submodule its mode back
    check_t_and_y(...)         the timesteps and class labels a denoising network is called with

The device a model lives on is `ddpm_lite.device.model_device`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
import torch.nn as nn

__all__ = ["sample_shape", "eval_mode", "check_t_and_y"]


def sample_shape(model) -> tuple[int, ...]:
    """The shape of one sample (no batch dimension) that `model` makes, read from its ``config`` dict.

    `model` is a model with a ``config`` dict or such a dict itself (e.g. a checkpoint's ``model_config``):
    ``image_size`` (an int, or (H, W) for non-square images) with ``in_channels`` (default 1) gives
    (C, H, W); ``dim`` (the 2D toy models) gives (dim,). Raises ValueError when the config has neither.
    """
    cfg = model if isinstance(model, Mapping) else (getattr(model, "config", None) or {})
    if "image_size" in cfg:
        size = cfg["image_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(cfg.get("in_channels", 1)), int(h), int(w))
    if "dim" in cfg:
        return (int(cfg["dim"]),)
    raise ValueError("cannot tell the image shape from the model (its config has neither image_size nor dim): "
                     "pass image_shape=(C, H, W)")


@contextmanager
def eval_mode(model) -> Iterator:
    """``with eval_mode(model): ...`` runs the block with `model` in eval mode (dropout off, norms in inference
    mode) and afterwards gives every submodule back the mode it had, also when the block raises.

    Anything that is not an ``nn.Module`` (a plain function standing in for a network) is left alone.
    """
    if not isinstance(model, nn.Module):
        yield model
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def check_t_and_y(who: str, batch: int, t, y, num_classes: int | None) -> None:
    """Validate the `t` [B] and `y` ([B] integer labels in [0, num_classes], or None) of a network call
    ``model(x, t, y)`` with a batch of `batch`; `who` names the network in the ValueError."""
    if not torch.is_tensor(t) or t.shape != (batch,):
        got = f"shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"{who} expects t of shape [B] = ({batch},), got {got}")
    if y is None:
        return
    if num_classes is None:
        raise ValueError(f"this {who} is unconditional (num_classes=None) but labels y were given; pass y=None")
    if not torch.is_tensor(y) or y.shape != (batch,) or y.is_floating_point() or y.dtype == torch.bool:
        got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"{who} expects y as an integer tensor of shape [B] = ({batch},), got {got}")
    if batch > 0 and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}] ({num_classes} = null class), "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
