"""Train the evaluation classifier (`ddpm_lite.classifier`, used by `ddpm_lite.metrics`) and save it in the
checkpoint layout (config.json + model.safetensors, `checkpoint.save_pretrained` without a diffusion).

    python tools/train_classifier.py --dataset digits            # → assets/classifiers/digits/ (< 1 min on CPU)
    python tools/train_classifier.py --dataset mnist --device auto   # needs MNIST on disk (see ddpm_lite.data)

Trains on the dataset's fixed training split with light augmentation (random ±shift pixel translations,
Gaussian noise) and reports accuracy on the held-out test split. Refuses to save below --min-accuracy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from ddpm_lite import classifier
    from ddpm_lite.data import load_dataset
    from ddpm_lite.device import pick_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", choices=sorted(classifier.CLASSIFIER_PRESETS))
    p.add_argument("--out", default=None, help="output directory (default: assets/classifiers/<dataset>)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--min-accuracy", type=float, default=0.97, help="refuse to save below this test accuracy")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = classifier.CLASSIFIER_PRESETS[args.dataset]
    hp = dict(preset["train"])
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    device = pick_device(args.device)
    out = Path(args.out) if args.out else REPO / "assets" / "classifiers" / args.dataset

    train, test = load_dataset(args.dataset, split="train"), load_dataset(args.dataset, split="test")
    torch.manual_seed(args.seed)
    model = classifier.build_classifier(args.dataset).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.dataset}: {len(train)} train / {len(test)} test images; {type(model).__name__} "
          f"{n_params:,} parameters; {hp}")
    start = time.perf_counter()
    log = classifier.fit_classifier(model, train.images.to(device), train.labels.to(device), shift=preset["shift"],
                                    seed=args.seed, eval_images=test.images.to(device), eval_labels=test.labels,
                                    **hp)
    seconds = time.perf_counter() - start
    print(f"trained in {seconds:.1f} s: train accuracy {log['train_accuracy']:.4f}, "
          f"held-out test accuracy {log['eval_accuracy']:.4f}")
    if log["eval_accuracy"] < args.min_accuracy:
        print(f"test accuracy {log['eval_accuracy']:.4f} < --min-accuracy {args.min_accuracy}: not saved",
              file=sys.stderr)
        return 1
    command = "python tools/train_classifier.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    classifier.save_classifier(model.cpu(), out, dataset=args.dataset, test_accuracy=log["eval_accuracy"],
                               train_accuracy=log["train_accuracy"], train_seconds=round(seconds, 1),
                               hyperparameters={**hp, "shift": preset["shift"], "seed": args.seed},
                               command=command.strip(), torch_version=torch.__version__)
    print(f"saved {out}: " + json.dumps(sorted(x.name for x in out.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
