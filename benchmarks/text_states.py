"""Why can't mini Stable Diffusion draw "an upside-down seven"? The text encoder's states, or the U-Net?

    python benchmarks/text_states.py --threads 1                         # train the three variants, then score
    python benchmarks/text_states.py --states embeddings --threads 1     # one variant (run two shells at once)
    python benchmarks/text_states.py --score-only --reference assets/checkpoints/mnist5k-sd

Mini-SD (issue 15) draws the attribute of a held-out combination but not its digit. Its U-Net reads the final
states of a *causal* text transformer, so the state of "seven" in "an upside-down seven" has seen
"upside-down", a context no training caption gave it. This trains mini-SD with the shipped recipe for `--steps`
steps, once per `--states` of the frozen text tower (`train --text-states`):

* `final`: the transformer's output (Stable Diffusion's choice, the shipped model's);
* `embeddings`: each token's own embedding + position, LayerNorm'd: no token sees another, so "seven" is the
  same vector in every prompt and only the U-Net can combine the words;
* `both`: the two sequences one after the other.

and scores each on the held-out prompts (an upside-down seven, a small five) and on trained neighbours (an
upside-down two, a small seven, a seven, a five): the share of `--n` samples whose digit is right (the 28×28
classifier after `text_to_image.undo_transforms`) and the share that obey the attribute (CLIP judges the
orientation; the ink's height the size). `--reference DIR` adds a trained text-to-image checkpoint as a row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import _common as C

PROMPTS = [  # prompt, digit, attribute, transformation shown, held out?
    ("an upside-down seven", 7, "orientation", "upside_down", True),
    ("a small five", 5, "size", "small", True),
    ("an upside-down two", 2, "orientation", "upside_down", False),
    ("a small seven", 7, "size", "small", False),
    ("a seven", 7, None, None, False),
    ("a five", 5, None, None, False),
]
TRAIN = ["--dataset", "mnist5k", "--text-encoder", "assets/checkpoints/mnist5k-clip",
         "--autoencoder", "assets/checkpoints/mnist5k-autoencoder",
         "--caption-transforms", "upside_down,shift_left,shift_right,small", "--max-seconds", "none", "--seed", "0",
         "--no-progress"]


def score(path, clip, classifier, n: int, guidance: float, steps: int, seed: int) -> dict:
    from ddpm_lite import metrics
    from ddpm_lite.pipeline import TextToImage
    from ddpm_lite.text_to_image import clip_judge, measured_value, undo_transforms

    pipe = TextToImage.from_pretrained(path)
    out = {}
    for prompt, label, attribute, shown, _ in PROMPTS:
        x = pipe([prompt] * n, guidance=guidance, steps=steps, generator=torch.Generator().manual_seed(seed))
        digit = metrics.classify(undo_transforms(x, shown), classifier) == label
        if attribute == "orientation":
            obeyed = clip_judge(clip, x, label, attribute) == 1
        elif attribute is not None:
            obeyed = measured_value(x, attribute, {}) == 1
        else:
            obeyed = None
        out[prompt] = (digit.float().mean().item(), None if obeyed is None else obeyed.float().mean().item())
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--states", default="final,embeddings,both", help="comma-separated text states to train")
    p.add_argument("--steps", type=int, default=1500, help="training steps per variant (the shipped model: 6000)")
    p.add_argument("--out", default="runs/text-states", help="runs go to OUT/<states> (kept: reruns only score)")
    p.add_argument("--reference", default=None, help="also score this text-to-image checkpoint")
    p.add_argument("--score-only", action="store_true", help="train nothing; score the runs that exist")
    p.add_argument("--n", type=int, default=40, help="samples per prompt")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    from ddpm_lite.checkpoint import load_model
    from ddpm_lite.metrics import load_classifier

    C.set_threads(args.threads)
    print(C.machine_line(torch.device("cpu")))
    out = Path(args.out) if Path(args.out).is_absolute() else C.REPO / args.out
    runs = {}
    for states in [s.strip() for s in args.states.split(",") if s.strip()]:
        run = out / states
        if not (run / "checkpoint").exists() and not args.score_only:
            threads = ["--num-threads", str(args.threads)] if args.threads else []
            C.run_cli(["train", *TRAIN, "--text-states", states, "--max-steps", str(args.steps), "--out", str(run),
                       *threads], threads=args.threads)
        if (run / "checkpoint").exists():
            runs[f"{states} ({args.steps} steps)"] = run
    if args.reference:
        runs[f"reference {args.reference}"] = C.REPO / args.reference
    clip = load_model(C.REPO / "assets" / "checkpoints" / "mnist5k-clip").eval()
    classifier = load_classifier("mnist5k")
    results = {name: score(path, clip, classifier, args.n, args.guidance, args.sample_steps, args.seed)
               for name, path in runs.items()}
    print(f"\n### Held-out combinations vs the text encoder's states ({args.n} samples per prompt, "
          f"DDIM-{args.sample_steps}, w = {args.guidance}): digit right / attribute obeyed\n")
    print("| run | " + " | ".join(f"{p}{' (held out)' if h else ''}" for p, *_, h in PROMPTS) + " |")
    print("|---|" + "---|" * len(PROMPTS))
    for name, r in results.items():
        cells = [f"{d:.2f}" + ("" if o is None else f" / {o:.2f}") for d, o in r.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
