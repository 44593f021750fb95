"""DreamBooth on the shipped mini Stable Diffusion: what each recipe learns, and what it makes the model forget.

    python benchmarks/dreambooth.py --threads 1              # every recipe, 100 images per prompt (~15 min)
    python benchmarks/dreambooth.py --recipes dreambooth --n 20 --steps 40   # a quick check

Starting from `assets/checkpoints/mnist5k-sd` and the subject `assets/subjects/hollow-seven` (four hollow sevens),
each recipe fine-tunes a copy (`ddpm_lite.personalize.dreambooth`, seed 0, the same 100 class images):

* `dreambooth`: all U-Net weights, identifier "sks", prior preservation λ = 1 (Ruiz et al. 2023);
* `no-prior`: the same with λ = 0 (language drift);
* `common-word`: DreamBooth with the common word "thick" as the identifier instead of "sks";
* `cross-attention`: only the cross-attention keys and values train (Custom Diffusion), λ = 1;
* `textual-inversion`: only the identifier's embedding row trains (Gal et al. 2023), lr 5e-2.

and measures, with `--n` images per prompt (DDIM-20, w = 3, the same starting noise for every model):

* subject fidelity: mean classifier-feature distance of "a [V] seven" samples to the subject images (ordinary
  sevens: the "before" row), and their diversity (mean pairwise feature distance);
* prompt fidelity: share of "a small [V] seven" drawn small, of "a [V] seven, shifted to the left" drawn on the
  left (`text_to_image.measured_value`);
* prior preservation: "a seven" accuracy, FD to the frozen model's "a seven" samples, diversity; FD of "a two" and
  of "a thick two" to the frozen model's (prompts no loss term protects; "thick" is the common-word identifier);
* seconds per fine-tuning step;

then an overfitting curve for `dreambooth` (subject distance, "small" obeyed, "a seven" FD at `--curve` steps).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import _common as C

RECIPES = {
    "dreambooth": dict(train="all", prior_weight=1.0),
    "no-prior": dict(train="all", prior_weight=0.0),
    "common-word": dict(train="all", prior_weight=1.0, identifier="thick"),
    "cross-attention": dict(train="cross_attention", prior_weight=1.0, lr=1e-3),
    "textual-inversion": dict(train="embedding", prior_weight=0.0, lr=5e-2),
}


def measure(pipe, ident, subject, classifier, base, n, seed=1) -> dict:
    from ddpm_lite import metrics
    from ddpm_lite import personalize as db
    from ddpm_lite.text_to_image import measured_value

    def draw(prompt):
        return pipe([prompt] * n, guidance=3.0, steps=20, generator=torch.Generator().manual_seed(seed))

    out = {}
    if ident is not None:
        v = draw(f"a {ident} seven")
        out["subject_distance"] = float(db.feature_distance(v, subject, classifier).mean())
        out["v_diversity"] = db.diversity(v, classifier)
        out["small_obeyed"] = float(measured_value(draw(f"a small {ident} seven"), "size", {}).float().mean())
        out["left_obeyed"] = float(1 - measured_value(draw(f"a {ident} seven, shifted to the left"), "position",
                                                      {}).float().mean())
    sevens = draw("a seven")
    out["seven_accuracy"] = metrics.sample_accuracy(sevens, torch.full((n,), 7), classifier)
    out["seven_diversity"] = db.diversity(sevens, classifier)
    out["seven_subject_distance"] = float(db.feature_distance(sevens, subject, classifier).mean())
    if base is not None:
        out["seven_fd"] = metrics.feature_frechet_distance(sevens, base["a seven"], classifier)
        out["two_fd"] = metrics.feature_frechet_distance(draw("a two"), base["a two"], classifier)
        out["thick_two_fd"] = metrics.feature_frechet_distance(draw("a thick two"), base["a thick two"], classifier)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(C.REPO / "assets" / "checkpoints" / "mnist5k-sd"))
    p.add_argument("--subject", default=str(C.REPO / "assets" / "subjects" / "hollow-seven"))
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--steps", type=int, default=120, help="fine-tuning steps per recipe")
    p.add_argument("--curve", default="0,40,80,120,200,300", help="steps of the overfitting curve ('' = none)")
    p.add_argument("--n", type=int, default=100, help="images per prompt for every measurement")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)

    from ddpm_lite import metrics
    from ddpm_lite import personalize as db
    from ddpm_lite.pipeline import TextToImage
    from ddpm_lite.subjects import load_subject

    threads = C.set_threads(args.threads)
    print(C.machine_line(torch.device("cpu")), f"| {threads} thread(s)")
    pipe = TextToImage.from_pretrained(args.checkpoint)
    subject = load_subject(args.subject)
    classifier = metrics.load_classifier("mnist5k")
    class_set = db.class_images(pipe, "seven", 100, generator=torch.Generator().manual_seed(0))
    n = args.n
    base = {pr: pipe([pr] * n, guidance=3.0, steps=20, generator=torch.Generator().manual_seed(1))
            for pr in ("a seven", "a two", "a thick two")}
    results = {"before": measure(pipe, None, subject, classifier, base, n)}
    for name in [r for r in args.recipes.split(",") if r]:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}: choose from {', '.join(RECIPES)}")
        kw = dict(RECIPES[name])
        ident = kw.get("identifier", "sks")
        t0 = time.perf_counter()
        res = db.dreambooth(pipe, subject, class_set=class_set, steps=args.steps, progress=False, **kw)
        row = {"seconds_per_step": res.seconds / args.steps, "wall_seconds": time.perf_counter() - t0}
        row.update(measure(res.pipe, ident, subject, classifier, base, n))
        results[name] = row
        print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)

    curve = {}
    points = sorted({int(s) for s in args.curve.split(",") if s.strip()})
    if points:
        def snap(step, tuned):
            if step in points:
                curve[step] = measure(tuned, "sks", subject, classifier, base, n)
                print("curve", step, {k: round(v, 3) for k, v in curve[step].items()}, flush=True)
        if 0 in points:
            start = TextToImage(pipe.model, pipe.diffusion, pipe.text_encoder.with_tokens(["sks"]), pipe.autoencoder)
            snap(0, start)
        db.dreambooth(pipe, subject, class_set=class_set, steps=max(points), progress=False, callback=snap)

    keys = ["subject_distance", "v_diversity", "small_obeyed", "left_obeyed", "seven_accuracy", "seven_fd",
            "seven_diversity", "seven_subject_distance", "two_fd", "thick_two_fd", "seconds_per_step"]
    print(f"\n{n} images per prompt, {args.steps} fine-tuning steps, DDIM-20, w = 3")
    print(f"{'':26s}" + "".join(f"{k[:14]:>15s}" for k in results))
    for k in keys:
        print(f"{k:26s}" + "".join(f"{r[k]:15.3f}" if k in r else f"{'-':>15s}" for r in results.values()))
    if curve:
        print("\noverfitting curve (dreambooth recipe):")
        print(f"{'step':>6s}" + "".join(f"{k:>24s}" for k in ("subject_distance", "small_obeyed", "left_obeyed",
                                                                "seven_fd")))
        for s in sorted(curve):
            print(f"{s:6d}" + "".join(f"{curve[s][k]:24.3f}" for k in ("subject_distance", "small_obeyed",
                                                                       "left_obeyed", "seven_fd")))
    out = {"results": results, "curve": curve, "n": n, "steps": args.steps, "threads": threads}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
