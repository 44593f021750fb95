"""Pixel-space vs latent diffusion on mnist5k: size, FLOPs, training and sampling speed, sample quality.

    python benchmarks/latent.py                        # the shipped mnist5k and mnist5k-latent checkpoints
    python benchmarks/latent.py --threads 1 --n 20     # a quick check
    python benchmarks/latent.py --pixel runs/mnist5k --latent runs/mnist5k-latent --n 1000 --device cuda

For each model (the pixel-space `UNet` on 1×28×28 and the latent `UNet` on the autoencoder's 4×7×7 scaled
latents) it reports

* parameters (the U-Net; for the latent model also its autoencoder);
* GFLOPs of one training forward pass per image (torch.utils.flop_counter; multiply-add = 2 FLOPs): the U-Net
  on one image or latent. Latent training runs on latents encoded once up front (as the Trainer does), so
  the encoder is not part of a step; its one-off cost per image is in the notes;
* training images/s: one optimisation step (ε-loss forward + backward + AdamW) at `--train-batch` on real
  training digits (latent: their encoded latents), median of `--iters` timed steps after `--warmup`;
* sampling images/s: the `--n` quality samples drawn with DDIM-`--steps` in batches of `--sample-batch`
  (latent: sampling the latents *and* decoding them), total images / total seconds;
* quality of those samples (class-conditional, labels 0..9 repeated, no guidance, seed `--seed`):
  accuracy of the shipped 28×28 classifier, Fréchet distance in its feature space beside the real-vs-real
  floor, precision / recall (k = 3), from `ddpm_lite.metrics.evaluate_samples`;
* the training time each checkpoint records (config.json `extra`, else its trainer state), so the rows can
  be compared at equal wall-clock: the latent model's time includes its autoencoder's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import _common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pixel", default="assets/checkpoints/mnist5k", help="pixel-space checkpoint")
    p.add_argument("--latent", default="assets/checkpoints/mnist5k-latent",
                   help="latent diffusion checkpoint (with its autoencoder/ subfolder)")
    p.add_argument("--autoencoder", default="assets/checkpoints/mnist5k-autoencoder",
                   help="the autoencoder's own checkpoint, for its recorded training time (optional)")
    p.add_argument("--n", type=int, default=500, help="samples per model for quality and sampling speed")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--sample-batch", type=int, default=100, help="sampling batch")
    p.add_argument("--train-batch", type=int, default=64, help="batch of the training-speed measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps")
    p.add_argument("--iters", type=int, default=3, help="timed training steps")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p


def _path(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() or path.exists() else C.REPO / path


def recorded_training(directory: Path) -> dict:
    """{"steps", "seconds"}: the training a checkpoint records (config.json extra.step and extra.train_seconds,
    which `export` copies from the run's trainer state; a run directory's own trainer state). seconds is None
    where nothing is recorded."""
    from ddpm_lite.checkpoint import CheckpointError, load_config, train_seconds

    try:
        steps = load_config(directory, diffusion=False).get("extra", {}).get("step")
        return {"steps": steps, "seconds": train_seconds(directory)}
    except (CheckpointError, OSError):  # a missing or foreign folder: nothing recorded
        return {"steps": None, "seconds": None}


def train_images_per_s(model, diffusion, x, y, device, warmup: int, iters: int) -> float:
    """Median images/s of one ε-loss forward + backward + AdamW step on a copy of `model` (fp32)."""
    import copy

    net = copy.deepcopy(model).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, y = x.to(device), y.to(device)

    def step():
        loss = diffusion.training_losses(net, x, y=y)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timing = C.time_iterations(step, device, warmup, iters)
    return x.shape[0] / timing["median_s"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    C.set_threads(args.threads)
    from ddpm_lite import checkpoint, latent, metrics
    from ddpm_lite.data import load_dataset
    from ddpm_lite.device import pick_device

    device = pick_device(args.device)
    pixel_dir, latent_dir = _path(args.pixel), _path(args.latent)
    pixel_model, pixel_diffusion = checkpoint.from_pretrained(pixel_dir, device=device)
    latent_model, latent_diffusion = checkpoint.from_pretrained(latent_dir, device=device)
    ae = checkpoint.load_autoencoder(latent_dir, device=device)
    if ae is None:
        raise SystemExit(f"{latent_dir} is not a latent diffusion checkpoint (no autoencoder/ subfolder)")
    if checkpoint.load_autoencoder(pixel_dir) is not None:
        raise SystemExit(f"{pixel_dir} is a latent checkpoint; --pixel needs a pixel-space one")
    dataset = checkpoint.load_config(pixel_dir).get("extra", {}).get("dataset", "mnist5k")
    train = load_dataset(dataset)
    xb = train.images[:args.train_batch]
    yb = train.labels[:args.train_batch].long()
    zb = latent.encode_images(ae, xb.to(device)).cpu()
    one = torch.zeros(1, dtype=torch.long, device=device)
    image_shape, latent_shape = tuple(ae.image_shape), tuple(ae.latent_shape)

    def unet_gflops(model, shape):
        x = torch.zeros(1, *shape, device=device)
        flops = C.forward_flops(lambda: model(x, one, one))
        return None if flops is None else flops / 1e9

    dec_flops = C.forward_flops(lambda: ae.decode(torch.zeros(1, *latent_shape, device=device)))
    enc_flops = C.forward_flops(lambda: ae.encode(torch.zeros(1, *image_shape, device=device)))
    dec_gflops = None if dec_flops is None else dec_flops / 1e9
    enc_gflops = None if enc_flops is None else enc_flops / 1e9

    labels = torch.arange(10).repeat((args.n + 9) // 10)[:args.n]
    results = {}
    for name, model, diffusion, shape, autoencoder, x_train in (
            ("pixel", pixel_model, pixel_diffusion, image_shape, None, xb),
            ("latent", latent_model, latent_diffusion, latent_shape, ae, zb)):
        print(f"{name}: training speed ...", flush=True)
        train_ips = train_images_per_s(model, diffusion, x_train, yb, device, args.warmup, args.iters)
        print(f"{name}: {args.n} samples, DDIM-{args.steps} ...", flush=True)
        gen = torch.Generator().manual_seed(args.seed)
        chunks = []
        with C.timer() as sample_s:
            for i in range(0, args.n, args.sample_batch):
                y = labels[i:i + args.sample_batch].to(device)
                chunks.append(latent.sample_images(model, diffusion, (len(y), *shape), autoencoder=autoencoder,
                                                   sampler="ddim", steps=args.steps, y=y, guidance=0.0,
                                                   generator=gen, device=device).cpu())
                C.sync(device)
        images = torch.cat(chunks)
        scores = metrics.evaluate_samples(images, labels, classifier=dataset)
        gflops = unet_gflops(model, shape)
        sample_gflops = None if gflops is None else args.steps * gflops + ((dec_gflops or 0.0) if autoencoder is not None else 0.0)
        results[name] = {
            "params": C.count_parameters(model),
            "autoencoder_params": C.count_parameters(autoencoder) if autoencoder is not None else 0,
            "input_shape": list(shape), "gflops_train_fwd": gflops, "gflops_per_sample": sample_gflops,
            "train_img_s": train_ips, "sample_img_s": args.n / sample_s(), "sampling_s": sample_s(), **scores,
        }

    pixel_rec = recorded_training(pixel_dir)
    latent_rec = recorded_training(latent_dir)
    ae_rec = recorded_training(_path(args.autoencoder))
    results["pixel"]["recorded_training"] = pixel_rec
    results["latent"]["recorded_training"] = {**latent_rec, "autoencoder": ae_rec}

    def shape_text(s):
        return "×".join(str(v) for v in s)

    headers = ["model", "input", "U-Net params", "AE params", "GFLOPs/img (train fwd)", "train img/s",
               f"GFLOPs/sample (DDIM-{args.steps})", "sample img/s", "accuracy", "FD", "FD real floor", "precision",
               "recall"]
    rows = []
    for name in ("pixel", "latent"):
        r = results[name]
        rows.append([f"{name} ({(pixel_dir if name == 'pixel' else latent_dir).name})", shape_text(r["input_shape"]),
                     f"{r['params']:,}", f"{r['autoencoder_params']:,}" if r["autoencoder_params"] else "–",
                     r["gflops_train_fwd"], r["train_img_s"], r["gflops_per_sample"], r["sample_img_s"],
                     r["accuracy"], r["fd"], r["fd_real_floor"], r["precision"], r["recall"]])
    p, l = results["pixel"], results["latent"]
    ratio = ["latent / pixel", "", f"{l['params'] / p['params']:.2f}", "", None, l["train_img_s"] / p["train_img_s"],
             None, l["sample_img_s"] / p["sample_img_s"], None, None, None, None, None]
    if p["gflops_train_fwd"] and l["gflops_train_fwd"]:
        ratio[4] = l["gflops_train_fwd"] / p["gflops_train_fwd"]
        ratio[6] = l["gflops_per_sample"] / p["gflops_per_sample"]
    rows.append(ratio)

    def seconds(rec):
        if rec["seconds"] is None:
            return "not recorded"
        return f"{rec['steps']} steps in {rec['seconds']:.0f} s"

    notes = [
        f"Both models class-conditional on {dataset}, EMA weights; {args.n} samples each, labels 0..9 repeated, "
        f"DDIM-{args.steps} (η = 0), no guidance, seed {args.seed}, batches of {min(args.sample_batch, args.n)}; the latent "
        f"sampler does not clip (latents are unbounded) and its images/s and GFLOPs include one decoder pass per "
        f"image ({C.fmt(dec_gflops)} GFLOPs). Training: batch {args.train_batch}, median of {args.iters} steps "
        f"after {args.warmup} warm-up, fp32; latent training runs on latents encoded once (encoder "
        f"{C.fmt(enc_gflops)} GFLOPs per image, paid once per training image, not per step).",
        f"accuracy: the shipped {dataset} classifier agrees with the intended label. FD: Fréchet distance in its "
        f"64-d feature space (not FID) against one half of the real training digits ({p['n_real']} images); floor: "
        "the other real half, cut to the number of samples. precision / recall: k-NN manifolds, k = 3.",
    ]
    pixel_s = pixel_rec["seconds"]
    latent_s = None if latent_rec["seconds"] is None else latent_rec["seconds"] + (ae_rec["seconds"] or 0.0)
    wall = (f"Equal wall-clock (training times the checkpoints record): pixel {seconds(pixel_rec)}; latent "
            f"{seconds(latent_rec)} + autoencoder {seconds(ae_rec)}")
    if pixel_s and latent_s:
        wall += (f" = {latent_s:.0f} s in all, {latent_s / pixel_s:.2f}× the pixel model's time"
                 + ("" if ae_rec["seconds"] is not None else " (autoencoder time not recorded: not included)"))
        if l["train_img_s"] and p["train_img_s"]:
            wall += (f". At the measured training speeds the pixel model's {pixel_s:.0f} s would buy the latent "
                     f"model about {l['train_img_s'] / p['train_img_s']:.1f}× as many training images.")
    else:
        wall += "."
    notes.append(wall)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    C.print_summary(f"Pixel vs latent diffusion on {dataset} ({args.n} samples, DDIM-{args.steps})",
                    C.machine_line(device), C.command_line(), C.markdown_table(headers, rows), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
