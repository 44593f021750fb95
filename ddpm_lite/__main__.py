"""Command line: `python -m ddpm_lite train ...`, `sample ...`, `export ...`, `train-autoencoder ...`, `train-clip ...`.

    python -m ddpm_lite train                                  # class-conditional digits, 60 s on the CPU
    python -m ddpm_lite train --dataset mnist --max-steps 20000 --out runs/mnist
    python -m ddpm_lite train --resume --out runs/digits --max-seconds 120     # continue a run
    torchrun --nproc_per_node 2 -m ddpm_lite train --max-steps 5000            # data-parallel
    python -m ddpm_lite sample --checkpoint runs/digits --labels 0,1,2 --n 30 --guidance 1 --out samples.png
    python -m ddpm_lite export --checkpoint runs/digits --out assets/checkpoints/digits   # weights only, to share

Latent diffusion (Rombach et al. 2022): train the autoencoder, then a diffusion model on its latents; the
latent checkpoint carries its autoencoder, so `sample` (and --init-image editing) works on it as on any other:

    python -m ddpm_lite train-autoencoder --dataset mnist5k --max-seconds 300 --out runs/mnist5k-autoencoder
    python -m ddpm_lite train --dataset mnist5k --autoencoder runs/mnist5k-autoencoder --out runs/mnist5k-latent
    python -m ddpm_lite sample --checkpoint runs/mnist5k-latent --n 100 --out latent_samples.png

CLIP (Radford et al. 2021) from scratch on captioned digits (`ddpm_lite.captions`), through the same Trainer:

    python -m ddpm_lite train-clip --dataset mnist5k --max-seconds 600 --out runs/mnist5k-clip

Text-to-image on its frozen text tower: a mini Stable Diffusion (latent space, cross-attention) and a mini
Imagen cascade (a 14×14 base + a 14 → 28 super-resolution stage); `sample --prompt` draws from either:

    python -m ddpm_lite train --dataset mnist5k --text-encoder runs/mnist5k-clip --autoencoder runs/mnist5k-autoencoder \
        --caption-transforms upside_down,shift_left,shift_right,small --out runs/mnist5k-sd
    python -m ddpm_lite train --dataset mnist5k --text-encoder runs/mnist5k-clip --resolution 14 --out runs/base
    python -m ddpm_lite train --dataset mnist5k --low-res 14 --out runs/sr
    python -m ddpm_lite sample --checkpoint runs/mnist5k-sd --prompt "a thick upside-down seven" --guidance 3 --n 16

DreamBooth (Ruiz et al. 2023): a few images of one subject, bound to a rare token, with prior preservation:

    python -m ddpm_lite dreambooth --checkpoint assets/checkpoints/mnist5k-sd --subject assets/subjects/hollow-seven \\
        --identifier sks --class-noun seven --out runs/sks-seven
    python -m ddpm_lite sample --checkpoint runs/sks-seven --prompt "a sks seven" --guidance 3 --n 16

The `train` flags are generated from `ddpm_lite.train.TrainConfig`: one `--field-name` per field (help text
and choices from the field's metadata), so every setting of a run is reachable, e.g.

    python -m ddpm_lite train --model-kwargs '{"attention_resolutions": [4]}' --min-lr-ratio 0 --sample-guidance 2

Optional numbers take `none`; booleans come as `--flag / --no-flag`; dicts as JSON. A flag that is not given
keeps TrainConfig's default (so batch size, LR and min-SNR γ come from the recipe, `ddpm_lite.train.RECIPES`);
with `--resume` only the flags given override the saved config. `--max-steps N` without `--max-seconds` runs N
steps with no time limit (the default 60-second limit applies only when neither is given).

Bad input (a wrong checkpoint path, labels out of range, an unknown dataset, preset or sampler, bad JSON)
prints one line `ddpm_lite: error: ...` and exits with status 2. Training that meets NaN/inf data or a NaN
loss stops with one such line naming the step and the cause, saves nothing (the last checkpoint stays the
last good one) and exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

PROG = "python -m ddpm_lite"

# The `train` flags are generated from TrainConfig: one `--field-name` per field, with the help text and choices
# of the field's metadata (see ddpm_lite.train._knob). The exceptions, all listed here:
TRAIN_FLAG_ALIASES = {"out_dir": ("--out",)}  # older spellings that keep working
TRAIN_EXTRA_FLAGS = ("base_channels",)        # train flags that are not TrainConfig fields
# TrainConfig fields that do not apply to `train-autoencoder` (objective="autoencoder"): it has every other flag
AUTOENCODER_SKIPPED_FIELDS = ("preset", "objective", "autoencoder", "conditional", "label_dropout", "timesteps",
                              "schedule", "parameterization", "loss_type", "min_snr_gamma", "sampler",
                              "sample_steps", "sample_guidance")
# ... and to `train-clip` (objective="clip"): nor do the autoencoder's
CLIP_SKIPPED_FIELDS = AUTOENCODER_SKIPPED_FIELDS + ("hflip", "kl_weight", "recon")
_RESUME_OUT = "__out__"                        # bare `--resume`: continue the run in --out


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit status 2."""


# -- the parser -------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad flag in one line (instead of the ~40-line usage of `train`)."""

    def error(self, message):
        self.exit(2, f"ddpm_lite: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _optional_int(text: str):
    return None if text.lower() in ("none", "") else int(text)


_TYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "None": type(None)}


def _field_kinds(f) -> tuple[list[type], bool]:
    """The types a TrainConfig field accepts, from its annotation (a string under `from __future__ import
    annotations`, e.g. "float | str | None"), and whether None is one of them."""
    import typing

    if isinstance(f.type, str):
        names = [part.strip() for part in f.type.split("|")]
        if any(name not in _TYPE_NAMES for name in names):
            raise TypeError(f"TrainConfig.{f.name}: cannot make a command-line flag for type {f.type!r}")
        kinds = [_TYPE_NAMES[name] for name in names]
    else:
        kinds = list(typing.get_args(f.type)) or [f.type]
    optional = type(None) in kinds
    return [k for k in kinds if k is not type(None)], optional


def _show(value) -> str:
    """A default as it would be typed on the command line."""
    import json

    if value is None:
        return "none"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"base_channels\": 32}}', got {text!r} "
                                         f"({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object (in braces), got {text!r}")
    return value


def _scalar(kinds: list[type], optional: bool, words: tuple):
    """Parse none (for an optional field), one of `words` (any case: the only strings a field that mixes numbers
    and strings accepts), a number (int, float: the field's types, in order) or else, for a str field without
    `words`, the text itself."""
    numbers = [k for k in kinds if k in (int, float)]
    free_text = str in kinds and not words
    options = [k.__name__ for k in numbers] + [repr(w) for w in words] + (["none"] if optional else [])
    expected = " or ".join(filter(None, (", ".join(options[:-1]), options[-1])))

    def parse(text: str):
        low = text.strip().lower()
        if optional and low in ("none", ""):
            return None
        if low in words:
            return low
        for kind in numbers:
            try:
                return kind(text)
            except ValueError:
                pass
        if free_text:
            return text
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")

    return parse


def _add_train_flags(t: argparse.ArgumentParser, skip: tuple = ()) -> None:
    """One flag per TrainConfig field (except those in `skip`), default=SUPPRESS: the parsed namespace holds
    exactly the flags given, so the rest keep TrainConfig's defaults (and recipes) and `--resume` overrides only
    what was typed."""
    from .train import TrainConfig

    defaults = TrainConfig()
    groups = {}
    group = title = None
    for f in fields(TrainConfig):
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"TrainConfig.{f.name} has no help text (metadata['help']): use train._knob")
        title = meta.get("group", title)
        if f.name in skip:
            continue
        if title is not None and title not in groups:
            group = groups[title] = t.add_argument_group(title)
        flag = "--" + f.name.replace("_", "-")
        flags = (flag, *TRAIN_FLAG_ALIASES.get(f.name, ()))
        default = getattr(defaults, f.name)
        kw = dict(dest=f.name, default=argparse.SUPPRESS,
                  help=f"{meta['help']} (default: {_show(default)})".replace("%", "%%"))
        kinds, optional = _field_kinds(f)
        choices = meta.get("choices")
        if f.name == "resume":
            kw.update(nargs="?", const=_RESUME_OUT, metavar="PATH",
                      help="continue a run: --resume PATH, or bare --resume to continue --out; the saved config is "
                           "reused and only the flags given here override it")
        elif kinds == [bool] and not optional:
            kw["action"] = argparse.BooleanOptionalAction
        elif kinds == [dict] and not optional:
            kw.update(type=_json_object, metavar="JSON")
        elif kinds == [str] and not optional:
            kw["choices"] = choices  # None: any text
        elif set(kinds) <= {str, int, float}:
            kw["type"] = _scalar(kinds, optional, tuple(choices or ()) if str in kinds else ())
        else:
            raise TypeError(f"TrainConfig.{f.name}: cannot make a command-line flag for type {f.type!r}")
        (group or t).add_argument(*flags, **kw)
    if "base_channels" in skip:
        return
    groups["data and model"].add_argument(
        "--base-channels", type=int, default=argparse.SUPPRESS,
        help="shortcut for --model-kwargs '{\"base_channels\": N}': the width of the preset (default: the preset's)")


def build_parser() -> argparse.ArgumentParser:
    from .samplers import SAMPLERS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = _Parser(prog=PROG, description="Train and sample DDPMs (ddpm_lite).", formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", metavar="{train,sample,export,train-autoencoder,train-clip,cascade,dreambooth}")
    sub.required = True

    t = sub.add_parser("train", help="train a diffusion model", formatter_class=fmt,
                       description="Train a diffusion model. With no flags: class-conditional digits for 60 s. "
                                   "Every flag is a field of ddpm_lite.train.TrainConfig.")
    _add_train_flags(t)

    a = sub.add_parser(
        "train-autoencoder", help="train the autoencoder of latent diffusion", formatter_class=fmt,
        description="Train latent diffusion's first stage (Rombach et al. 2022): an AutoencoderKL (ddpm_lite."
                    "autoencoder) with reconstruction + kl_weight * KL, through the same Trainer as `train` (EMA, "
                    "exact --resume, atomic checkpoints, Ctrl-C saves). Every checkpoint stores the latent scale "
                    "factor measured on the training data. Sample grids are reconstructions (rows of inputs "
                    "alternate with rows of their reconstructions). Size the network with --model-kwargs, e.g. "
                    "'{\"channels\": [32, 64], \"latent_channels\": 4}' (the defaults: 28x28 -> 4x7x7). Then train a "
                    "latent diffusion model on it: `train --dataset DATASET --autoencoder OUT`. The flags are "
                    "train's, less those of the diffusion (--out defaults to runs/<dataset>-autoencoder).")
    _add_train_flags(a, skip=AUTOENCODER_SKIPPED_FIELDS + ("base_channels",))

    c = sub.add_parser(
        "train-clip", help="train a CLIP on captioned digits", formatter_class=fmt,
        description="Train a CLIP (ddpm_lite.clip; Radford et al. 2021) from scratch: every batch is captioned "
                    "on the fly from the digits' labels, attributes measured from their pixels and random "
                    "transformations (ddpm_lite.captions; the held-out combinations never occur), and the "
                    "symmetric InfoNCE loss pulls matching image/caption pairs together. Same Trainer as `train` "
                    "(EMA, exact --resume, atomic checkpoints, Ctrl-C saves); instead of sample grids it records "
                    "the zero-shot accuracy on training digits. Size it with --model-kwargs, e.g. "
                    "'{\"embed_dim\": 64, \"text_layers\": 2}'. The flags are train's, less the diffusion's and the "
                    "autoencoder's (--out defaults to runs/<dataset>-clip).")
    _add_train_flags(c, skip=CLIP_SKIPPED_FIELDS + ("base_channels",))

    s = sub.add_parser("sample", help="generate images from a checkpoint", formatter_class=fmt,
                       description="Generate samples from a checkpoint (EMA weights) and save a grid / array.")
    s.add_argument("--checkpoint", default="runs/digits", help="checkpoint or run directory")
    s.add_argument("--sampler", default="ddim", choices=SAMPLERS, help="sampling algorithm")
    s.add_argument("--steps", type=_optional_int, default=None,
                   help="sampler steps (None: ddim 50, dpmpp2m 20, ddpm all T)")
    s.add_argument("--n", type=int, default=100, help="number of samples")
    s.add_argument("--labels", default=None,
                   help="comma-separated class labels, cycled to fill --n (conditional models; default: all classes)")
    s.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w (0 = none)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic, 1 = DDPM-like)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--out", default="samples.png", help="PNG grid to write")
    s.add_argument("--save-array", default=None,
                   help="also write an .npz with images (float32 N x C x H x W in [-1, 1]) and labels (int64)")
    s.add_argument("--nrow", type=int, default=None, help="images per grid row (default: one column per label)")
    s.add_argument("--batch-size", type=int, default=256, help="samples generated at once")
    s.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    s.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False, help="progress bar")
    text = s.add_argument_group("text-to-image checkpoints (mini Stable Diffusion / mini Imagen; ddpm_lite.pipeline)")
    text.add_argument("--prompt", action="append", default=None,
                      help="a prompt, e.g. \"a thin seven\"; repeat the flag for several, cycled to fill --n. "
                           "Every word must be in the text encoder's vocabulary")
    text.add_argument("--threshold", default="auto", choices=("auto", "static", "dynamic", "none"),
                      help="x0 thresholding: static clipping, Imagen's dynamic thresholding, none; auto = none in "
                           "latent space, static in pixel space")
    text.add_argument("--aug-level", type=int, default=None,
                      help="cascade: noise-augmentation timestep the super-resolution stage is told (default: the "
                           "pipeline's)")
    edit = s.add_argument_group("editing an image (ddpm_lite.editing)")
    edit.add_argument("--init-image", default=None,
                      help="start from these images instead of noise: an .npz with 'images' (as --save-array "
                           "writes) or a PNG/JPEG of the model's size; cycled to fill --n")
    edit.add_argument("--strength", type=float, default=None,
                      help="image-to-image (SDEdit): how much to change --init-image, 0 (return it) .. 1 "
                           "(ignore it); default 0.5")
    edit.add_argument("--keep-mask", default=None,
                      help="inpainting (RePaint): keep --init-image where this mask is 1 (white) and let the model "
                           "draw where it is 0 (black); an .npz with 'mask' [H, W] or a PNG of the model's size")
    edit.add_argument("--resample", type=int, default=1,
                      help="inpainting: take every step this many times (RePaint's resampling; 1 = none)")

    e = sub.add_parser("export", help="write a shareable checkpoint (config + weights, no optimizer state)",
                       formatter_class=fmt,
                       description="Copy a run's model and EMA weights with its config.json into a new checkpoint "
                                   "directory without the trainer state (optimizer, RNG): a smaller file to share "
                                   "or commit. It loads with from_pretrained / `sample`, but cannot be resumed.")
    e.add_argument("--checkpoint", default="runs/digits", help="checkpoint or run directory to export")
    e.add_argument("--out", required=True, help="directory for the exported checkpoint")
    e.add_argument("--note", default=None, help="free text stored in config.json under extra.note "
                                                "(e.g. the command that trained it)")
    e.add_argument("--ema-only", action="store_true",
                   help="ship only the EMA weights (the ones sampling uses), as model.safetensors: half the size")
    e.add_argument("--fp16", action="store_true",
                   help="store the weights in float16 (half the size again); they load back into float32")

    c = sub.add_parser("cascade", help="join a base and a super-resolution run into one text-to-image cascade",
                       formatter_class=fmt,
                       description="Export a text-conditioned base run (`train --text-encoder ... --resolution N`) "
                                   "and a super-resolution run (`train --low-res N`) into OUT/base and "
                                   "OUT/super_resolution (EMA weights only) and write OUT/pipeline.json, so "
                                   "`sample --checkpoint OUT --prompt ...` and TextToImage.from_pretrained(OUT) run "
                                   "the whole cascade (mini Imagen).")
    c.add_argument("--base", required=True, help="the base stage's run or checkpoint directory")
    c.add_argument("--super-resolution", required=True, help="the super-resolution stage's run or checkpoint")
    c.add_argument("--out", required=True, help="directory for the cascade")
    c.add_argument("--aug-level", type=int, default=None,
                   help="noise-augmentation timestep the super-resolution stage is told when sampling "
                        "(default: ddpm_lite.pipeline.DEFAULT_AUG_LEVEL)")
    c.add_argument("--fp16", action="store_true", help="store the weights in float16")

    d = sub.add_parser("dreambooth", help="personalise a text-to-image model with a few images of one subject",
                       formatter_class=fmt,
                       description="DreamBooth (Ruiz et al. 2023; ddpm_lite.personalize): fine-tune a copy of a "
                                   "single-stage text-to-image checkpoint (mini Stable Diffusion) on 3-5 subject "
                                   "images bound to the prompt \"a IDENTIFIER CLASS\" (the identifier is added to "
                                   "the text encoder's vocabulary with a weak prior), with the class-specific "
                                   "prior-preservation loss (eq. 2) on images the frozen model draws for \"a "
                                   "CLASS\". The result is an ordinary checkpoint: `sample --checkpoint OUT "
                                   "--prompt \"a sks seven\"`. Written atomically at the end: Ctrl-C writes nothing.")
    d.add_argument("--checkpoint", default="assets/checkpoints/mnist5k-sd", help="the text-to-image model to start from")
    d.add_argument("--subject", default="assets/subjects/hollow-seven", help="folder of the subject's PNG images")
    d.add_argument("--out", required=True, help="directory for the fine-tuned checkpoint")
    d.add_argument("--identifier", default="sks", help="the rare token [V] bound to the subject")
    d.add_argument("--class-noun", default="seven", help="the subject's class, as the prompts say it")
    d.add_argument("--steps", type=int, default=120, help="fine-tuning steps")
    d.add_argument("--lr", type=float, default=None, help="learning rate (default: 2e-4; 5e-2 for --train embedding)")
    d.add_argument("--prior-weight", type=float, default=1.0,
                   help="lambda of the prior-preservation loss (0 = plain fine-tuning, which drifts)")
    d.add_argument("--num-class-images", type=int, default=100, help="class images generated for the prior loss")
    d.add_argument("--batch-size", type=int, default=8, help="subject images per step (and class images per step)")
    d.add_argument("--train", default="all", choices=("all", "cross_attention", "embedding"),
                   help="which weights train: all U-Net weights (DreamBooth), the cross-attention keys/values "
                        "(Custom Diffusion), or only the identifier's embedding (textual inversion)")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    d.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return parser


# -- train ------------------------------------------------------------------------------------------------

def _train(args, objective: str | None = None) -> int:
    from .data import DatasetUnavailableError
    from .train import NonFiniteError, TrainConfig, Trainer

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}  # typed flags only
    if objective is not None:
        given["objective"] = objective
    resume = given.pop("resume", None)
    if given.get("max_steps") is not None and "max_seconds" not in given:
        given["max_seconds"] = None  # a step count alone means "run that many steps", not "... or 60 s"
    base_channels = getattr(args, "base_channels", None)
    try:
        if resume is not None:
            if base_channels is not None or "model_kwargs" in given:
                raise UsageError("--base-channels / --model-kwargs cannot change when resuming (the model comes from "
                                 "the checkpoint)")
            path = resume
            if path == _RESUME_OUT:
                out = given.get("out_dir")
                dataset = given.get("dataset", TrainConfig().dataset)
                suffix = (f"-{objective}" if objective in ("autoencoder", "clip") else
                          "-latent" if given.get("autoencoder") else "")
                path = out if out not in (None, "auto") else str(Path("runs") / f"{dataset}{suffix}")
            trainer = Trainer.resume(path, **given)
        else:
            if base_channels is not None:
                kwargs = given.get("model_kwargs", {})
                if kwargs.get("base_channels", base_channels) != base_channels:
                    raise UsageError(f"--base-channels {base_channels} contradicts --model-kwargs "
                                     f"base_channels={kwargs['base_channels']}: give one of them")
                given["model_kwargs"] = {**kwargs, "base_channels": base_channels}
            trainer = Trainer(TrainConfig(**given))
    except (ValueError, DatasetUnavailableError) as e:  # includes CheckpointError, unknown dataset / preset
        return _fail(e)

    if trainer.is_main:
        n_params = sum(p.numel() for p in trainer.raw_model.parameters())
        where = trainer.out_dir if trainer.out_dir is not None else "(memory)"
        latent = ""
        if trainer.autoencoder is not None:
            std = f" (std {trainer.latent_std:.3g})" if trainer.latent_std is not None else " (encoded per batch)"
            latent = f" latents {list(trainer.sample_shape)}{std} of"
        if trainer.text_encoder is not None:
            latent = f" prompts ({trainer.config.text_encoder}) ->" + latent
        print(f"training {type(trainer.raw_model).__name__} ({n_params / 1e6:.2f}M parameters) on{latent} "
              f"{trainer.config.dataset} with {trainer.device}, world size {trainer.dist.world_size}, "
              f"from step {trainer.step}; writing to {where}", flush=True)
    try:
        history = trainer.train()
    except NonFiniteError as e:  # NaN/inf data or loss: nothing was saved, the last checkpoint is intact
        return _fail(e, status=1)
    finally:
        trainer.close()
    if trainer.is_main:
        loss = f", last logged loss {history[-1]['loss']:.4f}" if history else ""
        print(f"stopped at step {trainer.step} after {trainer.elapsed:.1f} s{loss}")
        if trainer.out_dir is not None and trainer.kind == "clip":
            print(f"checkpoint: {trainer.checkpoint_dir} (zero-shot accuracy on training digits "
                  f"{trainer.samples[-1]['zero_shot_accuracy']:.3f})\nmeasure it with: python benchmarks/clip.py "
                  f"--checkpoint {trainer.out_dir}")
        elif trainer.out_dir is not None and trainer.kind == "autoencoder":
            print(f"checkpoint: {trainer.checkpoint_dir} (latent scale factor "
                  f"{trainer.raw_model.scale_factor:.4g})\ntrain latent diffusion on it with: {PROG} train --dataset "
                  f"{trainer.config.dataset} --autoencoder {trainer.out_dir}")
        elif trainer.out_dir is not None:
            print(f"checkpoint: {trainer.checkpoint_dir}\nsample with: {PROG} sample --checkpoint {trainer.out_dir}")
    return 130 if trainer.interrupted else 0


# -- sample -----------------------------------------------------------------------------------------------

def _parse_labels(text: str | None, num_classes: int | None, n: int):
    """The label list cycled to n entries, or None for an unconditional model."""
    if text is None:
        return None if num_classes is None else [i % num_classes for i in range(n)]
    if num_classes is None:
        raise UsageError("--labels was given but this model is unconditional (no classes); drop --labels")
    try:
        labels = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise UsageError(f"--labels must be comma-separated integers like 0,1,2, got {text!r}") from None
    if not labels:
        raise UsageError("--labels is empty; give class labels like 0,1,2")
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise UsageError(f"label {bad[0]} is out of range: this model has {num_classes} classes "
                         f"(labels 0..{num_classes - 1})")
    return [labels[i % len(labels)] for i in range(n)]


def _sample_shape(config: dict, model) -> tuple:
    from .models import sample_shape

    shape = config.get("extra", {}).get("sample_shape")
    if shape:
        return tuple(int(v) for v in shape)
    try:
        return sample_shape(config["model_config"])
    except ValueError:
        raise UsageError("cannot tell the sample shape from the checkpoint's config.json") from None


def _sample(args) -> int:
    import numpy as np
    import torch

    from . import checkpoint as ckpt
    from .device import pick_device

    try:
        if args.n < 1:
            raise UsageError(f"--n must be >= 1, got {args.n}")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.guidance < 0:
            raise UsageError(f"--guidance must be >= 0, got {args.guidance}")
        device = pick_device(args.device)
        if _is_text_to_image(args.checkpoint):
            return _sample_text(args, device)
        if args.prompt is not None:
            raise UsageError(f"--prompt needs a text-to-image checkpoint (trained with `train --text-encoder`); "
                             f"{args.checkpoint} is not one: use --labels")
        if ckpt.load_config(args.checkpoint, diffusion=False)["model_class"] == "AutoencoderKL":
            raise UsageError(f"{args.checkpoint} holds an autoencoder (AutoencoderKL), which makes no samples: train "
                             f"a latent diffusion model on it with `{PROG} train --autoencoder {args.checkpoint}` "
                             f"and sample from that")
        if ckpt.load_config(args.checkpoint, diffusion=False)["model_class"] == "CLIP":
            raise UsageError(f"{args.checkpoint} holds a CLIP, which makes no images: it scores and classifies them "
                             f"(ddpm_lite.clip; python benchmarks/clip.py --checkpoint {args.checkpoint})")
        config = ckpt.load_config(args.checkpoint)
        model, diffusion = ckpt.from_pretrained(args.checkpoint, device=device, use_ema=args.ema)
        autoencoder = ckpt.load_autoencoder(args.checkpoint, device=device)  # None: a pixel-space model
        num_classes = getattr(model, "num_classes", None)
        labels = _parse_labels(args.labels, num_classes, args.n)
        if args.guidance > 0 and num_classes is None:
            raise UsageError("--guidance needs a class-conditional model; this one is unconditional: use --guidance 0")
        if args.sampler == "ddpm" and args.steps not in (None, diffusion.num_timesteps):
            raise UsageError(f"--sampler ddpm runs all {diffusion.num_timesteps} steps; drop --steps or use "
                             f"--sampler ddim / dpmpp2m")
        if args.steps is not None and not 1 <= args.steps <= diffusion.num_timesteps:
            raise UsageError(f"--steps must be in 1..{diffusion.num_timesteps}, got {args.steps}")
        shape = _sample_shape(config, model)  # a latent model's: the latent shape
        image_shape = tuple(autoencoder.image_shape) if autoencoder is not None else shape
        init = keep = None
        if args.init_image is None and (args.strength is not None or args.keep_mask is not None):
            raise UsageError("--strength and --keep-mask edit an image: give it with --init-image")
        if args.strength is not None and args.keep_mask is not None:
            raise UsageError("choose one edit: --strength (image-to-image) or --keep-mask (inpainting)")
        if args.init_image is not None:
            init = _read_images(args.init_image, image_shape, args.n)
        if args.keep_mask is not None:
            keep = _read_mask(args.keep_mask, image_shape)
    except ValueError as e:
        return _fail(e)

    from . import editing, latent

    if autoencoder is not None:  # latent diffusion: edit / sample in latent space, then decode (ddpm_lite.latent)
        def inpaint(model, diffusion, x, keep, **kw):
            return latent.inpaint(model, diffusion, autoencoder, x, keep, **kw)

        def img2img(model, diffusion, x, strength, **kw):
            return latent.img2img(model, diffusion, autoencoder, x, strength, **kw)
    else:
        inpaint, img2img = editing.inpaint, editing.img2img

    gen = torch.Generator().manual_seed(args.seed)
    common = dict(sampler=args.sampler, steps=args.steps, guidance=args.guidance, eta=args.eta, generator=gen,
                  progress=args.progress)
    chunks = []
    try:
        for start in range(0, args.n, args.batch_size):
            b = min(args.batch_size, args.n - start)
            y = torch.tensor(labels[start:start + b], dtype=torch.long, device=device) if labels is not None else None
            if keep is not None:
                x = inpaint(model, diffusion, init[start:start + b].to(device), keep.to(device), y=y,
                            resample=args.resample, **common)
            elif init is not None:
                strength = 0.5 if args.strength is None else args.strength
                x = img2img(model, diffusion, init[start:start + b].to(device), strength, y=y, **common)
            else:
                x = latent.sample_images(model, diffusion, (b, *shape), autoencoder=autoencoder, y=y, device=device,
                                         **common)
            chunks.append(x.float().cpu())
    except ValueError as e:
        return _fail(e)
    images = torch.cat(chunks)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if images.ndim == 4:
        from torchvision.utils import save_image

        nrow = args.nrow
        if nrow is None:
            distinct = len(dict.fromkeys(labels[: min(len(labels), 16)])) if labels is not None else 0
            nrow = distinct if args.labels is not None and 0 < distinct <= 16 else \
                (num_classes if labels is not None and num_classes <= 16 else math.ceil(math.sqrt(args.n)))
        save_image((images + 1) / 2, str(out), nrow=max(1, nrow), padding=1)
    else:  # 2-D points: a scatter plot
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        pts = images.reshape(images.shape[0], -1).numpy()
        ax.scatter(pts[:, 0], pts[:, 1 if pts.shape[1] > 1 else 0], s=3, c=labels if labels is not None else None)
        ax.set_aspect("equal")
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)
    print(f"wrote {args.n} samples to {out}")
    if args.save_array:
        arr = Path(args.save_array)
        arr.parent.mkdir(parents=True, exist_ok=True)
        label_array = np.asarray(labels if labels is not None else [-1] * args.n, dtype=np.int64)
        np.savez(arr, images=images.numpy().astype(np.float32), labels=label_array)
        print(f"wrote arrays to {arr}")
    return 0


def _is_text_to_image(checkpoint) -> bool:
    from . import checkpoint as ckpt
    from .pipeline import PIPELINE_CONFIG

    if (Path(checkpoint) / PIPELINE_CONFIG).exists():
        return True
    config = ckpt.load_config(checkpoint, diffusion=False)
    return bool(config.get("extra", {}).get(ckpt.TEXT_ENCODER_SUBDIR))


def _sample_text(args, device) -> int:
    """`sample` for a text-to-image checkpoint or cascade: prompts through `ddpm_lite.pipeline.TextToImage`."""
    import numpy as np
    import torch

    from .pipeline import TextToImage

    try:
        if not args.prompt:
            raise UsageError(f"{args.checkpoint} is a text-to-image model: give what to draw with --prompt, e.g. "
                             f"--prompt \"a thin seven\"")
        for flag, given in (("--labels", args.labels is not None), ("--init-image", args.init_image is not None),
                            ("--keep-mask", args.keep_mask is not None), ("--strength", args.strength is not None)):
            if given:
                raise UsageError(f"{flag} does not apply to a text-to-image model: describe the image with --prompt")
        if args.eta != 0.0:
            raise UsageError("--eta does not apply to text-to-image sampling (DDIM with eta 0)")
        pipe = TextToImage.from_pretrained(args.checkpoint, device=device)
        pipe.text_encoder.check_prompts(args.prompt)  # an unknown word: one clear line naming it
        if args.steps is not None and not 1 <= args.steps <= pipe.diffusion.num_timesteps:
            raise UsageError(f"--steps must be in 1..{pipe.diffusion.num_timesteps}, got {args.steps}")
        prompts = [args.prompt[i % len(args.prompt)] for i in range(args.n)]
        steps = args.steps or (None if args.sampler == "ddpm" else 20)
        threshold = None if args.threshold == "none" else args.threshold
        gen = torch.Generator().manual_seed(args.seed)
        chunks = []
        for start in range(0, args.n, args.batch_size):
            chunks.append(pipe(prompts[start:start + args.batch_size], guidance=args.guidance, steps=steps,
                               sampler=args.sampler, generator=gen, threshold=threshold, aug_level=args.aug_level,
                               progress=args.progress))
    except ValueError as e:  # includes CheckpointError and unknown words
        return _fail(e)
    images = torch.cat(chunks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from torchvision.utils import save_image

    nrow = args.nrow or (len(args.prompt) if 1 < len(args.prompt) <= 16 else math.ceil(math.sqrt(args.n)))
    save_image((images + 1) / 2, str(out), nrow=max(1, nrow), padding=1)
    print(f"wrote {args.n} samples to {out}")
    if args.save_array:
        arr = Path(args.save_array)
        arr.parent.mkdir(parents=True, exist_ok=True)
        np.savez(arr, images=images.numpy().astype(np.float32), labels=np.full(args.n, -1, dtype=np.int64),
                 prompts=np.asarray(prompts))
        print(f"wrote arrays to {arr}")
    return 0


def _read_image_file(path: Path, channels: int):
    """A PNG/JPEG as a float tensor [1, C, H, W] in [-1, 1] with the model's number of channels."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{path}: not a readable PNG/JPEG image ({e})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr / 127.5 - 1.0).unsqueeze(0)


def _npz_or_image(path: str, flag: str, key: str, channels: int, hint: str = ""):
    """The float32 array `key` of an .npz file, or else a PNG/JPEG as [1, C, H, W] in [-1, 1]."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {path} does not exist")
    if p.suffix != ".npz":
        return _read_image_file(p, channels)
    with np.load(p) as f:
        if key not in f:
            raise UsageError(f"{flag} {path}: expected an array named {key!r}{hint}, found {sorted(f.files)}")
        return torch.from_numpy(np.asarray(f[key], dtype=np.float32))


def _read_images(path: str, shape: tuple, n: int):
    """--init-image: an .npz with 'images' [N, C, H, W] in [-1, 1] or one PNG/JPEG, cycled to n images."""
    images = _npz_or_image(path, "--init-image", "images", shape[0], " (as --save-array writes)")
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise UsageError(f"--init-image {path}: the model makes images of shape {list(shape)} (C, H, W), the file "
                         f"holds {list(images.shape[1:]) if images.dim() == 4 else list(images.shape)}")
    reps = -(-n // images.shape[0])
    return images.repeat(reps, 1, 1, 1)[:n]


def _read_mask(path: str, shape: tuple):
    """--keep-mask: an .npz with 'mask' [H, W] of 0/1, or a black-and-white PNG (white = keep)."""
    mask = _npz_or_image(path, "--keep-mask", "mask", 1)
    if mask.dim() == 4:  # a PNG: [1, 1, H, W] in [-1, 1]; white (> mid-grey) = keep
        mask = (mask[0, 0] > 0).float()
    if tuple(mask.shape) != tuple(shape[1:]):
        raise UsageError(f"--keep-mask {path}: expected a mask of the image size {list(shape[1:])} (H, W), "
                         f"got {list(mask.shape)}")
    return mask[None, None]


# -- export -----------------------------------------------------------------------------------------------

def _export(args) -> int:
    from . import checkpoint as ckpt
    from .ema import EMA

    try:
        config = ckpt.load_config(args.checkpoint, diffusion=False)  # an autoencoder has no diffusion
        model = ckpt.load_weights(args.checkpoint, ckpt.model_from_config(config), "model")
        has_diffusion = config.get("diffusion_config") is not None  # not for an autoencoder or a CLIP
        diffusion = ckpt.diffusion_from_config(ckpt.load_config(args.checkpoint)) if has_diffusion else None
        ema = None
        extra = dict(config.get("extra", {}))
        seconds = ckpt.train_seconds(args.checkpoint)  # the run's training time travels with its weights
        if seconds is not None:
            extra["train_seconds"] = round(seconds, 1)
        if args.ema_only:
            if not config.get("has_ema"):
                raise ckpt.CheckpointError(f"--ema-only: {args.checkpoint} has no EMA weights to export")
            ckpt.load_weights(args.checkpoint, model, "ema")  # the EMA weights become the model's
            extra["weights"] = "ema"
        elif config.get("has_ema"):
            ema = EMA(model)
            ckpt.load_weights(args.checkpoint, ema.module, "ema")
        if args.fp16:
            model.half()
            if ema is not None:
                ema.module.half()
            extra["stored_dtype"] = "float16"
        if args.note:
            extra["note"] = args.note
        # a latent model's autoencoder travels with it (None for a pixel-space model)
        autoencoder = ckpt.load_autoencoder(args.checkpoint) if has_diffusion else None
        # a text-to-image model's frozen text encoder travels with it too
        text_encoder = ckpt.load_text_encoder(args.checkpoint) if has_diffusion else None
        for frozen in (autoencoder, text_encoder):
            if frozen is not None and args.fp16:
                frozen.half()
        out = ckpt.save_pretrained(args.out, model, diffusion, ema=ema, extra=extra, autoencoder=autoencoder,
                                   text_encoder=text_encoder)
    except ValueError as e:
        return _fail(e)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {ckpt.resolve_checkpoint_dir(args.checkpoint)} to {out} ({size / 1e6:.1f} MB)")
    return 0


def _cascade(args) -> int:
    from . import checkpoint as ckpt
    from .pipeline import DEFAULT_AUG_LEVEL, TextToImage, save_cascade

    try:
        base = ckpt.load_config(args.base)
        sr = ckpt.load_config(args.super_resolution)
        if not base.get("extra", {}).get(ckpt.TEXT_ENCODER_SUBDIR):
            raise UsageError(f"--base {args.base} is not text-conditioned: train it with --text-encoder")
        if not sr["model_config"].get("low_res_channels"):
            raise UsageError(f"--super-resolution {args.super_resolution} is not a super-resolution model: train "
                             f"it with --low-res")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        fp16 = ["--fp16"] if args.fp16 else []
        for src, name in ((args.base, "base"), (args.super_resolution, "super_resolution")):
            code = _export(build_parser().parse_args(["export", "--checkpoint", src, "--out", str(out / name),
                                                      "--ema-only", *fp16]))
            if code:
                return code
        aug = DEFAULT_AUG_LEVEL if args.aug_level is None else args.aug_level
        save_cascade(out, "base", "super_resolution", aug_level=aug, name=out.name)
        pipe = TextToImage.from_pretrained(out)  # it loads
    except ValueError as e:
        return _fail(e)
    print(f"wrote the cascade {out}: {pipe!r}, super-resolution told aug level {aug}")
    return 0


def _dreambooth(args) -> int:
    import torch

    from .device import pick_device
    from .personalize import DreamBoothConfig, dreambooth, save_personalized
    from .pipeline import TextToImage
    from .subjects import load_subject

    try:
        if args.num_threads is not None:
            if args.num_threads < 1:
                raise UsageError(f"--num-threads must be >= 1, got {args.num_threads}")
            torch.set_num_threads(args.num_threads)
        device = pick_device(args.device)
        pipe = TextToImage.from_pretrained(args.checkpoint, device=device)
        subject = load_subject(args.subject)
        lr = args.lr if args.lr is not None else (5e-2 if args.train == "embedding" else 2e-4)
        config = DreamBoothConfig(identifier=args.identifier, class_noun=args.class_noun, steps=args.steps, lr=lr,
                                  batch_size=args.batch_size, prior_batch_size=args.batch_size,
                                  prior_weight=args.prior_weight, num_class_images=args.num_class_images,
                                  train=args.train, seed=args.seed)
        pipe.text_encoder.check_prompts([f"a {args.class_noun}"])  # the class noun must be a known word
        result = dreambooth(pipe, subject, config, progress=args.progress)
        save_personalized(args.out, result, subject_source=str(args.subject))
    except KeyboardInterrupt:
        print("ddpm_lite: interrupted: nothing written", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        return _fail(e)
    last = result.history[-1]
    print(f"wrote {args.out}: {args.steps} steps in {result.seconds:.1f} s (loss {last['loss']:.4f}: subject "
          f"{last['instance']:.4f}, prior {last['prior']:.4f}); try: {PROG} sample --checkpoint {args.out} "
          f"--prompt \"a {args.identifier} {args.class_noun}\" --guidance 3 --n 16")
    return 0


# -- entry point ------------------------------------------------------------------------------------------

def _fail(err: Exception, status: int = 2) -> int:
    message = " ".join(str(err).split())  # one line
    print(f"ddpm_lite: error: {message}", file=sys.stderr)
    return status


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with status 2 on unknown flags / bad choices
    if args.command == "train":
        return _train(args)
    if args.command == "export":
        return _export(args)
    if args.command == "train-autoencoder":
        return _train(args, objective="autoencoder")
    if args.command == "train-clip":
        return _train(args, objective="clip")
    if args.command == "cascade":
        return _cascade(args)
    if args.command == "dreambooth":
        return _dreambooth(args)
    return _sample(args)


if __name__ == "__main__":
    sys.exit(main())
