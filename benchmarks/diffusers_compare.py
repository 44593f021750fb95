"""ddpm_lite against 🤗 diffusers on the digits task: training speed and time-to-quality (issue 5).

    pip install -r requirements-bench.txt                     # diffusers: a benchmark extra, never a dependency
    python benchmarks/diffusers_compare.py --part speed       # (a) training throughput, ~1 min on 2 CPU cores
    python benchmarks/diffusers_compare.py --part quality --seconds 60  # (b) same wall-clock budget, then scores
    python benchmarks/diffusers_compare.py --part quality --seconds 1000 --max-steps 150  # same steps instead
    python benchmarks/diffusers_compare.py                    # both

The diffusers model is a `UNet2DModel` built to mirror ddpm_lite's `digits` preset (read from
`ddpm_lite.unet.PRESETS` when the script runs): block_out_channels = base_channels × channel_mults,
layers_per_block = num_res_blocks, attention blocks at the same resolutions, the same GroupNorm groups,
dropout and heads, and `num_class_embeds = num_classes + 1` (the last index is the null class, exactly like
ddpm_lite's label dropout). The two architectures are the same DDPM U-Net, so the parameter counts match
exactly; the script prints both, and FLOPs per image from torch.utils.flop_counter.

(a) speed: one optimisation step = noise a batch, predict ε, MSE, backward, AdamW step; each library's own
    way (ddpm_lite `GaussianDiffusion.training_losses`; diffusers `DDPMScheduler.add_noise` + `UNet2DModel`),
    the same batch, device and autocast (bf16 on CUDA). Images/s (median step), peak memory, ratio.
(b) quality: both trained class-conditionally for the same wall-clock seconds on the digits training split
    with the same recipe: ddpm_lite's `Trainer` with `TrainConfig()` defaults, and a plain diffusers loop
    that copies those defaults (batch, AdamW lr / weight decay, LR warm-up, gradient clipping, label dropout,
    EMA decay and warm-up, min-SNR weighting if set). Then `--n` samples each (labels 0..9 repeated, no
    guidance) with DDIM-50, η = 0, "trailing" timesteps and x̂_0 clipped to [−1, 1] (ddpm_lite's `ddim`;
    diffusers' `DDIMScheduler` with `use_clipped_model_output=True`, so ε̂ is recomputed from the clipped x̂_0
    as ddpm_lite does; the script checks that both loops give the same images from the same network), scored
    with ddpm_lite.metrics (classifier accuracy, Fréchet distance in the classifier's feature space beside its
    real-data floor, precision / recall).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F

import _common as C

INSTALL_HINT = ("benchmarks/diffusers_compare.py needs the `diffusers` package, which ddpm_lite does not depend "
                "on. Install the benchmark extras with:  pip install -r requirements-bench.txt  "
                "(or: pip install diffusers)")


def require_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"{INSTALL_HINT}\n(import failed: {e})")
    return diffusers


# -- the two models ------------------------------------------------------------------------------------------


def level_sizes(config: dict) -> list[int]:
    size = config["image_size"]
    size = min(size) if isinstance(size, (list, tuple)) else size
    sizes = [size]
    for _ in config["channel_mults"][1:]:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def diffusers_unet(preset: str = "digits", num_classes: int | None = "preset"):
    """A diffusers UNet2DModel with the same architecture as ddpm_lite's UNet preset `preset`."""
    from diffusers import UNet2DModel

    from ddpm_lite.unet import PRESETS

    c = dict(PRESETS[preset])
    if num_classes == "preset":
        num_classes = c["num_classes"]
    sizes = level_sizes(c)
    widths = [c["base_channels"] * m for m in c["channel_mults"]]
    attn = [s in c["attention_resolutions"] for s in sizes]
    size = c["image_size"]
    return UNet2DModel(
        sample_size=tuple(size) if isinstance(size, (list, tuple)) else size,
        in_channels=c["in_channels"], out_channels=c["in_channels"],
        block_out_channels=tuple(widths), layers_per_block=c["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=c["num_groups"], dropout=c["dropout"],
        # ddpm_lite uses num_heads heads everywhere; the middle block (deepest width) fixes the head size
        attention_head_dim=widths[-1] // c["num_heads"],
        class_embed_type=None, num_class_embeds=None if num_classes is None else num_classes + 1,
    )


def ddpm_lite_unet(preset: str = "digits"):
    from ddpm_lite.unet import unet_preset

    return unet_preset(preset)


def diffusers_schedulers(diffusion):
    """diffusers' DDPMScheduler / DDIMScheduler with exactly ddpm_lite's β schedule (passed as trained_betas)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    prediction = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[diffusion.parameterization]
    betas = diffusion.schedule.betas.detach().cpu().double().numpy()
    common = dict(num_train_timesteps=diffusion.num_timesteps, trained_betas=betas, prediction_type=prediction,
                  clip_sample=True, clip_sample_range=1.0)
    ddpm = DDPMScheduler(**common)
    ddim = DDIMScheduler(**common, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0)
    return ddpm, ddim


# -- (a) training speed --------------------------------------------------------------------------------------


def speed_child(lib: str, args) -> dict:
    """Measure one library's training step in this process (called in a fresh process per library)."""
    from ddpm_lite.device import pick_device
    from ddpm_lite.diffusion import GaussianDiffusion

    device = pick_device(args.device)
    threads = C.set_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    diffusion = GaussianDiffusion("linear", timesteps=1000).to(device)
    model = (ddpm_lite_unet() if lib == "ddpm_lite" else diffusers_unet()).to(device)
    num_classes = getattr(model, "num_classes", None) if lib == "ddpm_lite" else \
        (model.config.num_class_embeds - 1 if model.config.num_class_embeds else None)
    b = args.batch
    c = model.config if lib == "ddpm_lite" else {"image_size": model.config.sample_size,
                                                  "in_channels": model.config.in_channels}
    size = c["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    x0 = (torch.rand(b, c["in_channels"], h, w, generator=gen) * 2 - 1).to(device)
    y = torch.randint(0, num_classes + 1, (b,), generator=gen).to(device) if num_classes else None
    amp = args.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    autocast = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if amp == "bf16" \
        else nullcontext

    if lib == "ddpm_lite":
        def forward_once():
            t = torch.full((1,), 500, device=device, dtype=torch.long)
            return model(x0[:1], t, None if y is None else y[:1])

        def loss_fn():
            return diffusion.training_losses(model, x0, y=y)["loss"].float().mean()
    else:
        ddpm_sched, _ = diffusers_schedulers(diffusion)

        def forward_once():
            t = torch.full((1,), 500, device=device, dtype=torch.long)
            return model(x0[:1], t, class_labels=None if y is None else y[:1]).sample

        def loss_fn():
            noise = torch.randn_like(x0)
            t = torch.randint(0, ddpm_sched.config.num_train_timesteps, (b,), device=device)
            xt = ddpm_sched.add_noise(x0, noise, t)
            return F.mse_loss(model(xt, t, class_labels=y).sample.float(), noise)

    model.eval()
    flops = C.forward_flops(forward_once)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast():
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with C.PeakMemory(device) as mem:
        timing = C.time_iterations(step, device, args.warmup, args.iters)
    return {"lib": lib, "params": C.count_parameters(model), "gflops_per_image": None if flops is None else flops / 1e9,
            "step_s": timing["median_s"], "images_per_s": b / timing["median_s"], "peak_mib": mem.mib,
            "memory_kind": mem.kind, "amp": amp, "device": str(device), "machine": C.machine_line(device),
            "threads": threads}


def child_argv(args) -> list[str]:
    out = ["--device", args.device, "--batch", str(args.batch), "--warmup", str(args.warmup),
           "--iters", str(args.iters), "--amp", args.amp]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def run_speed(args) -> None:
    results = {}
    for lib in ("ddpm_lite", "diffusers"):
        print(f"(a) timing {lib} training steps at batch {args.batch} ...", flush=True)
        if args.no_isolate:
            results[lib] = speed_child(lib, args)
        else:
            cmd = [sys.executable, __file__, *child_argv(args), "--child", lib]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"timing {lib} failed (status {proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
            results[lib] = json.loads(line[len("RESULT "):])
    a, b = results["ddpm_lite"], results["diffusers"]
    headers = ["library", "params", "GFLOPs/img (fwd)", "batch", "train img/s", "peak MiB"]
    rows = [[r["lib"], f"{r['params']:,}", r["gflops_per_image"], args.batch, r["images_per_s"], r["peak_mib"]]
            for r in (a, b)]
    rows.append(["ratio ddpm_lite / diffusers", f"{a['params'] / b['params']:.3f}",
                 None if not (a["gflops_per_image"] and b["gflops_per_image"]) else
                 a["gflops_per_image"] / b["gflops_per_image"], "", a["images_per_s"] / b["images_per_s"],
                 a["peak_mib"] / b["peak_mib"] if b["peak_mib"] else None])
    notes = [f"Both: the digits preset's U-Net, ε-MSE forward + backward + AdamW step, autocast {a['amp']}, median of "
             f"{args.iters} steps after {args.warmup} warm-up; each library timed in its own fresh process.",
             "Memory: " + C.MEMORY_NOTE[a["memory_kind"]] + "."]
    C.print_summary(f"ddpm_lite vs diffusers: training speed on {a['device']}", a["machine"], C.command_line(),
                    C.markdown_table(headers, rows), notes)


# -- (b) time to quality ---------------------------------------------------------------------------------------


def train_diffusers(unet, diffusion, images, labels, config, seconds: float, device, gen: torch.Generator):
    """A plain diffusers training loop with ddpm_lite's TrainConfig recipe; returns (EMA model, steps, seconds)."""
    import copy

    import types

    from ddpm_lite.losses import min_snr_weight
    from ddpm_lite.train import Trainer

    config = replace(config, max_seconds=seconds)
    lr_host = types.SimpleNamespace(config=config)

    ddpm_sched, _ = diffusers_schedulers(diffusion)
    num_classes = unet.config.num_class_embeds - 1
    alphas_cumprod = ddpm_sched.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    amp = config.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    autocast = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if amp == "bf16" \
        else nullcontext
    n, b = images.shape[0], config.batch_size
    perm, pos, step = torch.randperm(n, generator=gen), 0, 0
    unet.train()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if config.max_steps is not None and step >= config.max_steps:
            break
        if pos + b > n:  # a new epoch; the tail is dropped, as in the Trainer
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + b].to(device)
        pos += b
        x0, y = images[idx], labels[idx]
        drop = torch.rand(b, generator=gen).to(device) < config.label_dropout
        y = torch.where(drop, torch.full_like(y, num_classes), y)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, ddpm_sched.config.num_train_timesteps, (b,), generator=gen).to(device)
        xt = ddpm_sched.add_noise(x0, noise, t)
        kind = ddpm_sched.config.prediction_type
        target = noise if kind == "epsilon" else ddpm_sched.get_velocity(x0, noise, t) if kind == "v_prediction" else x0
        # the Trainer's own LR rule (warm-up, then cosine over max_steps or over the wall-clock budget)
        lr = Trainer.lr_at(lr_host, step, (time.perf_counter() - start) / seconds)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast():
            pred = unet(xt, t, class_labels=y).sample
        per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        if config.min_snr_gamma is not None:  # min-SNR-γ (Hang et al. 2023), weighted as ddpm_lite does
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            per_sample = per_sample * min_snr_weight(snr.float(), config.min_snr_gamma, diffusion.parameterization)
        loss = per_sample.mean()
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        # EMA with ddpm_lite's warm-up: d = min(decay, (1 + k) / (warmup + k)), k = number of updates so far
        k = step
        d = config.ema_decay if not config.ema_warmup else min(config.ema_decay, (1 + k) / (config.ema_warmup + k))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1.0 - d)
            for be, bm in zip(ema.buffers(), unet.buffers()):
                be.copy_(bm)
        step += 1
    C.sync(device)
    return ema, step, time.perf_counter() - start


@torch.no_grad()
def sample_diffusers(unet, diffusion, labels: torch.Tensor, steps: int, seed: int, device, batch: int = 500):
    _, ddim = diffusers_schedulers(diffusion)
    gen = torch.Generator().manual_seed(seed)
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, (tuple, list)) else (c.sample_size, c.sample_size)
    out = []
    for i in range(0, len(labels), batch):
        y = labels[i:i + batch].to(device)
        x = torch.randn((len(y), c.in_channels, *size), generator=gen).to(device)
        ddim.set_timesteps(steps, device=device)
        for t in ddim.timesteps:
            eps = unet(x, t.expand(len(y)).to(device), class_labels=y).sample
            x = ddim.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        out.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(out)


class _AsDiffusersUNet:
    """ddpm_lite's UNet behind diffusers' calling convention (for the sampler parity check)."""

    def __init__(self, model):
        import types

        self.model = model
        size = model.image_size
        self.config = types.SimpleNamespace(sample_size=size, in_channels=model.in_channels)

    def __call__(self, x, t, class_labels=None):
        import types

        return types.SimpleNamespace(sample=self.model(x, t.long(), class_labels))


def sampler_parity(model, diffusion, device, steps: int = 10, n: int = 8) -> float:
    """Max |difference| between ddpm_lite's DDIM and the diffusers DDIMScheduler loop used here, on the same
    network and x_T: ≈ 1e-6 means both libraries run the same sampler, so quality differences come from
    training alone."""
    from ddpm_lite.samplers import sample

    labels = torch.arange(n) % 10
    with torch.no_grad():
        a = sample(model, diffusion, (n, model.in_channels, *model.image_size), sampler="ddim", steps=steps,
                   y=labels.to(device), generator=torch.Generator().manual_seed(0), device=device)
        b = sample_diffusers(_AsDiffusersUNet(model), diffusion, labels, steps, 0, device)
    return float((a.float().cpu() - b).abs().max())


def run_quality(args) -> None:
    from ddpm_lite import metrics
    from ddpm_lite.data import load_dataset
    from ddpm_lite.device import pick_device
    from ddpm_lite.samplers import sample
    from ddpm_lite.train import TrainConfig, Trainer

    device = pick_device(args.device)
    C.set_threads(args.threads)
    labels = torch.arange(args.n) % 10
    config = TrainConfig(dataset="digits", max_seconds=args.seconds, out_dir=None, progress=False,
                         device=str(device), num_threads=args.threads, seed=args.seed, sample_n=10,
                         max_steps=args.max_steps).resolved()
    rows, info = [], {}

    limit = f"{args.seconds:g} s" + (f" / {args.max_steps} steps" if args.max_steps else "")
    print(f"(b) training ddpm_lite for {limit} (Trainer, TrainConfig defaults) ...", flush=True)
    trainer = Trainer(config)
    with C.timer() as wall:
        trainer.train()
    trainer.close()
    lite_steps, lite_seconds = trainer.step, trainer.elapsed
    print(f"    {lite_steps} steps in {lite_seconds:.1f} s (wall {wall():.1f} s incl. the end-of-run sample grid)",
          flush=True)
    model, diffusion = trainer.ema.module.eval(), trainer.diffusion
    parity = sampler_parity(model, diffusion, device)
    print(f"    sampler parity: ddpm_lite DDIM vs diffusers DDIMScheduler on the same network, max |Δ| = {parity:.1e}",
          flush=True)
    with C.timer() as t_sample:
        x = sample(model, diffusion, (args.n, *trainer.sample_shape), sampler="ddim", steps=args.steps, y=labels,
                   generator=torch.Generator().manual_seed(args.seed), device=device)
    lite = metrics.evaluate_samples(x.cpu(), labels)
    rows.append(["ddpm_lite", f"{C.count_parameters(model):,}", lite_steps, lite_seconds,
                 lite_steps * config.batch_size / lite_seconds, t_sample(), lite["accuracy"], lite["fd"],
                 lite["fd_real_floor"], lite["precision"], lite["recall"]])
    info["ddpm_lite"] = lite

    print(f"(b) training diffusers for {limit} (plain loop, same recipe) ...", flush=True)
    torch.manual_seed(args.seed)
    unet = diffusers_unet().to(device)
    train = load_dataset("digits", split="train")
    gen = torch.Generator().manual_seed(args.seed)
    ema, steps, seconds = train_diffusers(unet, diffusion, train.images.to(device), train.labels.to(device), config,
                                          args.seconds, device, gen)
    print(f"    {steps} steps in {seconds:.1f} s", flush=True)
    with C.timer() as t_sample:
        xd = sample_diffusers(ema, diffusion, labels, args.steps, args.seed, device)
    theirs = metrics.evaluate_samples(xd, labels)
    rows.append(["diffusers", f"{C.count_parameters(ema):,}", steps, seconds, steps * config.batch_size / seconds,
                 t_sample(), theirs["accuracy"], theirs["fd"], theirs["fd_real_floor"], theirs["precision"],
                 theirs["recall"]])
    info["diffusers"] = theirs

    headers = ["library", "params", "steps", "train s", "train img/s", f"sample s ({args.n}, DDIM-{args.steps})",
               "accuracy", "FD", "FD real floor", "precision", "recall"]
    budget = f"{args.seconds:g} s of training loop" + (f" or {args.max_steps} steps, whichever comes first"
                                                       if args.max_steps else "")
    notes = [f"Class-conditional digits (null class 10, label dropout {config.label_dropout}), the same budget "
             f"({budget}), batch {config.batch_size}, AdamW lr {config.lr:g}, "
             f"warm-up {config.warmup_steps}, grad clip {config.grad_clip}, EMA {config.ema_decay} (warm-up "
             f"{config.ema_warmup}), min-SNR γ {config.min_snr_gamma}; both sampled from the EMA weights with "
             f"DDIM-{args.steps} (η = 0, trailing spacing, x̂_0 clipped), labels 0..9 repeated, no guidance, seed "
             f"{args.seed}; the two DDIM loops agree to max |Δ| = {parity:.1e} on the same network (diffusers "
             "with use_clipped_model_output=True, i.e. ε̂ recomputed from the clipped x̂_0 as ddpm_lite does). "
             f"diffusers' loop takes its LR from the Trainer's own rule (`Trainer.lr_at`: warm-up {config.warmup_steps} "
             f"steps, then {config.lr_schedule} to {config.min_lr_ratio:g} × lr over {'max_steps' if args.max_steps else 'the wall-clock budget'}).",
             "FD = Fréchet distance in the digits classifier's feature space (not FID), against one half of the "
             f"real training digits ({lite['n_real']} images); the floor is another real half of the same size."]
    C.print_summary(f"ddpm_lite vs diffusers: quality after {budget.replace(' of training loop', '')} of training on "
                    f"{device}",
                    C.machine_line(device), C.command_line(), C.markdown_table(headers, rows), notes)


# -- entry point -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--part", default="both", choices=("speed", "quality", "both"), help="(a) speed, (b) quality")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    g = p.add_argument_group("(a) speed")
    g.add_argument("--batch", type=int, default=128, help="training batch for both models")
    g.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    g.add_argument("--iters", type=int, default=10, help="timed steps (the median is reported)")
    g.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"), help="auto = bf16 autocast on CUDA")
    g.add_argument("--no-isolate", action="store_true", help="time both libraries in this process")
    g = p.add_argument_group("(b) quality")
    g.add_argument("--seconds", type=float, default=60.0, help="training wall-clock budget per library")
    g.add_argument("--max-steps", type=int, default=None,
                   help="also stop both at this many optimisation steps (a load-independent comparison: use a "
                        "large --seconds with it)")
    g.add_argument("--n", type=int, default=500, help="samples per library (labels 0..9 repeated)")
    g.add_argument("--steps", type=int, default=50, help="DDIM steps")
    g.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order and sampling")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    require_diffusers()
    if args.child:
        print("RESULT " + json.dumps(speed_child(args.child, args)), flush=True)
        return 0
    if args.part in ("speed", "both"):
        run_speed(args)
    if args.part in ("quality", "both"):
        run_quality(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
