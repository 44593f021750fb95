"""The sample-quality benchmark: train with the CLI, sample, score with ddpm_lite.metrics.

    python benchmarks/quality.py                                   # digits: train 60 s (CLI defaults), then score
    python benchmarks/quality.py --checkpoint assets/checkpoints/digits   # score an existing checkpoint
    python benchmarks/quality.py --checkpoint assets/checkpoints/mnist5k  # 28×28 (the dataset comes from it)
    python benchmarks/quality.py --dataset mnist5k --seconds 600    # train 28×28 digits for 10 minutes
    python benchmarks/quality.py --seconds 120 --n 1000 --device cuda

What it runs, through the command line a user would type:

    python -m ddpm_lite train --dataset <digits|mnist5k> --max-seconds 60 --out <tmp>  (default settings otherwise)
    python -m ddpm_lite sample --checkpoint <tmp> --sampler ddim --steps 50 --n 500 --labels 0,...,9 \
        --guidance 0 --seed 0 --out <tmp>/samples.png --save-array <tmp>/samples.npz

then prints, for the 500 class-conditional DDIM-50 samples (no guidance): the dataset's classifier's accuracy
on them (does a sample generated as a 3 look like a 3?), the Fréchet distance in the classifier's feature
space (FD, not FID) beside the real-vs-real floor at the same sample size, and precision / recall
(Kynkäänniemi et al. 2019, k = 3), all from `ddpm_lite.metrics.evaluate_samples`. For 28×28 samples it also
asks a second, independent judge: the shipped CLIP's zero-shot classification (`assets/checkpoints/mnist5k-clip`,
trained on captions, never on labels), so a low accuracy can be told apart from a weak classifier: if both
judges reject the same samples, the samples are wrong.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import _common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="score this checkpoint / run directory instead of training one")
    p.add_argument("--dataset", default=None, choices=("digits", "mnist5k"),
                   help="dataset to train on (default digits); with --checkpoint, taken from the checkpoint")
    p.add_argument("--seconds", type=float, default=60.0, help="training budget (--max-seconds of the CLI)")
    p.add_argument("--n", type=int, default=500, help="number of samples (labels 0..9 repeated)")
    p.add_argument("--sampler", default="ddim", choices=("ddim", "dpmpp2m", "ddpm"), help="sampler")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (ignored for ddpm)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", help="device for training and sampling")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for training, sampling (OMP_NUM_THREADS of the CLI) and scoring")
    p.add_argument("--out", default=None, help="keep the run here (default: a temporary directory)")
    p.add_argument("--train-args", default="", help="extra flags for `python -m ddpm_lite train`, e.g. '--lr 2e-3'")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p


def second_judge(images: torch.Tensor, labels: torch.Tensor, held_out, dataset: str) -> dict:
    """The shipped CLIP's zero-shot accuracy on the samples and on the real held-out digits, and how many of the
    samples the classifier rejects the CLIP rejects too."""
    from ddpm_lite import metrics
    from ddpm_lite.checkpoint import load_model

    clip = load_model(C.REPO / "assets" / "checkpoints" / "mnist5k-clip")
    with torch.no_grad():
        by_clip = clip.zero_shot_classify(images).argmax(1)
        by_classifier = metrics.classify(images, classifier=dataset)  # as `sample_accuracy` reads them
        clip_real = float((clip.zero_shot_classify(held_out.images).argmax(1) == held_out.labels).float().mean())
    rejected = by_classifier != labels
    return {"clip_accuracy": float((by_clip == labels).float().mean()), "clip_real_accuracy": clip_real,
            "rejected_by_classifier": int(rejected.sum()), "also_rejected_by_clip": int((rejected & (by_clip != labels)).sum())}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    C.set_threads(args.threads)
    from ddpm_lite import metrics
    from ddpm_lite.checkpoint import load_config, model_from_config
    from ddpm_lite.data import load_dataset
    from ddpm_lite.device import pick_device

    tmp = tempfile.TemporaryDirectory(prefix="ddpm_lite_quality_") if args.out is None else None
    work = Path(tmp.name if tmp else args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = ["--num-threads", str(args.threads)] if args.threads else []
    train_info = {}
    try:
        if args.checkpoint is None:
            run = work / "run"
            cmd = ["train", "--dataset", args.dataset or "digits", "--max-seconds", f"{args.seconds:g}", "--out", str(run),
                   "--device", args.device, "--no-progress", *threads, *args.train_args.split()]
            with C.timer() as wall:
                proc = C.run_cli(cmd, threads=args.threads)
            m = re.search(r"stopped at step (\d+) after ([\d.]+) s", proc.stdout)
            train_info = {"steps": int(m.group(1)) if m else None, "train_s": float(m.group(2)) if m else None,
                          "train_wall_s": wall()}
            checkpoint = run
        else:
            checkpoint = Path(args.checkpoint)
        config = load_config(checkpoint)
        dataset = config.get("extra", {}).get("dataset") or args.dataset or "digits"
        if args.dataset and dataset != args.dataset:
            raise SystemExit(f"--dataset {args.dataset} but the checkpoint was trained on {dataset}")
        labels = ",".join(str(i) for i in range(10))
        array = work / "samples.npz"
        cmd = ["sample", "--checkpoint", str(checkpoint), "--sampler", args.sampler, "--n", str(args.n),
               "--labels", labels, "--guidance", f"{args.guidance:g}", "--seed", str(args.seed),
               "--out", str(work / "samples.png"), "--save-array", str(array), "--device", args.device]
        if args.sampler != "ddpm":
            cmd += ["--steps", str(args.steps)]
        with C.timer() as sample_s:
            C.run_cli(cmd, threads=args.threads)
        data = np.load(array)
        images, sample_labels = torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])
        scores = metrics.evaluate_samples(images, sample_labels, classifier=dataset)
        held_out = load_dataset(dataset, split="test")     # the classifier never saw these real digits
        scores["classifier_accuracy"] = metrics.sample_accuracy(held_out.images, held_out.labels, classifier=dataset)
        if images.shape[-1] == 28:
            scores.update(second_judge(images, sample_labels, held_out, dataset))
    finally:
        if tmp is not None:
            tmp.cleanup()

    device = pick_device(args.device)
    model_cfg = config.get("model_config", {})
    params = C.count_parameters(model_from_config(config))
    steps_name = "DDPM-1000" if args.sampler == "ddpm" else f"{args.sampler.upper()}-{args.steps}"
    source = (f"trained {train_info.get('steps')} steps in {train_info.get('train_s')} s" if args.checkpoint is None
              else f"checkpoint {args.checkpoint}")
    headers = ["model", "samples", "sampler", "guidance w", "accuracy", "FD", "FD real floor", "precision",
               "recall", "sampling s"]
    rows = [[source, scores["n_samples"], steps_name, args.guidance, scores["accuracy"], scores["fd"],
             scores["fd_real_floor"], scores["precision"], scores["recall"], sample_s()]]
    notes = [f"Model: UNet base_channels {model_cfg.get('base_channels')}, channel_mults "
             f"{model_cfg.get('channel_mults')}, {model_cfg.get('num_res_blocks')} res block(s)"
             + (f", {params:,} parameters" if params else "") + "; samples from the EMA weights, labels 0..9 "
             f"repeated, seed {args.seed}. Sampling seconds include starting the CLI (about 3–10 s).",
             f"accuracy: the shipped {dataset} classifier (measured now: {scores['classifier_accuracy']:.2%} on the "
             f"{len(held_out)} real held-out digits) agrees with the intended "
             "label. FD: Fréchet distance in that classifier's 64-d feature space (not FID) against one half of "
             f"the real training digits ({scores['n_real']} images); the floor is FD between the other real half "
             "(cut to the number of samples) and the same half, i.e. what a perfect generator scores. "
             "precision / recall: k-NN manifolds, k = 3, against the same real half."]
    if "clip_accuracy" in scores:
        notes.append(f"Second judge, the shipped CLIP's zero-shot classification ({scores['clip_real_accuracy']:.2%} on "
                     f"the real held-out digits): accuracy {scores['clip_accuracy']:.3f} on the samples; of the "
                     f"{scores['rejected_by_classifier']} samples the classifier reads as another digit, the CLIP does "
                     f"too for {scores['also_rejected_by_clip']}.")
    if args.checkpoint is None:
        notes.insert(0, f"Training: `python -m ddpm_lite train --dataset {dataset} --max-seconds {args.seconds:g}` "
                        f"(defaults otherwise{'; extra: ' + args.train_args if args.train_args else ''}), "
                        f"{train_info.get('steps')} steps; wall time with start-up {train_info['train_wall_s']:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps({**scores, **train_info, "sampling_s": sample_s(),
                                               "sampler": steps_name, "guidance": args.guidance}, indent=2))
    C.print_summary(f"{dataset} sample quality ({steps_name}, {scores['n_samples']} samples)", C.machine_line(device),
                    C.command_line(), C.markdown_table(headers, rows), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
