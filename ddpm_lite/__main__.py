"""Command line: `python -m ddpm_lite train ...` and `python -m ddpm_lite sample ...`.

    python -m ddpm_lite train                                  # class-conditional digits, 60 s on the CPU
    python -m ddpm_lite train --dataset mnist --max-steps 20000 --out runs/mnist
    python -m ddpm_lite train --resume --out runs/digits --max-seconds 120     # continue a run
    torchrun --nproc_per_node 2 -m ddpm_lite train --max-steps 5000            # data-parallel
    python -m ddpm_lite sample --checkpoint runs/digits --labels 0,1,2 --n 30 --guidance 1 --out samples.png
    python -m ddpm_lite export --checkpoint runs/digits --out assets/checkpoints/digits   # weights only, to share

Bad input (a wrong checkpoint path, labels out of range, an unknown dataset, preset or sampler) prints one
line `ddpm_lite: error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

PROG = "python -m ddpm_lite"
SAMPLERS = ("ddpm", "ddim", "dpmpp2m")


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit status 2."""


# -- the parser -------------------------------------------------------------------------------------------

def _optional_float(text: str):
    return None if text.lower() in ("none", "") else float(text)


def _gamma(text: str):
    return text.lower() if text.lower() == "auto" else _optional_float(text)


def _optional_int(text: str):
    return None if text.lower() in ("none", "") else int(text)


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig

    d = TrainConfig()
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description="Train and sample DDPMs (ddpm_lite).", formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", metavar="{train,sample,export}")
    sub.required = True

    t = sub.add_parser("train", help="train a diffusion model", formatter_class=fmt,
                       description="Train a diffusion model. With no flags: class-conditional digits for 60 s.")
    g = t.add_argument_group("data and model")
    g.add_argument("--dataset", default=d.dataset, help="dataset name (see ddpm_lite.data), e.g. digits, mnist, moons")
    g.add_argument("--preset", default=d.preset, help="UNet preset (digits, mnist, cifar10), toy_mlp, or auto")
    g.add_argument("--base-channels", type=int, default=None,
                   help="override the preset's base_channels (None: the preset's value)")
    g.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=d.conditional,
                   help="class-conditional model (labels + null class for guidance)")
    g.add_argument("--label-dropout", type=float, default=d.label_dropout,
                   help="probability of replacing a label by the null class (for classifier-free guidance)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=d.hflip,
                   help="random left-right flips of the training images (e.g. for cifar10)")
    g = t.add_argument_group("diffusion")
    g.add_argument("--timesteps", type=int, default=d.timesteps, help="number of diffusion steps T")
    g.add_argument("--schedule", default=d.schedule, help="noise schedule: linear, cosine or sigmoid")
    g.add_argument("--parameterization", default=d.parameterization, help="model target: eps, x0 or v")
    g.add_argument("--loss-type", default=d.loss_type, help="l2, l1 or huber")
    g.add_argument("--min-snr-gamma", type=_gamma, default=d.min_snr_gamma,
                   help="min-SNR-gamma loss weighting (Hang et al. 2023); none = plain L_simple of Ho et al.; "
                        "auto = the recipe for the preset/dataset (1 for digits, else 5)")
    g = t.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="batch size per process and micro-step (None: the recipe for the preset/dataset, "
                        "e.g. digits 64, cifar10 128; see ddpm_lite.train.RECIPES)")
    g.add_argument("--lr", type=float, default=d.lr,
                   help="peak learning rate (AdamW) (None: the recipe, e.g. digits 3e-3, cifar10 2e-4)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear LR warm-up steps")
    g.add_argument("--lr-schedule", default=d.lr_schedule, choices=("cosine", "constant"),
                   help="LR after warm-up: cosine decays to 10%% at --max-steps (or, with only --max-seconds, over the wall-clock budget)")
    g.add_argument("--grad-clip", type=_optional_float, default=d.grad_clip, help="gradient-norm clip; None = off")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="gradient accumulation micro-steps")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay")
    g.add_argument("--ema-warmup", type=_optional_int, default=d.ema_warmup,
                   help="EMA warm-up: decay_t = min(decay, (1+t)/(warmup+t)); None = off")
    g = t.add_argument_group("duration")
    g.add_argument("--max-steps", type=_optional_int, default=d.max_steps, help="stop after this many steps")
    g.add_argument("--max-seconds", type=_optional_float, default=d.max_seconds,
                   help="stop after this many seconds (None = no time limit)")
    g = t.add_argument_group("speed")
    g.add_argument("--device", default=d.device, help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--amp", default=d.amp, choices=("auto", "bf16", "off"),
                   help="mixed precision: auto = bf16 autocast on CUDA")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=d.compile, help="torch.compile the model")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help="channels-last memory format (faster on recent GPUs)")
    g.add_argument("--num-threads", type=_optional_int, default=d.num_threads,
                   help="CPU threads for PyTorch (None = PyTorch's default)")
    g = t.add_argument_group("output")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (init, data order, noise)")
    g.add_argument("--out", default=None, help="run directory (None: runs/<dataset>)")
    g.add_argument("--resume", nargs="?", const="__out__", default=None,
                   help="continue a run: --resume PATH, or bare --resume to continue --out")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between history entries")
    g.add_argument("--sample-every", type=int, default=d.sample_every,
                   help="steps between sample grids (0 = only at the end)")
    g.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints (0 = only at the end)")
    g.add_argument("--sample-n", type=int, default=d.sample_n, help="images in each sample grid")
    g.add_argument("--sample-steps", type=int, default=d.sample_steps, help="sampler steps for the sample grids")
    g.add_argument("--sampler", default=d.sampler, choices=SAMPLERS, help="sampler for the sample grids")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress, help="progress bar")

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

    e = sub.add_parser("export", help="write a shareable checkpoint (config + weights, no optimizer state)",
                       formatter_class=fmt,
                       description="Copy a run's model and EMA weights with its config.json into a new checkpoint "
                                   "directory without the trainer state (optimizer, RNG): a smaller file to share "
                                   "or commit. It loads with from_pretrained / `sample`, but cannot be resumed.")
    e.add_argument("--checkpoint", default="runs/digits", help="checkpoint or run directory to export")
    e.add_argument("--out", required=True, help="directory for the exported checkpoint")
    e.add_argument("--note", default=None, help="free text stored in config.json under extra.note "
                                                "(e.g. the command that trained it)")
    return parser


def _explicit_dests(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The options the user actually typed (so --resume only overrides those)."""
    probe = build_parser()
    for action in _all_actions(probe):
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def _all_actions(parser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                yield from _all_actions(p)


# -- train ------------------------------------------------------------------------------------------------

_CLI_TO_CONFIG = {"out": "out_dir"}
_NOT_CONFIG = {"command", "resume", "base_channels"}


def _train(args, explicit: set[str]) -> int:
    from .data import DatasetUnavailableError
    from .train import TrainConfig, Trainer

    config_fields = {f.name for f in fields(TrainConfig)}
    values = {}
    for dest, value in vars(args).items():
        if dest in _NOT_CONFIG:
            continue
        name = _CLI_TO_CONFIG.get(dest, dest)
        if name in config_fields:
            values[name] = value
    if values.get("out_dir") is None:
        values["out_dir"] = "auto"
    if args.base_channels is not None:
        values["model_kwargs"] = {"base_channels": args.base_channels}

    try:
        if args.resume is not None:
            path = args.resume
            if path == "__out__":
                path = args.out or str(Path("runs") / args.dataset)
            overrides = {_CLI_TO_CONFIG.get(k, k): values[_CLI_TO_CONFIG.get(k, k)] for k in explicit
                         if k not in _NOT_CONFIG and _CLI_TO_CONFIG.get(k, k) in values}
            if "base_channels" in explicit:
                raise UsageError("--base-channels cannot change when resuming (the model comes from the checkpoint)")
            trainer = Trainer.resume(path, **overrides)
        else:
            trainer = Trainer(TrainConfig(**values))
    except (ValueError, DatasetUnavailableError) as e:  # includes CheckpointError, unknown dataset / preset
        return _fail(e)

    if trainer.is_main:
        n_params = sum(p.numel() for p in trainer.raw_model.parameters())
        where = trainer.out_dir if trainer.out_dir is not None else "(memory)"
        print(f"training {type(trainer.raw_model).__name__} ({n_params / 1e6:.2f}M parameters) on "
              f"{trainer.config.dataset} with {trainer.device}, world size {trainer.dist.world_size}, "
              f"from step {trainer.step}; writing to {where}", flush=True)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    if trainer.is_main:
        loss = f", last logged loss {history[-1]['loss']:.4f}" if history else ""
        print(f"stopped at step {trainer.step} after {trainer.elapsed:.1f} s{loss}")
        if trainer.out_dir is not None:
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
    from . import samplers
    from .device import pick_device

    try:
        if args.n < 1:
            raise UsageError(f"--n must be >= 1, got {args.n}")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.guidance < 0:
            raise UsageError(f"--guidance must be >= 0, got {args.guidance}")
        device = pick_device(args.device)
        config = ckpt.load_config(args.checkpoint)
        model, diffusion = ckpt.from_pretrained(args.checkpoint, device=device, use_ema=args.ema)
        num_classes = getattr(model, "num_classes", None)
        labels = _parse_labels(args.labels, num_classes, args.n)
        if args.guidance > 0 and num_classes is None:
            raise UsageError("--guidance needs a class-conditional model; this one is unconditional: use --guidance 0")
        if args.sampler == "ddpm" and args.steps not in (None, diffusion.num_timesteps):
            raise UsageError(f"--sampler ddpm runs all {diffusion.num_timesteps} steps; drop --steps or use "
                             f"--sampler ddim / dpmpp2m")
        if args.steps is not None and not 1 <= args.steps <= diffusion.num_timesteps:
            raise UsageError(f"--steps must be in 1..{diffusion.num_timesteps}, got {args.steps}")
        shape = _sample_shape(config, model)
    except ValueError as e:
        return _fail(e)

    gen = torch.Generator().manual_seed(args.seed)
    chunks = []
    for start in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - start)
        y = torch.tensor(labels[start:start + b], dtype=torch.long) if labels is not None else None
        x = samplers.sample(model, diffusion, (b, *shape), sampler=args.sampler, steps=args.steps, y=y,
                            guidance=args.guidance, eta=args.eta, generator=gen, device=device,
                            progress=args.progress)
        chunks.append(x.float().cpu())
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


# -- export -----------------------------------------------------------------------------------------------

def _export(args) -> int:
    from . import checkpoint as ckpt
    from .ema import EMA

    try:
        config = ckpt.load_config(args.checkpoint)
        model = ckpt.load_weights(args.checkpoint, ckpt.build_model(config), "model")
        diffusion = ckpt.build_diffusion(config)
        ema = None
        if config.get("has_ema"):
            ema = EMA(model)
            ckpt.load_weights(args.checkpoint, ema.module, "ema")
        extra = dict(config.get("extra", {}))
        if args.note:
            extra["note"] = args.note
        out = ckpt.save_pretrained(args.out, model, diffusion, ema=ema, extra=extra)
    except ValueError as e:
        return _fail(e)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"exported {ckpt.resolve_checkpoint_dir(args.checkpoint)} to {out} ({size / 1e6:.1f} MB)")
    return 0


# -- entry point ------------------------------------------------------------------------------------------

def _fail(err: Exception) -> int:
    message = " ".join(str(err).split())  # one line
    print(f"ddpm_lite: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with status 2 on unknown flags / bad choices
    if args.command == "train":
        return _train(args, _explicit_dests(parser, argv))
    if args.command == "export":
        return _export(args)
    return _sample(args)


if __name__ == "__main__":
    sys.exit(main())
