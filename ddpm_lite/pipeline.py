"""Text-to-image pipelines: one object from a prompt to pixels (diffusers' idea of a pipeline).

    pipe = TextToImage.from_pretrained("assets/checkpoints/mnist5k-sd")          # mini Stable Diffusion
    images = pipe(["a thick upside-down seven", "a small two"], guidance=3, steps=20, generator=g)

The stages, each a part of the package used as everywhere else:

1. **text → tokens → frozen text encoder** (`CLIPTextEncoder.encode`): per-token states and mask, with the
   empty prompt's encoding as the unconditional branch;
2. **the sampler loop with classifier-free guidance** (`samplers.sample` with a `TextCondition` as `y`):
   ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, c_∅);
3. **to pixels**: a latent model's autoencoder decodes (mini Stable Diffusion), or a cascade's
   **super-resolution stage** upsamples the base stage's output (mini Imagen: 14×14 → 28×28, conditioned on
   the upsampled image after noise-conditioning augmentation at level `aug_level`), or nothing (a single
   pixel-space stage).

On disk a single-stage pipeline is one checkpoint directory (its `text_encoder/` and, for latent models,
`autoencoder/` subfolders inside); a cascade is a directory with `pipeline.json` and one checkpoint folder per
stage (`base/`, `super_resolution/`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .conditioning import SuperResCondition
from .latent import decode_latents
from .models import eval_mode, sample_shape
from .samplers import sample as run_sampler
from .text_to_image import augment_low_res, upsample

PIPELINE_CONFIG = "pipeline.json"
DEFAULT_AUG_LEVEL = 50  # the noise-augmentation timestep the super-resolution stage is told at sampling time


class SuperResolutionStage:
    """A super-resolution diffusion model (UNet with `low_res_channels` and `aug_conditioning`) and its
    diffusion; text-conditioned only if its checkpoint carries a text encoder (Imagen's super-resolution models
    are, Cascaded Diffusion Models' are not; the shipped mini Imagen's is not)."""

    def __init__(self, model, diffusion, text_encoder=None, aug_max: int | None = None):
        self.aug_max = aug_max  # the largest augmentation level seen in training (None: unknown)
        if not model.config.get("low_res_channels"):
            raise ValueError("a super-resolution stage needs a UNet built with low_res_channels (trained with "
                             "`train --low-res N`)")
        self.model, self.diffusion, self.text_encoder = model, diffusion, text_encoder

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return sample_shape(self.model)

    @torch.no_grad()
    def __call__(self, low: torch.Tensor, prompts=None, aug_level: int = DEFAULT_AUG_LEVEL, steps: int = 20,
                 sampler: str = "ddim", guidance: float = 0.0, generator=None, threshold="static",
                 progress: bool = False) -> torch.Tensor:
        """Upsample `low` [B, C, h, w] in [-1, 1] to the stage's size: bilinear up, noise augmentation at
        timestep `aug_level` (the same q_sample as in training), then the sampler."""
        if self.aug_max is not None and aug_level > self.aug_max:
            import warnings

            warnings.warn(f"aug_level {aug_level} is above the largest augmentation level this stage was trained "
                          f"with ({self.aug_max}): expect it to ignore much of the low-resolution image")
        device = next(self.model.parameters()).device
        B = low.shape[0]
        up = upsample(low.to(device).float(), self.image_shape[1:])
        level = torch.full((B,), int(aug_level), dtype=torch.long, device=device)
        up = augment_low_res(self.diffusion, up, level, generator)
        text = None
        if self.text_encoder is not None and prompts is not None:
            text = self.text_encoder.encode(prompts)
        cond = SuperResCondition(up, level, text)
        with eval_mode(self.model):
            return run_sampler(self.model, self.diffusion, (B, *self.image_shape), sampler=sampler, steps=steps,
                               y=cond, guidance=guidance if text is not None else 0.0, threshold=threshold,
                               generator=generator, device=device, progress=progress)


class TextToImage:
    """Prompt → images: text encoder, text-conditioned diffusion model (+ autoencoder or super-resolution)."""

    def __init__(self, model, diffusion, text_encoder, autoencoder=None, super_resolution=None,
                 aug_level: int = DEFAULT_AUG_LEVEL, name: str | None = None):
        if text_encoder is None:
            raise ValueError("a text-to-image pipeline needs a text encoder (CLIPTextEncoder)")
        if model.config.get("context_dim") != text_encoder.width:
            raise ValueError(f"the UNet cross-attends to context of width {model.config.get('context_dim')}, the text "
                             f"encoder gives {text_encoder.width}: they were not trained together")
        self.model, self.diffusion, self.text_encoder = model, diffusion, text_encoder
        self.autoencoder, self.super_resolution = autoencoder, super_resolution
        self.aug_level = aug_level
        self.name = name
        self.source_dir = None  # the checkpoint directory it was loaded from, if any

    def __repr__(self) -> str:
        kind = ("latent (mini Stable Diffusion)" if self.autoencoder is not None else
                "cascade (mini Imagen)" if self.super_resolution is not None else "pixel")
        name = f"{self.name}, " if self.name else ""
        return f"TextToImage({name}{kind}: base {tuple(self.base_shape)} -> images {tuple(self.image_shape)})"

    # -- loading ---------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory, device="cpu") -> "TextToImage":
        """A single text-conditioned checkpoint (with its text_encoder/ and maybe autoencoder/ subfolders), or a
        cascade directory (pipeline.json + base/ + super_resolution/)."""
        directory = Path(directory)
        if (directory / PIPELINE_CONFIG).exists():
            spec = json.loads((directory / PIPELINE_CONFIG).read_text(encoding="utf-8"))
            base = cls.from_pretrained(directory / spec.get("base", "base"), device)
            sr_dir = directory / spec.get("super_resolution", "super_resolution")
            sr_model, sr_diffusion = ckpt.from_pretrained(sr_dir, device)
            sr_text = ckpt.load_text_encoder(sr_dir, device)
            aug_max = ckpt.load_config(sr_dir).get("extra", {}).get("text_to_image", {}).get("aug_max")
            base.super_resolution = SuperResolutionStage(sr_model, sr_diffusion, sr_text, aug_max)
            base.aug_level = int(spec.get("aug_level", DEFAULT_AUG_LEVEL))
            base.name = spec.get("name", directory.name)
            return base
        model, diffusion = ckpt.from_pretrained(directory, device)
        text_encoder = ckpt.load_text_encoder(directory, device)
        if text_encoder is None or "context_dim" not in model.config:
            raise ckpt.CheckpointError(f"{directory} is not a text-to-image checkpoint (no text encoder / "
                                       f"cross-attention): train one with `train --text-encoder CLIP_DIR`")
        pipe = cls(model, diffusion, text_encoder, ckpt.load_autoencoder(directory, device), name=directory.name)
        pipe.source_dir = directory
        return pipe

    # -- shapes ----------------------------------------------------------------------------------------------

    @property
    def base_shape(self) -> tuple[int, ...]:
        """Shape of what the text-conditioned model samples (a latent, or the base stage's image)."""
        return sample_shape(self.model)

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self.autoencoder is not None:
            return tuple(self.autoencoder.image_shape)
        if self.super_resolution is not None:
            return self.super_resolution.image_shape
        return self.base_shape

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- generating ------------------------------------------------------------------------------------------

    def encode(self, prompts):
        """The `TextCondition` of the prompts (unknown words raise a ValueError naming them)."""
        return self.text_encoder.encode(prompts).to(self.device)

    @torch.no_grad()
    def sample_base(self, prompts, guidance: float = 3.0, steps: int = 20, sampler: str = "ddim",
                    generator: torch.Generator | None = None, threshold: str | None = "auto",
                    percentile: float = 0.995, progress: bool = False) -> torch.Tensor:
        """Only the text-conditioned stage: its samples [N, *base_shape] (scaled latents for a latent model, the
        low-resolution images for a cascade), not decoded or upsampled. Arguments as for `__call__`."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        cond = self.encode(prompts)
        if threshold == "auto":
            threshold = None if self.autoencoder is not None else "static"
        with eval_mode(self.model):
            return run_sampler(self.model, self.diffusion, (len(prompts), *self.base_shape), sampler=sampler,
                               steps=steps, y=cond, guidance=guidance, threshold=threshold, percentile=percentile,
                               generator=generator, device=self.device, progress=progress)

    @torch.no_grad()
    def __call__(self, prompts, guidance: float = 3.0, steps: int = 20, sampler: str = "ddim",
                 generator: torch.Generator | None = None, threshold: str | None = "auto",
                 percentile: float = 0.995, sr_steps: int | None = None, sr_guidance: float = 0.0,
                 aug_level: int | None = None, return_stages: bool = False, progress: bool = False):
        """Images [N, C, H, W] in [-1, 1] for a prompt or a list of prompts (one image each).

        guidance: classifier-free guidance weight w against the empty prompt (0 = none). threshold: "static"
        (clip x̂_0 to [-1, 1]), "dynamic" (Imagen's percentile thresholding), None; "auto" = None in latent
        space (latents are unbounded), else "static". `percentile` 0.995 is Imagen's, for 64×64×3 = 12,288
        values per image; on a 14×14 base (196 values) it is set by the one brightest pixel, so use about 0.95
        there (notebook 11 shows both). With `return_stages` also returns the base stage's
        output (latent or low-resolution image) as {"base": ..., "images": ...}.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        base = self.sample_base(prompts, guidance, steps, sampler, generator, threshold, percentile, progress)
        if self.autoencoder is not None:
            images = decode_latents(self.autoencoder, base)
        elif self.super_resolution is not None:
            images = self.super_resolution(base, prompts, self.aug_level if aug_level is None else aug_level,
                                           steps=sr_steps or steps, sampler=sampler, guidance=sr_guidance,
                                           generator=generator, progress=progress)
        else:
            images = base
        images = images.float().clamp(-1, 1).cpu()
        return {"base": base.float().cpu(), "images": images} if return_stages else images


def save_cascade(directory, base_dir, sr_dir, aug_level: int = DEFAULT_AUG_LEVEL, name: str | None = None) -> Path:
    """Write a cascade pipeline directory: pipeline.json naming the two stage folders (which must already be
    inside `directory`, e.g. exported there)."""
    directory = Path(directory)
    for stage in (base_dir, sr_dir):
        if not (directory / stage / ckpt.CONFIG_NAME).exists():
            raise ckpt.CheckpointError(f"{directory / stage} is not a checkpoint: export the stage there first")
    spec = {"class": "TextToImage", "base": str(base_dir), "super_resolution": str(sr_dir),
            "aug_level": int(aug_level), "name": name or directory.name}
    ckpt.atomic_write_json(directory / PIPELINE_CONFIG, spec)
    return directory
