"""Helpers that work on any model of the package (a `UNet`, a `ToyMLP`, or a stand-in with a ``config``).

    sample_shape(model)        the shape of one sample the model makes, from ``model.config``
    with eval_mode(model):     run a block in eval mode, then give every submodule its mode back

The device a model lives on is `ddpm_lite.device.model_device`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch.nn as nn

__all__ = ["sample_shape", "eval_mode"]


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
