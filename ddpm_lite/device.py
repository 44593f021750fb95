"""Which device to run on: CUDA when present, then Apple's MPS, else the CPU."""

from __future__ import annotations

import torch


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" → cuda > mps > cpu; otherwise the named device, with a clear error if it is not available."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} was asked for but CUDA is not available here: use 'cpu' or 'auto'")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(name)!r} was asked for but MPS is not available here: use 'cpu' or 'auto'")
    return device


def model_device(model, default="cpu") -> torch.device:
    """The device of a model's first parameter or buffer (`default` for a plain function or an empty module)."""
    for getter in ("parameters", "buffers"):
        tensors = getattr(model, getter, None)
        if tensors is not None:
            for tensor in tensors():
                return tensor.device
    return torch.device(default)
