"""ddpm_lite: a small but complete DDPM package, the engine of the ddpm-lite course.

Model, noise schedule and sampling loop are kept apart:

    schedules.NoiseSchedule        β_t and every coefficient derived from it
    diffusion.GaussianDiffusion    q (forward), p (reverse), losses, the variational bound
    samplers                       ddpm / ddim / dpm_solver_pp_2m over a denoiser, guidance, thresholding
    unet.UNet, toy_mlp.ToyMLP      the networks
    data, train, checkpoint        datasets, the trainer, save_pretrained / from_pretrained
    toys, oracle                   2D toys with exact scores; what samplers and guidance do with a perfect model

Submodules are imported lazily, so `import ddpm_lite` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "schedules", "diffusion", "losses", "samplers", "toys", "unet", "toy_mlp", "data", "ema", "checkpoint",
    "train", "distributed", "metrics", "classifier", "plots", "widgets", "exercises", "device", "oracle",
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "GaussianDiffusion":
        return importlib.import_module(".diffusion", __name__).GaussianDiffusion
    if name == "NoiseSchedule":
        return importlib.import_module(".schedules", __name__).NoiseSchedule
    raise AttributeError(f"module 'ddpm_lite' has no attribute {name!r}")


__all__ = list(_SUBMODULES) + ["GaussianDiffusion", "NoiseSchedule", "__version__"]
