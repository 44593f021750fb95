"""Training: `TrainConfig` (every knob, with defaults that train digits in about a minute on a laptop CPU) and
`Trainer` (the loop).

    from ddpm_lite.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(dataset="digits", max_seconds=60))
    history = trainer.train()                 # list of {step, loss, lr, images_per_sec, time}
    trainer.samples[-1]["images"]             # the last sample grid, in [-1, 1]

One training step (Ho et al. 2020, Algorithm 1, plus the usual modern extras):

    x0, y  ← next batch; with probability label_dropout replace y by the null class (for guidance)
    loss   ← diffusion.training_losses(model, x0, y=y).mean()      (t ~ U{0..T-1}, ε ~ N(0, I))
    backward (accumulated over grad_accum micro-batches), clip the gradient norm, AdamW step
    EMA update of the weights (sampling uses the EMA weights)

Learning rate: linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio * lr` at `max_steps`
(a pure function of the step, as in nanoGPT, so it needs no state to resume). With no `max_steps` (a run
bounded only by `max_seconds`) the cosine runs over the wall-clock budget of the train() call instead, so a
60-second run still ends at a low LR (such a run is, by nature, not bit-reproducible).

Outputs, in `out_dir` (rank 0 only):

    checkpoint/            save_pretrained format (config.json, model/ema safetensors, trainer state;
                           autoencoder/ for a latent model)
    samples/step_XXXXXX.png   sample grids from the EMA model
    history.json           the logged history

Resuming is exact: the data order and the (t, ε, label-dropout) draws come from two torch.Generators whose
states are saved with the optimizer, EMA and the global RNG states (for dropout), so N steps straight and
N/2 + save + resume + N/2 give bit-identical weights on the CPU.

Objectives: the loop above trains whatever `objective.training_losses(model, x, y=y, generator=...)["loss"]`
([B], averaged) defines. `objective="diffusion"` (default) uses the `GaussianDiffusion`; `objective="autoencoder"`
trains latent diffusion's first stage, an `AutoencoderKL`, with `autoencoder.AutoencoderObjective` (LDM's
reconstruction + β·KL, Rombach et al. 2022) through the same loop: progress bar, NaN guard, EMA, exact resume,
atomic checkpoints and Ctrl-C all as above. Its "sample grids" are reconstructions of a fixed batch (the first
`sample_n` training images; originals and reconstructions in alternating rows), and the end of `train()` and
every checkpoint store the latent scale factor (1 / std of the EMA model's latents over the training data, `measure_scale_factor`)
in the autoencoder's config. `autoencoder=DIR` trains a *latent* diffusion model: the frozen autoencoder of DIR
encodes the dataset once (posterior means × scale factor, see `ddpm_lite.latent`), the ordinary diffusion
objective trains the `latent` UNet preset on those latents, sample grids are decoded, and the checkpoint
carries the autoencoder in its `autoencoder/` subfolder (see `ddpm_lite.checkpoint`). `objective="clip"` trains
a `ddpm_lite.clip.CLIP` with `ClipObjective`: each batch is captioned on the fly (`ddpm_lite.captions`: the
labels, attributes measured from the pixels with thresholds from this training data's quantiles, random
transformations; the caption RNG is seeded from the noise generator, so resume stays exact) and the symmetric
InfoNCE loss is minimised; instead of sample grids it records the zero-shot accuracy on training digits.

Ctrl-C (KeyboardInterrupt) during `train()` saves a checkpoint (atomically) and `train()` returns normally
with `trainer.interrupted = True`, so a notebook keeps its trainer and a later `train()` call continues.

A NaN/inf in a batch or in the loss stops training with `NonFiniteError`, naming the step (and, for data, how
many samples of the batch are bad and which dataset indices hold NaN/inf); nothing is saved, so the last
checkpoint on disk stays the last good one. On the CPU the check runs before every step (the bad step is never
applied); on a GPU it runs at log / save / sample steps, where the loop synchronises anyway.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint as ckpt
from . import distributed
from .autoencoder import RECON_LOSSES
from .data import KNOWN_DATASETS
from .device import pick_device
from .diffusion import LOSS_TYPES, PARAMETERIZATIONS
from .ema import EMA
from .models import eval_mode
from .samplers import SAMPLERS
from .schedules import SCHEDULES
from .unet import PRESETS

LR_SCHEDULES = ("cosine", "constant")
OBJECTIVES = ("diffusion", "autoencoder", "clip")
AMP_MODES = ("auto", "bf16", "off")
PRESET_CHOICES = ("auto", "toy_mlp", *PRESETS)  # what `preset` accepts (see default_model)


# Batch size, peak LR and min-SNR γ per model preset (or dataset, with preset="auto"), used where TrainConfig
# leaves batch_size / lr None or min_snr_gamma "auto". digits: tuned for the most quality in a 60-second CPU
# run (many small steps, a high LR, min-SNR γ = 1; see the tuning log in benchmarks/README.md); cifar10: Ho
# et al. 2020's 2e-4 with batch 128; mnist in between. γ = 5 (Hang et al. 2023's choice) unless a recipe says
# otherwise.
RECIPES: dict[str, dict] = {
    "digits": dict(batch_size=64, lr=3e-3, min_snr_gamma=1.0),
    "mnist5k": dict(batch_size=64, lr=1e-3),
    "mnist": dict(batch_size=128, lr=5e-4),
    "fashion_mnist": dict(batch_size=128, lr=5e-4),
    "cifar10": dict(batch_size=128, lr=2e-4),
    "toy_mlp": dict(batch_size=256, lr=1e-3),
    "latent": dict(batch_size=64, lr=1e-3),
    # text-to-image: as the class-conditional recipes (the UNet gains cross-attention; no label dropout)
    "text": dict(batch_size=64, lr=1e-3),
    "text_latent": dict(batch_size=64, lr=1e-3),
    # objective="autoencoder" (any dataset): Adam at 1e-3 trains the small AutoencoderKL in minutes; no min-SNR
    "autoencoder": dict(batch_size=64, lr=1e-3, min_snr_gamma=None),
    # objective="clip": large batches (more negatives per caption) and CLIP's 5e-4 (Radford et al. 2021, App. F)
    "clip": dict(batch_size=256, lr=5e-4, min_snr_gamma=None),
    **{name: dict(batch_size=256, lr=1e-3) for name in ("moons", "swiss_roll", "gmm")},
}
DEFAULT_RECIPE = dict(batch_size=128, lr=1e-3)
DEFAULT_MIN_SNR_GAMMA = 5.0
_RECIPE_UNSET = {"batch_size": None, "lr": None, "min_snr_gamma": "auto"}  # the values a recipe fills in


def _knob(default, help: str, *, choices=None, group: str | None = None, factory=None):
    """A TrainConfig field with its documentation in `metadata`: "help" (the text of `--help`), "choices" (the
    values the command line accepts, taken from the package's own constants) and "group" (starts a section of
    the `train --help` listing; the following fields belong to it). `python -m ddpm_lite train` builds one flag
    per field from these, so the command line cannot drift from the config."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if group is not None:
        metadata["group"] = group
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every setting of a training run. The defaults train class-conditional digits for 60 s on the CPU.

    Each field's `metadata` holds its help text (and, where the values are a fixed set, the choices): the
    `train` command line is generated from it, one `--field-name` flag per field.
    """

    # data and model
    dataset: str = _knob("digits", "dataset name (a ddpm_lite.data.load_dataset name; the Trainer also accepts "
                                   "a dataset object with any name)", choices=KNOWN_DATASETS, group="data and model")
    preset: str = _knob("auto", "model: a UNet preset, toy_mlp (2-D points) or auto (the dataset's own preset, "
                                "toy_mlp for 2-D points, latent with --autoencoder)", choices=PRESET_CHOICES)
    objective: str = _knob("diffusion", "what to train: a diffusion model, the autoencoder of latent diffusion "
                                        "(an AutoencoderKL; `train-autoencoder` is this with only the flags that "
                                        "apply) or a CLIP on captioned digits (`train-clip`)", choices=OBJECTIVES)
    autoencoder: str | None = _knob(None, "latent diffusion (Rombach et al. 2022): an autoencoder checkpoint (from "
                                          "train-autoencoder) whose scaled latents the diffusion model learns; the "
                                          "dataset is encoded once and the checkpoint carries the autoencoder")
    model_kwargs: dict = _knob(None, "overrides of the preset's constructor arguments, e.g. "
                                     "{\"base_channels\": 32, \"attention_resolutions\": [4]}", factory=dict)
    conditional: bool = _knob(True, "class-conditional model (labels + a null class for guidance)")
    label_dropout: float = _knob(0.1, "probability of replacing a label by the null class: trains the "
                                      "unconditional model for classifier-free guidance")
    hflip: bool = _knob(False, "random left-right flips of the training images (Ho et al. 2020 on CIFAR-10)")
    # diffusion
    timesteps: int = _knob(1000, "number of diffusion steps T", group="diffusion")
    schedule: str = _knob("linear", "noise schedule", choices=SCHEDULES)
    parameterization: str = _knob("eps", "model target: the noise eps, the clean image x0 or the velocity v",
                                  choices=PARAMETERIZATIONS)
    loss_type: str = _knob("l2", "regression loss on the target", choices=LOSS_TYPES)
    min_snr_gamma: float | str | None = _knob(
        "auto", "min-SNR-gamma loss weighting (Hang et al. 2023); none = plain L_simple of Ho et al.; auto = the "
                "recipe for the preset/dataset (1 for digits, else 5; see ddpm_lite.train.RECIPES)",
        choices=("auto",))
    timestep_sampling: str = _knob("uniform", "how training draws t: uniform (Algorithm 1, times the loss weight) or "
                                              "importance (t in proportion to the min-SNR weight, times its mean: "
                                              "the same objective, less noise)",
                                   choices=("uniform", "importance"))
    # text-to-image (objective=diffusion with text_encoder set)
    text_encoder: str | None = _knob(None, "text-to-image (mini Stable Diffusion / Imagen): a CLIP checkpoint (from "
                                           "train-clip) whose frozen text tower's per-token states the UNet "
                                           "cross-attends to; batches are captioned by ddpm_lite.captions and the "
                                           "checkpoint carries the text encoder", group="text-to-image")
    text_states: str = _knob("final", "text-to-image: which per-token states of the frozen text tower the UNet "
                                      "reads: final (the transformer's output, Stable Diffusion), embeddings (each "
                                      "token's own embedding + position: no context), both (the two sequences)",
                             choices=("final", "embeddings", "both"))
    caption_dropout: float = _knob(0.1, "text-to-image: probability of replacing a caption by the empty prompt "
                                        "(trains the unconditional branch of classifier-free guidance)")
    caption_transforms: str = _knob("all", "text-to-image: the caption transformations drawn, comma-separated "
                                           "names of ddpm_lite.captions.TRANSFORMS, or all")
    resolution: int | None = _knob(None, "text-to-image: train on the images resized to this size (a cascade's "
                                         "base stage, e.g. 14)")
    low_res: int | None = _knob(None, "text-to-image: train a super-resolution stage from this size to the "
                                      "dataset's (e.g. 14 -> 28), with noise-conditioning augmentation; "
                                      "text-conditioned only if text_encoder is set")
    aug_max: int = _knob(250, "super-resolution: the largest noise-augmentation timestep of the low-res input")
    # the autoencoder objective
    kl_weight: float = _knob(1e-6, "objective=autoencoder: weight beta of the KL term (LDM's KL-reg; per image, "
                                   "against the reconstruction summed over pixels)", group="autoencoder")
    recon: str = _knob("l1", "objective=autoencoder: reconstruction loss", choices=RECON_LOSSES)
    # optimisation
    batch_size: int | None = _knob(None, "batch size per process and micro-step (none: the recipe for the "
                                         "preset/dataset, e.g. digits 64, cifar10 128); the effective batch is "
                                         "batch_size * grad_accum * world size", group="optimisation")
    lr: float | None = _knob(None, "peak AdamW learning rate (none: the recipe, e.g. digits 3e-3, cifar10 2e-4)")
    weight_decay: float = _knob(0.0, "AdamW weight decay (weight matrices and kernels only)")
    warmup_steps: int = _knob(100, "linear learning-rate warm-up steps")
    lr_schedule: str = _knob("cosine", "learning rate after warm-up: cosine decays to min_lr_ratio * lr at "
                                       "max_steps (or, with only max_seconds, over the wall-clock budget)",
                             choices=LR_SCHEDULES)
    min_lr_ratio: float = _knob(0.1, "final learning rate of the cosine schedule, as a fraction of lr")
    grad_clip: float | None = _knob(1.0, "gradient-norm clip (none = off)")
    grad_accum: int = _knob(1, "gradient accumulation micro-steps per optimizer step")
    ema_decay: float = _knob(0.9999, "EMA decay of the weights used for sampling")
    ema_warmup: int | None = _knob(10, "EMA warm-up: decay_t = min(ema_decay, (1 + t) / (ema_warmup + t)); "
                                       "none = off (see ddpm_lite.ema)")
    # when to stop (whichever comes first)
    max_steps: int | None = _knob(None, "stop after this many optimizer steps (none = no step limit)",
                                  group="duration")
    max_seconds: float | None = _knob(60.0, "stop after this many seconds of one train() call (none = no time "
                                            "limit)")
    # speed
    device: str = _knob("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps", group="speed")
    amp: str = _knob("auto", "mixed precision: auto = bf16 autocast on CUDA (if supported), bf16, off",
                     choices=AMP_MODES)
    compile: bool = _knob(False, "torch.compile the model")
    channels_last: bool = _knob(False, "channels-last memory format (faster on recent GPUs)")
    num_threads: int | None = _knob(None, "CPU threads for PyTorch (none = PyTorch's default)")
    # bookkeeping
    seed: int = _knob(0, "random seed (init, data order, noise)", group="output")
    log_every: int = _knob(10, "steps between history entries (and progress-bar updates of the loss)")
    sample_every: int = _knob(0, "steps between sample grids (0 = only at the end)")
    sample_n: int = _knob(64, "images in each sample grid")
    sampler: str = _knob("ddim", "sampler for the sample grids", choices=SAMPLERS)
    sample_steps: int = _knob(50, "sampler steps for the sample grids")
    sample_guidance: float = _knob(0.0, "classifier-free guidance weight w for the sample grids (0 = none)")
    save_every: int = _knob(1000, "steps between checkpoints (0 = only at the end)")
    out_dir: str | None = _knob("auto", "run directory for the checkpoint, sample grids and history; "
                                        "auto = runs/<dataset>; none = keep everything in memory")
    progress: bool = _knob(True, "tqdm progress bar")
    resume: str | None = _knob(None, "a checkpoint or run directory to continue from")

    def resolved(self) -> "TrainConfig":
        """A copy with batch_size / lr left None and min_snr_gamma left "auto" filled in from `RECIPES`."""
        if self.objective in ("autoencoder", "clip"):
            key = self.objective
        elif self.text_encoder and self.preset == "auto":
            key = "text_latent" if self.autoencoder else "text"
        elif self.preset != "auto":
            key = self.preset
        else:
            key = "latent" if self.autoencoder else self.dataset
        recipe = {"min_snr_gamma": DEFAULT_MIN_SNR_GAMMA, **RECIPES.get(key, DEFAULT_RECIPE)}
        values = {k: v for k, v in recipe.items() if getattr(self, k) == _RECIPE_UNSET[k]}
        return replace(self, **values) if values else self

    def validate(self) -> "TrainConfig":
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)

        need(self.batch_size is not None and self.lr is not None,
             "batch_size and lr must be set: call TrainConfig.resolved() to take them from the recipe")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.min_snr_gamma is None or (isinstance(self.min_snr_gamma, (int, float)) and self.min_snr_gamma > 0),
             f"min_snr_gamma must be a positive number, None (off) or 'auto' (the recipe), got {self.min_snr_gamma!r}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(0.0 <= self.label_dropout < 1.0, f"label_dropout must be in [0, 1), got {self.label_dropout}")
        need(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.lr_schedule in LR_SCHEDULES,
             f"unknown lr_schedule {self.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
        need(self.amp in AMP_MODES, f"unknown amp mode {self.amp!r}: expected one of {', '.join(AMP_MODES)}")
        need(self.max_steps is None or self.max_steps >= 0, f"max_steps must be >= 0 or None, got {self.max_steps}")
        need(self.max_seconds is None or self.max_seconds > 0,
             f"max_seconds must be > 0 or None, got {self.max_seconds}")
        need(self.max_steps is not None or self.max_seconds is not None,
             "set max_steps or max_seconds (or both): otherwise training never stops")
        need(self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        need(self.sample_n >= 1 and self.sample_steps >= 1, "sample_n and sample_steps must be >= 1")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(self.sample_every >= 0 and self.save_every >= 0, "sample_every and save_every must be >= 0 (0 = at the end)")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}")
        need(self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")
        need(isinstance(self.model_kwargs, dict), f"model_kwargs must be a dict, got {type(self.model_kwargs).__name__}")
        need(self.objective in OBJECTIVES,
             f"unknown objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        need(self.recon in RECON_LOSSES, f"unknown recon {self.recon!r}: expected one of {', '.join(RECON_LOSSES)}")
        need(self.kl_weight >= 0, f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.objective == "autoencoder":
            need(not self.autoencoder, "objective='autoencoder' trains an autoencoder; autoencoder= (a latent "
                                       "diffusion model's first stage) does not apply")
            need(self.preset == "auto", f"preset {self.preset!r} is a diffusion network; objective='autoencoder' "
                                        f"builds an AutoencoderKL: size it with model_kwargs (e.g. "
                                        f"{{\"channels\": [32, 64], \"latent_channels\": 4}})")
        if self.objective == "clip":
            need(not self.autoencoder and self.preset == "auto",
                 "objective='clip' builds a ddpm_lite.clip.CLIP: size it with model_kwargs (e.g. {\"embed_dim\": "
                 "64, \"text_layers\": 2}); preset= and autoencoder= do not apply")
            need(not self.hflip, "hflip does not apply to CLIP: a mirrored digit no longer matches its caption "
                                 "(a mirrored 7 slants the other way; left and right swap)")
        if self.text_encoder or self.resolution or self.low_res:
            need(self.objective == "diffusion", "text_encoder / resolution / low_res are for objective='diffusion'")
            need(bool(self.text_encoder or self.low_res), "resolution is the base stage of a text-to-image "
                                                          "cascade: set text_encoder too")
            need(0.0 <= self.caption_dropout < 1.0, f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
            need(not self.hflip, "hflip does not apply to text-to-image: a mirrored digit no longer matches its "
                                 "caption")
            need(not (self.low_res and (self.resolution or self.autoencoder)),
                 "a super-resolution stage (low_res) works in pixel space at the dataset's size: no resolution or "
                 "autoencoder")
            need(not (self.resolution and self.autoencoder), "resolution (a pixel cascade's base) and autoencoder "
                                                             "(latent diffusion) exclude each other")
            need(self.aug_max >= 0, f"aug_max must be >= 0, got {self.aug_max}")
            if self.caption_transforms != "all":
                from .captions import check_transforms
                check_transforms(t.strip() for t in self.caption_transforms.split(",") if t.strip())
        if self.autoencoder:
            need(not self.hflip, "hflip does not apply to latent diffusion: the dataset is encoded once, and a "
                                 "flipped latent is not the latent of the flipped image")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)


# -- building the default model and data --------------------------------------------------------------------

def _dataset_tensors(dataset):
    """(images [N, ...] float, labels [N] long or None, info dict) from a dataset object or tensors.

    info holds what the dataset object knows: "name", "num_classes" (None = unlabelled), "classes" (names).
    """
    if torch.is_tensor(dataset):
        return dataset.float(), None, {"num_classes": None}
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
        info = {}
    else:
        images = getattr(dataset, "images", None)
        labels = getattr(dataset, "labels", None)
        if images is None:
            raise ValueError("dataset must be a tensor of images, an (images, labels) pair or an object with "
                             f".images and .labels, got {type(dataset).__name__}")
        info = {key: getattr(dataset, key) for key in ("name", "num_classes", "classes") if hasattr(dataset, key)}
    images = torch.as_tensor(images).float()
    labels = None if labels is None else torch.as_tensor(labels).long()
    if labels is not None and labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape [N] = [{images.shape[0]}], got {tuple(labels.shape)}")
    if labels is None:
        info["num_classes"] = None
    return images, labels, info


def default_model(config: TrainConfig, sample_shape: tuple, num_classes: int | None,
                  context_dim: int | None = None) -> nn.Module:
    """The default network for a dataset: a UNet preset for images (`latent` for latents), ToyMLP for 2-D
    points; with objective="autoencoder" an `AutoencoderKL` for the image shape (its defaults + model_kwargs)."""
    from .unet import PRESETS, unet_preset

    if config.objective == "clip":
        from .clip import CLIP

        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(f"CLIP needs square images [C, H, H]; dataset {config.dataset!r} has samples of "
                             f"shape {tuple(sample_shape)}")
        return CLIP(**{"image_size": sample_shape[1], "in_channels": sample_shape[0], **config.model_kwargs})
    if config.objective == "autoencoder":
        from .autoencoder import AutoencoderKL

        if len(sample_shape) != 3:
            raise ValueError(f"an autoencoder needs images [C, H, W]; dataset {config.dataset!r} has samples of "
                             f"shape {tuple(sample_shape)}")
        channels, h, w = sample_shape
        return AutoencoderKL(**{"image_size": h if h == w else [h, w], "in_channels": channels,
                                **config.model_kwargs})
    preset = config.preset
    if preset == "auto":
        if config.autoencoder:
            preset = "latent"
        elif len(sample_shape) == 1:
            preset = "toy_mlp"
        elif config.dataset in PRESETS:
            preset = config.dataset
        elif config.dataset in ("mnist", "fashion_mnist"):
            preset = "mnist"
        else:
            raise ValueError(f"no default model for dataset {config.dataset!r}: choose preset= one of "
                             f"{sorted(PRESETS) + ['toy_mlp']}")
    kwargs = dict(config.model_kwargs)
    if preset == "toy_mlp":
        from .toy_mlp import ToyMLP

        return ToyMLP(**{"dim": sample_shape[0], "num_classes": num_classes, **kwargs})
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected 'auto', 'toy_mlp' or one of {sorted(PRESETS)}")
    channels, *size = sample_shape
    if len(size) != 2:
        raise ValueError(f"a UNet needs images [C, H, W]; dataset {config.dataset!r} has samples of shape "
                         f"{tuple(sample_shape)}")
    image_size = size[0] if size[0] == size[1] else list(size)
    extras = {}
    if context_dim is not None:  # text-to-image: cross-attention instead of class labels
        extras = {"context_dim": context_dim, "num_classes": None}
    if config.low_res:  # a super-resolution stage: the low-res image as input channels, its noise level embedded
        extras.update(low_res_channels=channels, aug_conditioning=True, num_classes=None)
    return unet_preset(preset, **{"image_size": image_size, "in_channels": channels, "num_classes": num_classes,
                                  **extras, **kwargs})


class NonFiniteError(RuntimeError):
    """Training met a NaN/inf batch or loss and stopped without saving: the last checkpoint on disk is the
    last good one. `step` is the first bad step (1-based, as in `history`), `kind` is "data" or "loss" ("" when
    only another DDP process saw it), `bad_samples` the number of bad samples in that batch (data)."""

    def __init__(self, message: str, step: int, kind: str, bad_samples: int = 0):
        super().__init__(message)
        self.step, self.kind, self.bad_samples = step, kind, bad_samples


def _generator_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")  # MPS generators are not universal


# -- the trainer --------------------------------------------------------------------------------------------

class Trainer:
    """Trains a diffusion model; see the module docstring.

    Args:
        config: a `TrainConfig` (default: `TrainConfig()`).
        model: a network `model(x, t, y)`; default: built from `config.preset` for the dataset.
        diffusion: a `GaussianDiffusion`; default: built from the config's schedule settings.
        dataset: a `load_dataset` result, an (images, labels) pair or an images tensor;
            default: `load_dataset(config.dataset)`.

    Attributes: `history` (list of dicts), `samples` (list of {"step", "images"}), `step`, `model` (what is
    trained, maybe wrapped), `raw_model` (the plain module), `ema`, `optimizer`, `diffusion`, `out_dir`.
    """

    def __init__(self, config: TrainConfig | None = None, model: nn.Module | None = None, diffusion=None,
                 dataset=None):
        self.config = config = (config or TrainConfig()).resolved().validate()
        self.dist = distributed.env_info()
        # one device per process: with torchrun on GPUs, process LOCAL_RANK uses cuda:LOCAL_RANK
        device = pick_device(config.device)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.dist = distributed.setup(device.type)
        self.is_main = self.dist.is_main
        if config.num_threads:
            torch.set_num_threads(config.num_threads)

        resume_dir = ckpt.resolve_checkpoint_dir(config.resume) if config.resume else None
        self.kind = kind = config.objective  # "diffusion", "autoencoder" or "clip"
        is_autoencoder = kind == "autoencoder"
        resume_config = ckpt.load_config(resume_dir, diffusion=kind == "diffusion") if resume_dir else None
        expected = {"autoencoder": "AutoencoderKL", "clip": "CLIP"}
        if resume_config is not None and (
                resume_config["model_class"] != expected[kind] if kind in expected else
                resume_config["model_class"] in expected.values()):
            raise ckpt.CheckpointError(f"cannot resume {resume_dir} with objective={config.objective!r}: it holds a "
                                       f"{resume_config['model_class']}")

        # data: kept in memory, on the training device (no DataLoader workers needed for these sizes)
        if dataset is None:
            from .data import load_dataset

            dataset = load_dataset(config.dataset)
        images, labels, self.dataset_info = _dataset_tensors(dataset)
        if images.ndim < 2 or images.shape[0] == 0:
            raise ValueError(f"the dataset must hold at least one sample [N, ...], got shape {tuple(images.shape)}")
        # latent diffusion: the frozen autoencoder (the resumed checkpoint's own copy, else config.autoencoder)
        # encodes the dataset once; from here on the "images" are scaled latents
        self.autoencoder = None
        self.text_encoder = None  # text-to-image: the frozen CLIP text tower (the checkpoint's own copy on resume)
        # captioned training (text-to-image stages): transformations and captions per batch
        self.captioned = bool(config.text_encoder or config.low_res)
        if config.text_encoder:
            self.text_encoder = self._load_text_encoder(config.text_encoder, resume_dir, device)
            if resume_dir is None:  # a resumed run keeps the states its checkpoint's encoder was trained on
                self.text_encoder.states = config.text_states
        if self.captioned:
            if labels is None:
                raise ValueError(f"text-to-image captions name the digit: dataset {config.dataset!r} has no labels")
        if config.autoencoder:
            self.autoencoder = self._load_autoencoder(config.autoencoder, resume_dir, device)
            if self.text_encoder is None:  # class-conditional: encode once. Text: per batch, after transforming
                images = self._encode_dataset(images.to(device))
                # ~1 when the scale factor (measured on sampled latents, LDM's definition) fits these mean
                # latents; below 1 for an autoencoder trained too briefly, whose posterior σ is still large
                self.latent_std = float(images.double().std())
            else:
                self._encode_dataset(images[:1].to(device))  # checks the image shape against the autoencoder
                self.latent_std = None
        self.images = images.to(device)
        self.labels = labels.to(device) if labels is not None else None
        self.sample_shape = tuple(images.shape[1:])
        if self.captioned and self.autoencoder is not None:
            self.sample_shape = tuple(self.autoencoder.latent_shape)
        elif self.captioned and config.resolution:
            self.sample_shape = (images.shape[1], config.resolution, config.resolution)
        global_batch = config.batch_size * self.dist.world_size
        if global_batch > images.shape[0]:
            raise ValueError(f"batch_size * world_size = {global_batch} exceeds the dataset size {images.shape[0]}: "
                             f"lower batch_size")

        # model and diffusion (same seed on every rank, so every replica starts identical)
        torch.manual_seed(config.seed)
        if model is None:
            if resume_config is not None:
                model = ckpt.model_from_config(resume_config)
            else:
                num_classes = None
                if config.conditional and kind == "diffusion" and not self.captioned:
                    if labels is None or ("num_classes" in self.dataset_info and not self.dataset_info["num_classes"]):
                        raise ValueError(f"conditional=True needs class labels but dataset {config.dataset!r} has "
                                         f"none: use conditional=False (CLI: --no-conditional)")
                    num_classes = int(self.dataset_info.get("num_classes") or int(labels.max()) + 1)
                model = default_model(config, self.sample_shape, num_classes,
                                      context_dim=self.text_encoder.width if self.text_encoder is not None else None)
        if kind == "clip":
            from .captions import AttributeThresholds
            from .clip import CLIP, ClipObjective

            if diffusion is not None:
                raise ValueError("objective='clip' trains with ClipObjective: pass no diffusion")
            if not isinstance(ckpt.unwrap_model(model), CLIP):
                raise ValueError(f"objective='clip' trains a ddpm_lite.clip.CLIP, got a {type(model).__name__}")
            if labels is None:
                raise ValueError(f"CLIP captions name the digit: dataset {config.dataset!r} has no labels")
            if ckpt.unwrap_model(model).thresholds is None:  # "thin"/"thick"... from this training data's quantiles
                ckpt.unwrap_model(model).set_thresholds(AttributeThresholds.from_images(images.cpu()))
            self.diffusion = None
            self.objective = ClipObjective()
        elif is_autoencoder:
            from .autoencoder import AutoencoderKL, AutoencoderObjective

            if diffusion is not None:
                raise ValueError("objective='autoencoder' trains with AutoencoderObjective: pass no diffusion")
            if not isinstance(ckpt.unwrap_model(model), AutoencoderKL):
                raise ValueError(f"objective='autoencoder' trains an AutoencoderKL, got a {type(model).__name__}")
            self.diffusion = None
            self.objective = AutoencoderObjective(config.kl_weight, config.recon)
        elif diffusion is None:
            if resume_config is not None:
                diffusion = ckpt.diffusion_from_config(resume_config)
            else:
                from .diffusion import GaussianDiffusion

                diffusion = GaussianDiffusion(schedule=config.schedule, timesteps=config.timesteps,
                                              parameterization=config.parameterization, loss_type=config.loss_type,
                                              min_snr_gamma=config.min_snr_gamma,
                                              timestep_sampling=config.timestep_sampling)
        if kind == "diffusion":
            self.diffusion = diffusion.to(device)
            self.objective = self.diffusion  # what one training step minimises: objective.training_losses
            if self.captioned:
                self.objective = self._text_objective(images)
        self.num_classes = getattr(model, "num_classes", None)
        if self.num_classes is not None and self.labels is None:
            raise ValueError("the model is class-conditional (num_classes set) but the dataset has no labels")

        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        self.ema = EMA(model, decay=config.ema_decay, warmup=config.ema_warmup)
        self.optimizer = self._make_optimizer(model)
        if config.compile:
            model = torch.compile(model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = model

        # autocast: bf16 needs no loss scaling, so it is the only mode offered
        amp = config.amp
        if amp == "auto":
            amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
        self.amp = amp

        # randomness that resuming must reproduce exactly: the data order (shared by all ranks, each takes
        # its own slice of every global batch) and the t / noise / label-dropout draws (one stream per rank)
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator(_generator_device(device)).manual_seed(config.seed + 1 + self.dist.rank)
        self._perm = torch.randperm(images.shape[0], generator=self.data_gen)
        self._pos = 0
        self.epoch = 0

        self.step = 0
        self.elapsed = 0.0  # training seconds, summed over train() calls and resumes
        self.history: list[dict] = []
        self.samples: list[dict] = []
        self.interrupted = False
        self._saved_step = None  # steps of the last checkpoint / sample grid (tracked on every rank, so
        self._sampled_step = None  # all ranks agree on which collective calls come next)
        self._scaled_step = None  # step of the last measured latent scale factor (objective="autoencoder")
        # NaN/inf guard: the first bad micro-batch is recorded on the device as [kind (0 ok, 1 data, 2 loss),
        # step, bad samples], without a host sync. On a single CPU process it is checked at once (a sync costs
        # nothing there), so a bad step is never applied; on a GPU (or under DDP) it is checked where the loop
        # syncs anyway (log steps) and before anything is saved or sampled.
        self._fault = torch.zeros(3, dtype=torch.long, device=device)
        self._check_every_step = device.type == "cpu" and not self.dist.enabled

        if config.out_dir == "auto":
            suffix = (f"-{kind}" if kind != "diffusion" else "-sr" if config.low_res else
                      "-text" if config.text_encoder else
                      "-latent" if config.autoencoder else "")
            self.out_dir = Path("runs") / f"{config.dataset}{suffix}"
        else:
            self.out_dir = Path(config.out_dir) if config.out_dir else None
        if resume_dir is not None:
            self.load_state(resume_dir)

    # -- setup helpers --------------------------------------------------------------------------------------

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # weight decay on weight matrices / conv kernels only, not on biases, norms or embeddings' 1-D params
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # the fused kernel (CPU and CUDA) updates every parameter in one pass: on the CPU it makes a digits
        # step about 10% faster than the per-parameter loop; same algorithm, same state_dict. The model is
        # already on self.device here.
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.999), fused=fused or None)

    @staticmethod
    def _load_frozen(loader, path, resume_dir, device, wanted: str, command: str):
        """A frozen part of a run (`loader`: ckpt.load_autoencoder or ckpt.load_text_encoder): from the checkpoint
        being resumed (its subfolder, so the run does not depend on the original directory), else from `path`."""
        part = loader(resume_dir, device=device) if resume_dir is not None else None
        if part is None:
            part = loader(path, device=device)
        if part is None:
            cls = ckpt.load_config(path, diffusion=False)["model_class"]
            raise ckpt.CheckpointError(f"{path} holds a {cls}, not {wanted}: train one with "
                                       f"`python -m ddpm_lite {command}` and pass its directory")
        part.requires_grad_(False)
        return part.eval()

    def _load_text_encoder(self, path, resume_dir, device):
        """The frozen CLIPTextEncoder of a text-to-image run (a CLIP checkpoint's text tower)."""
        return self._load_frozen(ckpt.load_text_encoder, path, resume_dir, device, "a CLIP", "train-clip")

    def _text_objective(self, images):
        """The text-to-image objective; caption thresholds from this training data's quantiles (as CLIP's)."""
        from .captions import AttributeThresholds
        from .text_to_image import TextToImageObjective

        c = self.config
        transforms = None if c.caption_transforms == "all" else \
            [t.strip() for t in c.caption_transforms.split(",") if t.strip()]
        return TextToImageObjective(self.diffusion, self.text_encoder, AttributeThresholds.from_images(images.cpu()),
                                    autoencoder=self.autoencoder, caption_dropout=c.caption_dropout,
                                    transforms=transforms, low_size=c.low_res, aug_max=c.aug_max,
                                    resolution=c.resolution)

    def _load_autoencoder(self, path, resume_dir, device):
        """The frozen AutoencoderKL of a latent run."""
        return self._load_frozen(ckpt.load_autoencoder, path, resume_dir, device, "an AutoencoderKL",
                                 "train-autoencoder")

    @torch.no_grad()
    def _encode_dataset(self, images: torch.Tensor) -> torch.Tensor:
        from .latent import encode_images

        ae = self.autoencoder
        if tuple(images.shape[1:]) != tuple(ae.image_shape):
            name = self.dataset_info.get("name") or self.config.dataset
            raise ValueError(f"the autoencoder {self.config.autoencoder} takes images of shape {list(ae.image_shape)} "
                             f"but dataset {name!r} has {list(images.shape[1:])}: train it on this dataset")
        return encode_images(ae, images)  # a NaN/inf image gives a NaN latent: the NaN guard names its index

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / ckpt.RUN_SUBDIR if self.out_dir is not None else None

    @classmethod
    def resume(cls, directory, model: nn.Module | None = None, dataset=None, **overrides) -> "Trainer":
        """A trainer that continues the run saved in `directory` (run or checkpoint directory).

        The saved TrainConfig is reused; keyword arguments override fields, e.g. `max_steps=2000`.
        The run keeps writing to the same out_dir unless you override it.
        """
        state = ckpt.load_trainer_state(directory)
        if state is None or "config" not in state:
            raise ckpt.CheckpointError(f"{directory} has no trainer state to resume from (it was saved without "
                                       f"one, e.g. by save_pretrained without trainer_state)")
        saved = dict(state["config"])
        directory = Path(directory)
        if (directory / ckpt.RUN_SUBDIR / ckpt.CONFIG_NAME).exists():
            saved["out_dir"] = str(directory)  # keep writing into the run we continue
        saved.update(overrides)
        saved["resume"] = str(directory)
        return cls(TrainConfig.from_dict(saved), model=model, dataset=dataset)

    # -- the schedule, batches and one step -----------------------------------------------------------------

    def lr_at(self, step: int, time_fraction: float | None = None) -> float:
        """Linear warm-up, then cosine decay to min_lr_ratio * lr.

        The cosine runs over the steps up to `max_steps`; a run bounded only by `max_seconds` has no step horizon,
        so there the cosine runs over wall-clock time instead (`time_fraction` = elapsed / max_seconds of this
        train() call). With neither, the LR stays at `lr` after warm-up.
        """
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.lr_schedule == "constant":
            return c.lr
        if c.max_steps and c.max_steps > c.warmup_steps:
            progress = min(1.0, (step - c.warmup_steps) / (c.max_steps - c.warmup_steps))
        elif time_fraction is not None:
            progress = min(1.0, max(0.0, time_fraction))
        else:
            return c.lr
        return c.lr * (c.min_lr_ratio + (1.0 - c.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def _next_batch(self):
        """This rank's slice of the next global batch, walking through a shuffled epoch (the tail is dropped)."""
        c, world, rank = self.config, self.dist.world_size, self.dist.rank
        global_batch = c.batch_size * world
        if self._pos + global_batch > self._perm.numel():
            self._perm = torch.randperm(self.images.shape[0], generator=self.data_gen)
            self._pos = 0
            self.epoch += 1
        start = self._pos + rank * c.batch_size
        idx = self._perm[start:start + c.batch_size].to(self.device)
        self._pos += global_batch
        x = self.images[idx]
        if c.hflip and x.ndim == 4:
            flip = torch.rand(x.shape[0], generator=self.noise_gen, device=self.noise_gen.device) < 0.5
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        if c.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = None
        if self.kind == "clip" or self.captioned:  # captions name the digit; no label dropout
            y = self.labels[idx]
        elif self.num_classes is not None:
            y = self.labels[idx]
            if c.label_dropout > 0:
                drop = torch.rand(y.shape[0], generator=self.noise_gen, device=self.noise_gen.device) < c.label_dropout
                y = torch.where(drop.to(y.device), torch.full_like(y, self.num_classes), y)
        return x, y

    def _autocast(self):
        if self.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _time_fraction(self) -> float | None:
        """Fraction of this train() call's `max_seconds` used so far (None outside a time-bounded train())."""
        start, c = getattr(self, "_train_start", None), self.config
        if start is None or not c.max_seconds or c.max_steps:
            return None
        return (time.perf_counter() - start) / c.max_seconds

    def train_step(self) -> torch.Tensor:
        """One optimizer step (grad_accum micro-batches); returns the mean loss as a 0-dim tensor (no sync).

        A batch or loss with NaN/inf is recorded; on a single CPU process it raises `NonFiniteError` at once,
        before the step changes any weight (elsewhere `train()` checks at its log / save / sample steps)."""
        c = self.config
        lr = self.lr_at(self.step, self._time_fraction())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(c.grad_accum):
            x, y = self._next_batch()
            bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum()  # samples with a NaN/inf value
            self._record_fault(1, bad > 0, bad)
            last = micro == c.grad_accum - 1
            # DDP: only all-reduce gradients on the last micro-batch
            sync = self.model.no_sync() if (self.dist.enabled and not last) else nullcontext()
            with sync:
                with self._autocast():
                    loss = self.objective.training_losses(self.model, x, y=y, generator=self.noise_gen)["loss"]
                    loss = loss.float().mean()
                self._record_fault(2, ~torch.isfinite(loss), torch.zeros_like(bad))
                (loss / c.grad_accum).backward()
            total += loss.detach()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.raw_model)
        self.step += 1
        return total / c.grad_accum

    # -- the NaN/inf guard ----------------------------------------------------------------------------------

    def _record_fault(self, kind: int, bad: torch.Tensor, count: torch.Tensor) -> None:
        """Remember (on the device, no sync) the first micro-batch whose data (kind 1) or loss (kind 2) is bad."""
        new = torch.stack((torch.full_like(count, kind), torch.full_like(count, self.step + 1), count))
        self._fault = torch.where((self._fault[0] == 0) & bad, new, self._fault)
        if self._check_every_step:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self, collective: bool = True) -> None:
        """Raise NonFiniteError if a NaN/inf batch or loss was recorded (on any rank, if `collective`)."""
        kind, step, count = self._fault.tolist()
        seen = distributed.any_true(kind > 0, self.device) if collective and self.dist.enabled else kind > 0
        if not seen:
            return
        message = self._nonfinite_message(kind, step, count)
        if self._check_every_step:  # caught before the bad step changed any weight: the trainer stays usable
            self._fault.zero_()
            self.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(message, step=step, kind={1: "data", 2: "loss"}.get(kind, ""), bad_samples=count)

    def _nonfinite_message(self, kind: int, step: int, count: int) -> str:
        c = self.config
        if kind == 1:
            name = self.dataset_info.get("name") or c.dataset
            n = self.images.shape[0]
            bad = (~torch.isfinite(self.images)).reshape(n, -1).any(1).nonzero().flatten().tolist()
            shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
            source = (f"dataset {name!r} has {len(bad)} such samples out of {n} (indices {shown})" if bad else
                      f"dataset {name!r} itself is finite, so the batch was corrupted after loading")
            verb = "contains" if count == 1 else "contain"
            what = (f"non-finite training data: {count} of {c.batch_size} samples in the batch at step {step} "
                    f"{verb} NaN/inf values; {source}. Clean the data (drop or repair those samples) or check the "
                    f"transform that produced them (e.g. a division by a zero standard deviation).")
        elif kind == 2:
            clip = (f"keep gradient clipping on (grad_clip={c.grad_clip:g})" if c.grad_clip else
                    "turn gradient clipping on (grad_clip=1.0, --grad-clip 1)")
            settings = (f"kl_weight={c.kl_weight:g}, recon={c.recon!r}" if self.kind == "autoencoder" else
                        f"batch_size={c.batch_size}, weight_decay={c.weight_decay:g}" if self.kind == "clip" else
                        f"parameterization={c.parameterization!r}, loss_type={c.loss_type!r}, "
                        f"min_snr_gamma={c.min_snr_gamma}")
            what = (f"the loss became NaN/inf at step {step} although the batch was finite: training diverged. "
                    f"Lower the learning rate (lr={c.lr:g}, --lr), {clip}, or check the model and loss settings "
                    f"({settings}).")
        else:
            what = (f"another process met a NaN/inf batch or loss by step {self.step} (this is rank "
                    f"{self.dist.rank}; that rank's error names the step and the cause).")
        if self.checkpoint_dir is not None and (self.checkpoint_dir / ckpt.CONFIG_NAME).exists():
            at = f" (step {self._saved_step})" if self._saved_step is not None else ""
            kept = f" Nothing was saved: the last good checkpoint, {self.checkpoint_dir}{at}, is untouched."
        else:
            kept = " Nothing was saved."
        if self._check_every_step:
            state = f" The weights in memory are those before step {step} (the bad step was not applied)."
        else:
            state = (f" The weights in memory are probably no longer finite (on {self.device.type}"
                     f"{' with DDP' if self.dist.enabled else ''} the check runs at log, save and sample steps, "
                     f"here at step {self.step}): continue from the last checkpoint.")
        return what + kept + state

    # -- the loop -------------------------------------------------------------------------------------------

    def train(self, steps: int | None = None) -> list[dict]:
        """Train until max_steps / max_seconds (or `steps` more steps, if given); returns `history`.

        Logs every `log_every` steps, samples every `sample_every`, saves every `save_every` and at the end.
        Ctrl-C saves a checkpoint and returns with `self.interrupted = True` (see the module docstring).
        """
        from tqdm.auto import tqdm

        c = self.config
        self.interrupted = False
        start_step, start_time = self.step, time.perf_counter()
        self._train_start = start_time
        elapsed_before = self.elapsed
        last_log_step, last_log_time = self.step, start_time
        loss_sum, loss_count = torch.zeros((), device=self.device), 0
        bar = tqdm(total=c.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (c.progress and self.is_main))

        def out_of_time() -> bool:
            late = c.max_seconds is not None and time.perf_counter() - start_time >= c.max_seconds
            return distributed.any_true(late, self.device) if self.dist.enabled else late

        self.model.train()
        try:
            while True:
                if c.max_steps is not None and self.step >= c.max_steps:
                    break
                if steps is not None and self.step - start_step >= steps:
                    break
                if c.max_seconds is not None and out_of_time():
                    break
                loss_sum += self.train_step()
                loss_count += 1
                self.elapsed = elapsed_before + time.perf_counter() - start_time
                bar.update(1)
                if self.step % c.log_every == 0:
                    self._raise_if_nonfinite()  # before a NaN loss reaches the history
                    now = time.perf_counter()
                    loss = distributed.mean_across((loss_sum / loss_count).item(), self.device)
                    images = (self.step - last_log_step) * c.batch_size * c.grad_accum * self.dist.world_size
                    record = {"step": self.step, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                              "images_per_sec": images / max(now - last_log_time, 1e-9), "time": self.elapsed}
                    self.history.append(record)
                    bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{record['images_per_sec']:.0f}",
                                    lr=f"{record['lr']:.2e}")
                    last_log_step, last_log_time = self.step, now
                    loss_sum.zero_()
                    loss_count = 0
                # the checkpoint first: a failure while drawing the sample grid must not cost the training
                if c.save_every and self.step % c.save_every == 0:
                    self.save()
                if c.sample_every and self.step % c.sample_every == 0:
                    self._sample_and_save_grid()
        except KeyboardInterrupt:
            self.interrupted = True
            bar.close()
            if self.is_main and self.out_dir is not None:
                path = self.save(sync=False)  # the other ranks may be gone: no barrier
                print(f"\ninterrupted at step {self.step}: checkpoint saved to {path}; resume with "
                      f"Trainer.resume({str(self.out_dir)!r}) or `python -m ddpm_lite train --resume {self.out_dir}`")
            return self.history
        finally:
            bar.close()
            self._train_start = None

        self.elapsed = elapsed_before + time.perf_counter() - start_time
        if self.kind == "autoencoder":  # its latent scale factor, also for a run kept in memory
            self._raise_if_nonfinite()
            self.update_scale_factor()
        if self._saved_step != self.step:
            self.save()
        if self._sampled_step != self.step:
            self._sample_and_save_grid()
        return self.history

    def close(self) -> None:
        """Leave the process group (if the trainer created it)."""
        distributed.cleanup(self.dist)

    # -- sampling -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int | None = None, labels=None, use_ema: bool = True, seed: int | None = None,
               sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
               prompts=None) -> torch.Tensor:
        """`n` samples in [-1, 1] from the EMA model (labels cycle over the classes of a conditional model; a
        text-to-image model takes `prompts`, default "a zero" ... "a nine" cycled; a super-resolution stage
        upsamples low-resolution views of the first `n` training digits, prompted with their names).

        Uses its own generator (seeded with `seed`, default config.seed), so it never disturbs training's RNG.
        A latent model's samples are decoded by its autoencoder (`ddpm_lite.latent.sample_images`); an
        autoencoder has no samples (see `reconstruct`).
        """
        from .latent import sample_images

        c = self.config
        if self.kind == "autoencoder":
            raise ValueError("an autoencoder (objective='autoencoder') has no samples: use Trainer.reconstruct()")
        if self.kind == "clip":
            raise ValueError("a CLIP (objective='clip') has no samples: use Trainer.zero_shot_accuracy()")
        n = n or c.sample_n
        model = self.ema.module if use_ema else self.raw_model
        if labels is None and self.num_classes is not None:
            labels = torch.arange(n) % self.num_classes
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        if self.captioned:
            from .text_to_image import digit_prompts

            if c.low_res:
                from .conditioning import SuperResCondition
                from .text_to_image import low_res_view

                n = min(n, self.images.shape[0])
                low = low_res_view(self.images[:n], c.low_res)
                text = None
                if self.text_encoder is not None:
                    text = self.text_encoder.encode(prompts or [digit_prompts(10)[int(k)] for k in self.labels[:n]])
                labels = SuperResCondition(low, torch.zeros(n, dtype=torch.long, device=self.device), text)
            else:
                labels = self.text_encoder.encode(prompts or digit_prompts(n))
            n = len(labels)
        gen = torch.Generator().manual_seed(c.seed if seed is None else seed)
        steps = steps or (c.sample_steps if (sampler or c.sampler) != "ddpm" else None)
        with eval_mode(model):
            with self._autocast():
                x = sample_images(model, self.diffusion, (n, *self.sample_shape), autoencoder=self.autoencoder,
                                  sampler=sampler or c.sampler, steps=steps, y=labels,
                                  guidance=c.sample_guidance if guidance is None else guidance,
                                  generator=gen, device=self.device)
        return x.float().cpu()

    @torch.no_grad()
    def reconstruct(self, n: int | None = None, use_ema: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, reconstructions) of an autoencoder: the first `n` training images (default sample_n) and
        D(mean of q(z | x)) from the EMA weights, both [n, C, H, W] in [-1, 1] on the CPU."""
        if self.kind != "autoencoder":
            raise ValueError(f"reconstruct() is for objective='autoencoder', not {self.kind!r}")
        model = self.ema.module if use_ema else self.raw_model
        x = self.images[: n or self.config.sample_n]
        with eval_mode(model), self._autocast():
            x_hat = model.decode(model.encode(x).mode())
        return x.float().cpu(), x_hat.float().clamp(-1.0, 1.0).cpu()

    @torch.no_grad()
    def zero_shot_accuracy(self, n: int = 500, use_ema: bool = True) -> float:
        """objective='clip': zero-shot accuracy of the (EMA) CLIP on the first `n` training images, untransformed
        (`CLIP.zero_shot_classify` with the default templates; the held-out test split is the benchmark's)."""
        if self.kind != "clip":
            raise ValueError(f"zero_shot_accuracy() is for objective='clip', not {self.kind!r}")
        model = self.ema.module if use_ema else self.raw_model
        with eval_mode(model):
            probs = model.zero_shot_classify(self.images[:n])
        return float((probs.argmax(1) == self.labels[:n].cpu()).float().mean())

    def _sample_and_save_grid(self) -> None:
        self._raise_if_nonfinite()
        self._sampled_step = self.step
        if self.is_main and self.kind == "clip":  # no images: zero-shot accuracy on training digits instead
            self.samples.append({"step": self.step, "zero_shot_accuracy": self.zero_shot_accuracy()})
        elif self.is_main:
            if self.kind == "autoencoder":  # rows of inputs alternate with their reconstructions
                inputs, images = self.reconstruct()
                self.samples.append({"step": self.step, "images": images, "inputs": inputs})
                nrow = min(8, images.shape[0])
                pad = -images.shape[0] % nrow
                rows = [torch.cat((t, torch.full((pad, *t.shape[1:]), -1.0))).reshape(-1, nrow, *t.shape[1:])
                        for t in (inputs, images)]
                grid = torch.stack(rows, 1).reshape(-1, *images.shape[1:])
            else:
                images = grid = self.sample()
                self.samples.append({"step": self.step, "images": images})
                nrow = self.num_classes if self.num_classes and self.num_classes <= 16 else \
                    max(1, int(math.ceil(math.sqrt(images.shape[0]))))
            if self.out_dir is not None and images.ndim == 4:
                from torchvision.utils import save_image

                path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_image((grid + 1) / 2, str(path), nrow=nrow, padding=1)
        distributed.barrier()

    # -- state: save / load ---------------------------------------------------------------------------------

    def _per_rank_rng(self, gather: bool = True) -> dict:
        """Every rank's RNG states, as lists indexed by rank (rank r restores entry r on resume).

        With gather=False (Ctrl-C under DDP: the other ranks may be gone) only this rank's states are stored,
        and a resume with several ranks reseeds instead of restoring exactly.
        """
        states = {"torch": torch.get_rng_state(), "noise_generator": self.noise_gen.get_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        if not gather:
            return {k: [v] for k, v in states.items()}
        return {k: distributed.all_gather_bytes(v, self.device) for k, v in states.items()}

    def state_dict(self, gather: bool = True) -> dict:
        """Everything needed to resume exactly (nested; tensors anywhere): see checkpoint.flatten_state.

        Under DDP every rank must call it (the RNG states are gathered), unless gather=False."""
        c = self.config
        return {
            "step": self.step,
            "epoch": self.epoch,
            "elapsed_seconds": self.elapsed,
            "world_size": self.dist.world_size,
            "config": asdict(c),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": {"kind": c.lr_schedule, "base_lr": c.lr, "warmup_steps": c.warmup_steps,
                            "max_steps": c.max_steps, "min_lr_ratio": c.min_lr_ratio,
                            "last_lr": self.optimizer.param_groups[0]["lr"]},
            "ema": {"step": self.ema.step, "decay": self.ema.decay, "warmup": self.ema.warmup},
            "data": {"perm": self._perm, "pos": self._pos},
            "rng": {
                "per_rank": self._per_rank_rng(gather),
                "data_generator": self.data_gen.get_state(),
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
            "history": self.history,
        }

    def save(self, directory=None, sync: bool = True) -> Path | None:
        """Save a checkpoint (default: out_dir/checkpoint) plus history.json; rank 0 writes, all ranks wait."""
        self._raise_if_nonfinite(collective=sync)  # never overwrite the last good checkpoint with NaN weights
        directory = Path(directory) if directory is not None else self.checkpoint_dir
        state = None
        if directory is not None and (sync or self.is_main):
            state = self.state_dict(gather=sync)
        if self.is_main and directory is not None:
            extra = {"dataset": self.config.dataset, "sample_shape": list(self.sample_shape), "step": self.step,
                     "num_classes": self.num_classes, "classes": self.dataset_info.get("classes")}
            if self.kind == "clip":
                extra.update(objective="clip")
            if self.kind == "autoencoder":
                if self._scaled_step != self.step:
                    self.update_scale_factor()
                extra.update(objective="autoencoder", scale_factor=self.raw_model.scale_factor,
                             latent_shape=list(self.raw_model.latent_shape))
            if self.autoencoder is not None:  # sample_shape is the latent's; the images the decoder makes:
                extra.update(image_shape=list(self.autoencoder.image_shape), latents="posterior mean x scale_factor",
                             latent_std=self.latent_std,
                             autoencoder_source=str(self.config.autoencoder))
            if self.captioned:
                extra.update(text_encoder_source=self.config.text_encoder, text_to_image=self.objective.config)
            ckpt.save_pretrained(directory, self.raw_model, self.diffusion, ema=self.ema, trainer_state=state,
                                 extra=extra, autoencoder=self.autoencoder, text_encoder=self.text_encoder)
            ckpt.atomic_write_json(directory.parent / "history.json", self.history, indent=1)
        self._saved_step = self.step
        if sync:
            distributed.barrier()
        return directory

    @torch.no_grad()
    def update_scale_factor(self) -> float:
        """Measure the latent scale factor (1 / std of z ~ q(z | x) over the training data, LDM §4.3.2) of the
        EMA weights (the ones a latent run encodes with) and store it in the autoencoder's config (raw and EMA
        model). Its own fixed-seed generator keeps training's RNG streams, and so exact resume, untouched."""
        from .autoencoder import measure_scale_factor

        gen = torch.Generator(_generator_device(self.device)).manual_seed(self.config.seed + 2)
        value = measure_scale_factor(self.ema.module, self.images, generator=gen)
        for module in (self.raw_model, self.ema.module):
            module.set_scale_factor(value)
        self._scaled_step = self.step
        return value

    def load_state(self, directory) -> None:
        """Restore weights, EMA, optimizer, data position and every RNG from a checkpoint (for resuming)."""
        directory = ckpt.resolve_checkpoint_dir(directory)
        state = ckpt.load_trainer_state(directory)
        if state is None:
            raise ckpt.CheckpointError(f"{directory} has no trainer state ({ckpt.TRAINER_STATE_NAME}): it can be "
                                       f"loaded with from_pretrained but not resumed")
        ckpt.load_weights(directory, self.raw_model, "model")
        if (directory / ckpt.EMA_WEIGHTS_NAME).exists():
            ckpt.load_weights(directory, self.ema.module, "ema")
        else:
            self.ema.module.load_state_dict(self.raw_model.state_dict())
        self.ema.step = int(state["ema"]["step"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise ckpt.CheckpointError(f"the optimizer state in {directory} does not fit this model ({e})") from None
        self.step = int(state["step"])
        self.epoch = int(state.get("epoch", 0))
        self.elapsed = float(state.get("elapsed_seconds", 0.0))
        self.history = list(state.get("history", []))
        perm = state["data"]["perm"]
        if perm.numel() == self.images.shape[0]:
            self._perm, self._pos = perm.long(), int(state["data"]["pos"])
        else:  # a different dataset size: start a fresh epoch
            self._pos = self._perm.numel()
        rng = state["rng"]
        self.data_gen.set_state(rng["data_generator"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        per_rank, rank = rng["per_rank"], self.dist.rank
        if len(per_rank["torch"]) == self.dist.world_size:
            torch.set_rng_state(per_rank["torch"][rank])
            self.noise_gen.set_state(per_rank["noise_generator"][rank])
            if self.device.type == "cuda" and "cuda" in per_rank:
                torch.cuda.set_rng_state(per_rank["cuda"][rank], self.device)
        else:  # another world size: cannot be exact; give every rank a fresh, distinct stream
            torch.manual_seed(self.config.seed + 7919 * self.step + rank)
            self.noise_gen.manual_seed(self.config.seed + 7919 * self.step + 1 + rank)
