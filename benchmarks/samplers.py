"""Fast samplers against 1000-step DDPM on a trained digits model: seconds and quality.

    python benchmarks/samplers.py                                   # assets/checkpoints/digits, 200 samples
    python benchmarks/samplers.py --checkpoint runs/digits --n 500 --device cuda
    python benchmarks/samplers.py --configs ddim:50,dpmpp2m:10      # a subset (DDPM-1000 is always the baseline
                                                                     # unless --no-ddpm)

Every sampler starts from the same x_T (one seed) with the same labels (0..9 repeated, no guidance), on one
batch of `--n` images, and is scored with `ddpm_lite.metrics.evaluate_samples`: the digits classifier's
accuracy, the Fréchet distance in its feature space (FD, not FID) beside the real-data floor at the same
sample size, precision and recall. "speed-up" = DDPM-1000 seconds / this sampler's seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import _common as C

DEFAULT_CONFIGS = "ddim:50,ddim:20,ddim:10,dpmpp2m:20,dpmpp2m:10"
NAMES = {"ddpm": "DDPM (ancestral)", "ddim": "DDIM (η = 0)", "dpmpp2m": "DPM-Solver++(2M)"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(C.REPO / "assets" / "checkpoints" / "digits"),
                   help="checkpoint or run directory of a class-conditional digits model")
    p.add_argument("--n", type=int, default=200, help="samples per sampler (one batch; labels 0..9 repeated)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated sampler:steps to compare")
    p.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM baseline (no speed-up column)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T (and of DDPM's noise)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p


def parse_configs(text: str, num_timesteps: int) -> list[tuple[str, int | None]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, steps = item.partition(":")
        if name not in NAMES:
            raise SystemExit(f"samplers.py: error: unknown sampler {name!r} in --configs; expected one of {list(NAMES)}")
        if name == "ddpm":
            out.append(("ddpm", None))
            continue
        try:
            k = int(steps)
        except ValueError:
            raise SystemExit(f"samplers.py: error: --configs entries look like ddim:50, got {item!r}") from None
        if not 1 <= k <= num_timesteps:
            raise SystemExit(f"samplers.py: error: steps must be in 1..{num_timesteps}, got {item!r}")
        out.append((name, k))
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    C.set_threads(args.threads)
    from ddpm_lite import metrics
    from ddpm_lite.checkpoint import from_pretrained
    from ddpm_lite.device import pick_device
    from ddpm_lite.diffusion import randn
    from ddpm_lite.samplers import sample

    if not Path(args.checkpoint).exists():
        raise SystemExit(f"samplers.py: error: no checkpoint at {args.checkpoint}; train one with "
                         f"`python -m ddpm_lite train --out runs/digits` and pass --checkpoint runs/digits")
    device = pick_device(args.device)
    model, diffusion = from_pretrained(args.checkpoint, device=device)
    model.eval()
    if getattr(model, "num_classes", None) is None:
        raise SystemExit("samplers.py: error: this benchmark needs a class-conditional model (labels 0..9)")
    shape = (args.n, model.in_channels, *model.image_size)
    labels = (torch.arange(args.n) % 10).to(device)
    x_T = randn(shape, torch.Generator().manual_seed(args.seed), device)
    configs = parse_configs(args.configs, diffusion.num_timesteps)
    if not args.no_ddpm and ("ddpm", None) not in configs:
        configs.insert(0, ("ddpm", None))

    results = []
    for name, steps in configs:
        label = f"{name}-{steps or diffusion.num_timesteps}"
        print(f"sampling {args.n} images with {label} ...", flush=True)
        gen = torch.Generator().manual_seed(args.seed + 1)
        C.sync(device)
        with C.timer() as seconds:
            x = sample(model, diffusion, shape, sampler=name, steps=steps, y=labels, guidance=args.guidance,
                       generator=gen, device=device, x_T=x_T.clone())
            C.sync(device)
        scores = metrics.evaluate_samples(x.float().cpu(), labels.cpu())
        evals = (steps or diffusion.num_timesteps) * (2 if args.guidance else 1)
        results.append({"sampler": name, "steps": steps or diffusion.num_timesteps, "evaluations": evals,
                        "seconds": seconds(), **scores})
        print(f"  {seconds():.1f} s, accuracy {scores['accuracy']:.3f}, FD {scores['fd']:.2f}", flush=True)

    base = next((r["seconds"] for r in results if r["sampler"] == "ddpm"), None)
    headers = ["sampler", "steps", "network evals", "seconds", "speed-up vs DDPM-1000", "accuracy", "FD",
               "FD real floor", "precision", "recall"]
    rows = [[NAMES[r["sampler"]], r["steps"], r["evaluations"], r["seconds"],
             None if base is None else base / r["seconds"], r["accuracy"], r["fd"], r["fd_real_floor"],
             r["precision"], r["recall"]] for r in results]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    cfg = model.config
    shown = Path(args.checkpoint).resolve()
    shown = shown.relative_to(C.REPO) if shown.is_relative_to(C.REPO) else Path(args.checkpoint)
    notes = [f"Model: {shown} (EMA weights; UNet base_channels {cfg.get('base_channels')}, "
             f"{C.count_parameters(model):,} parameters), {args.n} samples in one batch, labels 0..9 repeated, "
             f"guidance w = {args.guidance:g}, the same x_T (seed {args.seed}) for every sampler, x̂_0 clipped "
             "to [−1, 1]. DDIM uses trailing timesteps, DPM-Solver++(2M) log-SNR-uniform ones.",
             "FD = Fréchet distance in the digits classifier's feature space (not FID) against half of the real "
             "training digits; the floor is the other real half at the same size."]
    C.print_summary(f"Samplers on digits: seconds and quality ({args.n} samples, {device})", C.machine_line(device),
                    C.command_line(), C.markdown_table(headers, rows), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
