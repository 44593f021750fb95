"""Speed of ddpm_lite's UNet presets on this machine: parameters, FLOPs, training and sampling throughput, memory.

    python benchmarks/speed.py                           # digits, mnist, cifar10 on the best device here
    python benchmarks/speed.py --presets digits --device cpu --threads 2 --batch 64 --iters 10

For every preset in `ddpm_lite.unet.PRESETS` (read when the script runs, so a retuned preset is measured
as it is now) it reports

* parameters, and GFLOPs of one forward pass per image (torch.utils.flop_counter; multiply-add = 2 FLOPs);
* train images/s: one optimisation step = ε-prediction loss forward + backward + AdamW step at `--batch`
  (bf16 autocast on CUDA, as the Trainer's `--amp auto`), median over `--iters` timed steps after `--warmup`;
* sampling: network evaluations per second at `--sample-batch` (no grad, fp32, as the samplers run), and
  the DDIM-50 images/s that implies (evaluations/s × batch / 50; the sampler's own arithmetic is negligible);
* peak memory of each phase: CUDA `torch.cuda.max_memory_allocated`; CPU the rise of the peak RSS above the
  RSS at the start of the phase (see `_common.PeakMemory`).

Each phase of each preset runs in a fresh Python process (memory freed by one phase stays in the process's
RSS and would hide the next one's peak) unless `--no-isolate`. The script ends with one Markdown table to paste into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from contextlib import nullcontext

import torch

import _common as C

# per-device defaults: (train batch, sample batch, warm-up, timed iterations). The CPU ones finish all three
# presets in a few minutes on 2 cores; cifar10 (35.7M parameters) gets a small batch and few iterations.
DEFAULTS = {
    "cpu": {"digits": (128, 128, 2, 5), "mnist": (32, 32, 1, 3), "cifar10": (8, 8, 1, 2)},
    "cuda": {"digits": (128, 256, 5, 20), "mnist": (128, 256, 5, 20), "cifar10": (128, 256, 5, 20)},
}
FALLBACK = {"cpu": (16, 16, 1, 3), "cuda": (128, 256, 5, 20)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--presets", default="all", help="comma-separated UNet presets, or 'all' (every PRESETS entry)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: per preset and device)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default: per preset and device)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up iterations (default: per preset)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: per preset)")
    p.add_argument("--sampling-steps", type=int, default=50, help="sampler steps for the images/s column (DDIM-S)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"),
                   help="training autocast: auto = bf16 on CUDA (like the Trainer), off elsewhere")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--no-isolate", action="store_true", help="run every preset in this process")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure one preset, print JSON
    return p


def settings(args, preset: str, device: torch.device) -> tuple[int, int, int, int]:
    kind = "cuda" if device.type == "cuda" else "cpu"
    batch, sample_batch, warmup, iters = DEFAULTS[kind].get(preset, FALLBACK[kind])
    return (args.batch or batch, args.sample_batch or sample_batch,
            warmup if args.warmup is None else args.warmup, iters if args.iters is None else args.iters)


def random_batch(model, batch: int, device: torch.device, gen: torch.Generator):
    c = model.config
    size = c["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    x = (torch.rand(batch, c["in_channels"], h, w, generator=gen) * 2 - 1).to(device)
    y = None
    if c.get("num_classes"):
        # real labels and the null class, as label dropout feeds them
        y = torch.randint(0, c["num_classes"] + 1, (batch,), generator=gen).to(device)
    return x, y


def measure(preset: str, phase: str, args) -> dict:
    """Measure one phase ("train" or "sample") of one preset in this process."""
    from ddpm_lite.device import pick_device
    from ddpm_lite.diffusion import GaussianDiffusion
    from ddpm_lite.unet import PRESETS, unet_preset

    device = pick_device(args.device)
    threads = C.set_threads(args.threads)
    batch, sample_batch, warmup, iters = settings(args, preset, device)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = unet_preset(preset).to(device)
    diffusion = GaussianDiffusion("linear", timesteps=1000)
    result = {"preset": preset, "config": dict(PRESETS[preset]), "device": str(device),
              "machine": C.machine_line(device), "threads": threads, "params": C.count_parameters(model),
              "warmup": warmup, "iters": iters}

    if phase == "train":  # forward + backward + AdamW
        amp = args.amp
        if amp == "auto":
            amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
        autocast = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if amp == "bf16" \
            else nullcontext
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = random_batch(model, batch, device, gen)

        def train_step():
            with autocast():
                # noise and timesteps from the device's own RNG (no host-to-device copies in the timed step)
                loss = diffusion.training_losses(model, x, y=y)["loss"].float().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        with C.PeakMemory(device) as mem:
            timing = C.time_iterations(train_step, device, warmup, iters)
        result.update(amp=amp, train_batch=batch, train_step_s=timing["median_s"],
                      train_images_per_s=batch / timing["median_s"], train_peak_mib=mem.mib, memory_kind=mem.kind)
        return result

    # sampling: network evaluations without gradients, fp32 (as ddpm_lite.samplers run)
    model.eval()
    x1, y1 = random_batch(model, 1, device, gen)
    t1 = torch.full((1,), 500, dtype=torch.long, device=device)
    flops = C.forward_flops(lambda: model(x1, t1, y1))
    xs, ys = random_batch(model, sample_batch, device, gen)
    ts = torch.full((sample_batch,), 500, dtype=torch.long, device=device)

    def evaluate():
        with torch.inference_mode():
            diffusion.model_output(model, xs, ts, ys)

    with C.PeakMemory(device) as mem:
        timing = C.time_iterations(evaluate, device, warmup, max(iters, 3))
    evals_per_s = 1.0 / timing["median_s"]
    result.update(gflops_per_image=None if flops is None else flops / 1e9, sample_batch=sample_batch,
                  evals_per_s=evals_per_s, sample_images_per_s=evals_per_s * sample_batch / args.sampling_steps,
                  sample_peak_mib=mem.mib, memory_kind=mem.kind, sample_iters=max(iters, 3))
    return result


def measure_preset(preset: str, args, argv: list[str]) -> dict:
    """Both phases of a preset, each in a fresh process unless --no-isolate (memory freed by one phase stays
    in the process's RSS and would hide the other phase's peak on a CPU)."""
    result = {}
    for phase in ("sample", "train"):
        result.update(measure(preset, phase, args) if args.no_isolate else run_isolated(preset, phase, argv))
    return result


def run_isolated(preset: str, phase: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--child", f"{preset}:{phase}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"measuring {phase} of preset {preset!r} failed (status {proc.returncode}):\n"
                     f"{proc.stderr.strip()[-3000:]}")


def strip_child_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--json", "--no-isolate"):
            skip = a == "--json"
            continue
        if a.startswith("--json="):
            continue
        out.append(a)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.child:
        preset, phase = args.child.split(":")
        print("RESULT " + json.dumps(measure(preset, phase, args)), flush=True)
        return 0

    from ddpm_lite.device import pick_device
    from ddpm_lite.unet import PRESETS

    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise SystemExit(f"speed.py: error: {e}")
    names = list(PRESETS) if args.presets == "all" else [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise SystemExit(f"speed.py: error: unknown preset(s) {unknown}; known: {sorted(PRESETS)}")
    C.set_threads(args.threads)
    results = []
    for name in names:
        print(f"measuring {name} on {device} ...", flush=True)
        r = measure_preset(name, args, strip_child_args(argv))
        print(f"  {r['params'] / 1e6:.2f}M parameters, train {r['train_images_per_s']:.1f} img/s at batch "
              f"{r['train_batch']}, {r['evals_per_s']:.2f} evaluations/s at batch {r['sample_batch']}", flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)

    s = args.sampling_steps
    headers = ["preset", "params", "GFLOPs/img (fwd)", "train batch", "train img/s", "train peak MiB",
               "sample batch", "evals/s", f"DDIM-{s} img/s", "sample peak MiB"]
    rows = [[r["preset"], f"{r['params'] / 1e6:.2f}M", r["gflops_per_image"], r["train_batch"],
             r["train_images_per_s"], r["train_peak_mib"], r["sample_batch"], r["evals_per_s"],
             r["sample_images_per_s"], r["sample_peak_mib"]] for r in results]
    first = results[0]
    notes = [
        f"Training: ε-loss forward + backward + AdamW step, autocast {first['amp']}; sampling: network "
        f"evaluations without gradients in fp32; DDIM-{s} img/s = evals/s × sample batch / {s}. "
        f"Median of {', '.join(str(r['iters']) for r in results)} timed iterations after "
        f"{', '.join(str(r['warmup']) for r in results)} warm-up (per preset).",
        "Memory: " + C.MEMORY_NOTE[first["memory_kind"]] + ".",
        "Presets as measured: " + "; ".join(
            f"{r['preset']} = base {r['config']['base_channels']}, mults {tuple(r['config']['channel_mults'])}, "
            f"{r['config']['num_res_blocks']} res block(s), attention at {tuple(r['config']['attention_resolutions'])}"
            for r in results) + ".",
    ]
    C.print_summary(f"UNet presets: speed on {first['device']}", first["machine"], C.command_line(),
                    C.markdown_table(headers, rows), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
