# %% [markdown]
# # 08 · Guidance: fidelity against diversity, and Imagen's dynamic thresholding
#
# A class-conditional model samples "a 3" when asked for a 3, but not always a *convincing* 3: the
# conditional distribution it learned includes sloppy, ambiguous digits too. **Classifier-free guidance**
# (Ho & Salimans 2021) pushes samples towards what makes them *typical* of their class, with one knob, the
# guidance weight $w$. It is the single most important sampling trick behind text-to-image models
# (GLIDE, DALL·E 2, Imagen, Stable Diffusion all use it), and it has a price: samples become less
# diverse, and at large $w$ they saturate. Imagen (Saharia et al. 2022) added a fix for the latter,
# *dynamic thresholding*, that let it use very large weights.
#
# **What you will learn**
#
# * how one network gives both $\varepsilon_\theta(x_t, c)$ and $\varepsilon_\theta(x_t, \varnothing)$ (label
#   dropout, the null class) and how they combine into the guided $\tilde\varepsilon$; how other papers' guidance
#   *scale* relates to this weight (you work it out);
# * the **fidelity/diversity trade-off**, measured: as $w$ grows, class accuracy (and, at small $w$,
#   precision) rises while recall and within-class diversity fall (you predict which way diversity goes first);
# * what goes wrong at large $w$ with the usual **static clipping** of $\hat x_0$ (saturated samples,
#   $\hat x_0$ far outside $[-1, 1]$) and what Imagen's **dynamic thresholding** changes, on the same seeds,
#   with the value histograms that explain it, and when it pays off on digits; you write dynamic thresholding,
#   the saturation measure, and the guided, thresholded denoiser that the section's samplers then run;
# * what guidance really samples: with exact scores on a 2D mixture, **not** the tilted distribution
#   $p(x \mid c)\,p(c \mid x)^w$ it is motivated by, and why;
# * what else Imagen found (frozen text encoders, scaling the text encoder) and where the course goes next.
#
# *Run time: about a minute on a 2-core laptop CPU.*

# %%
# Settings (sized so the notebook runs in about a minute on 2 CPU cores; on a GPU, raise N_PER_CLASS and STEPS)
STEPS = 8                               # DDIM steps for every sample in this notebook (deterministic DDIM)
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)     # guidance weights w of the widget and the trade-off curve (sections 2, 3)
N_PER_CLASS = 10                        # samples per digit at each of these weights
W_LARGE = 8.0                           # the "too large" guidance weight of section 4 ...
W_MODERATE = 4.0                        # ... and a moderate one to compare with
N_LARGE_PER_CLASS = 5                   # samples per digit at those two weights
PERCENTILE = 0.95                       # dynamic thresholding's p for 64-pixel images (Imagen: 0.995 on 64×64×3)

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lite import metrics, oracle, plots, samplers, toys
from ddpm_lite.checkpoint import from_pretrained
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion, null_labels
from ddpm_lite.exercises import nb08
from ddpm_lite.widgets import GuidanceExplorer

plots.setup()                  # small figures (72 dpi), grey images, pixel-sharp 8×8 digits
torch.set_num_threads(1)       # small tensors: extra threads only add overhead (and stall on a busy CPU)
NOTEBOOK_START = time.perf_counter()

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
CHECKPOINT = REPO / "assets" / "checkpoints" / "digits"
model, diffusion = from_pretrained(CHECKPOINT)        # the EMA weights, eval mode, on the CPU
classifier = metrics.load_classifier("digits")        # a small CNN trained on real digits (99 % held out)
T = diffusion.num_timesteps                    # every sample below: deterministic DDIM, STEPS steps
print(f"{diffusion}; {model.num_classes} classes + the null class {model.num_classes}; "
      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
assert model.num_classes == 10

# %% [markdown]
# ## 1 · Classifier-free guidance in three lines
#
# **Training with label dropout.** The digits model was trained with its label replaced by a learned *null
# class* $\varnothing$ (index `num_classes` = 10) 10 % of the time (`TrainConfig.label_dropout = 0.1`). So the same
# network knows two things: the conditional noise prediction $\varepsilon_\theta(x_t, c)$ and the
# unconditional one $\varepsilon_\theta(x_t, \varnothing)$ (notebook 05 trains and dissects it).
#
# **Sampling with guidance.** At every step, evaluate both and extrapolate away from the unconditional one
# (Ho & Salimans 2021, eq. 6):
#
# $$
# \tilde\varepsilon_\theta(x_t, c) = (1 + w)\,\varepsilon_\theta(x_t, c) - w\,\varepsilon_\theta(x_t, \varnothing)
# = \varepsilon_\theta(x_t, c) + w\,\big(\varepsilon_\theta(x_t, c) - \varepsilon_\theta(x_t, \varnothing)\big).
# $$
#
# **Why it works.** $\varepsilon_\theta$ is a scaled score, $\varepsilon_\theta(x_t, c) \approx -\sigma_t \nabla_{x_t}\log p(x_t \mid c)$,
# so by Bayes' rule the difference $\varepsilon_\theta(x_t, c) - \varepsilon_\theta(x_t, \varnothing) \approx -\sigma_t\nabla_{x_t}\log p(c \mid x_t)$
# is the gradient of an *implicit classifier*. Guidance samples from (roughly)
# $p(x_t \mid c)\,p(c \mid x_t)^{w}$: samples the implicit classifier is very sure about (how rough that
# "roughly" is, section 5 measures exactly). That is higher
# fidelity to the class, and fewer of the class's less typical members: lower diversity. No separate
# classifier is trained (unlike Dhariwal & Nichol's *classifier* guidance); the cost is two network
# evaluations per step, which `ddpm_lite` runs as one batch of $2B$.
#
# *Conventions.* `ddpm_lite` writes the weight as $w$, with $w = 0$ the plain conditional model. Imagen,
# Stable Diffusion and `diffusers` write the same combination differently, with a *guidance scale* $s$
# (exercise 1).
#
# The package's guided output (`GaussianDiffusion.model_output`, used inside every sampler) against the
# formula, on the trained model:

# %%
g = torch.Generator().manual_seed(0)
x_t = torch.randn(8, 1, 8, 8, generator=g)
t = torch.full((8,), 500)
c = torch.arange(8)
with torch.no_grad():
    eps_c = model(x_t, t, c)                                  # ε_θ(x_t, c)
    eps_null = model(x_t, t, null_labels(model, c))           # ε_θ(x_t, ∅): label 10 for every sample
    for w in (0.0, 1.0, 4.0):
        by_hand = (1 + w) * eps_c - w * eps_null
        gap = float((diffusion.model_output(model, x_t, t, c, guidance=w) - by_hand).abs().max())
        print(f"w = {w}: |model_output − ((1 + w) ε_c − w ε_∅)| ≤ {gap:.1e}")
        assert gap < 1e-4
print(f"how different are ε_c and ε_∅ at t = 500? mean |ε_c − ε_∅| = {float((eps_c - eps_null).abs().mean()):.3f} "
      f"(mean |ε_c| = {float(eps_c.abs().mean()):.3f})")


# %% [markdown]
# ### Exercise 1 · guidance scale → guidance weight
#
# Imagen, Stable Diffusion and `diffusers` (`guidance_scale`) report a *guidance scale* $s$ and compute
#
# $$
# \tilde\varepsilon = \varepsilon_\theta(x_t, \varnothing) + s\,\big(\varepsilon_\theta(x_t, c) - \varepsilon_\theta(x_t, \varnothing)\big).
# $$
#
# Write `scale_to_w(s)` returning the weight $w$ that `ddpm_lite` needs to produce the same $\tilde\varepsilon$ (work
# it out on paper first: which $s$ means "no guidance"?). The check runs both forms on a small conditional
# network; the cell then converts Stable Diffusion's default scale with your function.

# %%
def scale_to_w(s):
    ### BEGIN SOLUTION
    return s - 1
    ### END SOLUTION


nb08.check_scale_to_w(scale_to_w)
print(f"Stable Diffusion's default guidance_scale 7.5 is w = {scale_to_w(7.5):g} in this course; the largest w "
      f"of this notebook, {W_LARGE:g}, is a scale s = {W_LARGE + 1:g}")
assert scale_to_w(1.0) == 0

# %% [markdown]
# ## 2 · The guidance slider
#
# One row per digit, one column per fixed starting noise $x_T$ (the same $x_T$ in every row and for every
# $w$): moving the slider changes *only* the guidance. Watch the digits become thicker, more centred and
# more alike as $w$ grows. The histogram on the right is every pixel of the grid: the pile-up at $\pm 1$
# is the *saturation* we come back to in section 4. The line below the picture reports how many samples
# the digits classifier assigns to their row.
#
# The widget samples `N_PER_CLASS` digits per class at each weight (only a few columns are drawn); the
# measurements of section 3 reuse them, so nothing is sampled twice.
#
# **Predict, then run.** Section 3 measures the *within-class diversity* of these samples (how varied the sevens
# are among themselves, relative to real sevens). From $w = 0$ to $w = 4$, what happens to it? (a) it grows:
# guidance sharpens every class, so the samples spread out more; (b) it stays about the same, within ±20 %:
# guidance only makes the class clearer; (c) it drops by more than 20 %: each class collapses towards its most
# typical shapes. Commit to an answer before you run the widget's cell (the pictures give it away).

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "c"
### END SOLUTION
nb08.commit_diversity_prediction(prediction)

# %%
start = time.perf_counter()
explorer = GuidanceExplorer(model, diffusion, weights=WEIGHTS, n_per_class=N_PER_CLASS, n_show=min(6, N_PER_CLASS),
                            steps=STEPS, sampler="ddim", seed=0, classifier=classifier)
print(f"{len(WEIGHTS)} weights × {10 * N_PER_CLASS} samples × {STEPS} steps × 2 evaluations: "
      f"{time.perf_counter() - start:.1f} s")
explorer

# %% [markdown]
# ## 3 · The fidelity/diversity trade-off, measured
#
# For each $w$, on the `10 × N_PER_CLASS` samples of the widget (all from the same noises):
#
# * **class accuracy**: the fraction the digits classifier assigns to the label they were generated for
#   (fidelity to the condition);
# * **precision** and **recall** (Kynkäänniemi et al. 2019) in the classifier's feature space, against as
#   many real digits: precision is the fraction of samples that fall inside the manifold of real digits
#   (quality), recall the fraction of real digits that fall inside the manifold of the samples
#   (coverage: does the model still produce all the ways of writing a digit?);
# * **diversity**: `metrics.within_class_spread`, the mean over classes of the squared distance of a class's
#   features to their class mean, $\frac1{10}\sum_c \mathbb E\,\lVert f - \mathbb E[f \mid c]\rVert^2$,
#   divided by the same for real digits (1 = as varied as real digits);
# * the **Fréchet distance** to real digits (classifier features; it mixes quality and diversity).

# %%
real = load_dataset("digits", split="train")
perm = torch.randperm(len(real.images), generator=torch.Generator().manual_seed(0))
# as many real digits as samples, N_PER_CLASS of each class (like the samples); the rest is the FD reference
pick = torch.cat([perm[real.labels[perm] == c][:N_PER_CLASS] for c in range(10)])
rest = torch.ones(len(real.images), dtype=torch.bool)
rest[pick] = False
real_x, real_y, real_rest = real.images[pick], real.labels[pick], real.images[rest]
real_feats = metrics.extract_features(real_x, classifier)
real_spread = metrics.within_class_spread(real_feats, real_y)
fd_floor = metrics.feature_frechet_distance(real_x, real_rest, classifier)

results = []
for w in WEIGHTS:
    x = explorer.samples(w, "static")                         # cached by the widget
    feats = metrics.extract_features(x, classifier)
    pr = metrics.precision_recall(real_feats, feats, k=3)
    results.append(dict(w=w, accuracy=metrics.sample_accuracy(x, explorer.labels, classifier),
                        precision=pr.precision, recall=pr.recall,
                        diversity=metrics.within_class_spread(feats, explorer.labels) / real_spread,
                        fd=metrics.feature_frechet_distance(x, real_rest, classifier),
                        fd_real_floor=fd_floor))
print(f"{'w':>5} {'accuracy':>9} {'precision':>10} {'recall':>7} {'diversity':>10} {'FD':>6}")
for r in results:
    print(f"{r['w']:5.1f} {100 * r['accuracy']:8.1f}% {r['precision']:10.2f} {r['recall']:7.2f} "
          f"{r['diversity']:10.2f} {r['fd']:6.2f}")
print(f"real digits: FD floor {fd_floor:.2f} at this sample size")
plots.plot_guidance_tradeoff(results)
plt.show()

# %%
lo, hi = results[0], results[-1]
best_precision = max(results, key=lambda r: r["precision"])
print(f"w = {lo['w']:g} → {hi['w']:g}: accuracy {100 * lo['accuracy']:.0f}% → {100 * hi['accuracy']:.0f}%, "
      f"recall {lo['recall']:.2f} → {hi['recall']:.2f}, diversity {lo['diversity']:.2f} → {hi['diversity']:.2f}; "
      f"precision {lo['precision']:.2f} at w = 0, highest {best_precision['precision']:.2f} at w = {best_precision['w']:g}")
nb08.reveal_diversity(prediction, lo["diversity"], hi["diversity"], lo["w"], hi["w"])
# fidelity up ...
assert hi["accuracy"] >= lo["accuracy"] and max(r["accuracy"] for r in results) > lo["accuracy"], (lo, hi)
# ... diversity down
assert hi["recall"] < 0.8 * lo["recall"], (lo, hi)
assert hi["diversity"] < 0.8 * lo["diversity"], (lo, hi)


# %% [markdown]
# This is the trade-off of Ho & Salimans (2021, §4: FID against Inception score as $w$ grows) and of
# Imagen's Pareto curves (Saharia et al. 2022, Fig. 4: FID against CLIP score as the guidance weight
# grows). On our digits the model is already accurate without guidance, so the fidelity side moves only a
# little (accuracy to 100 %, precision up at small $w$), while the diversity side pays at once: recall and
# within-class diversity drop steeply up to $w \approx 1$ and then level off, each class collapsed onto
# its most typical shapes, and the FD, which rewards matching the *whole* distribution, grows with $w$.
# Precision peaks at a small weight and then slips: the thick, saturated strokes of large $w$ are typical
# of the class but not of real handwriting. Where to stop depends on what you value; text-to-image systems
# typically run at $s = 1 + w \approx 5$–$10$, deep into the low-diversity side, because users judge
# single images, not the spread of a thousand.
#
# ## 4 · Large weights: static clipping saturates, dynamic thresholding keeps $\hat x_0$ in range
#
# Every sampler here uses the model's estimate of the clean image,
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\tilde\varepsilon)/\sqrt{\bar\alpha_t}$, and real images live in
# $[-1, 1]$. With large $w$ the extrapolated $\tilde\varepsilon$ is far from anything the network was trained to
# produce, and $\hat x_0$ overshoots $[-1, 1]$, more so at every step, because the next $x_t$ is built from it.
#
# * **Static clipping** (Ho et al.'s `clip_denoised`, the default `threshold="static"`):
#   $\hat x_0 \leftarrow \mathrm{clip}(\hat x_0, -1, 1)$. Values beyond the range pile up at exactly $\pm 1$:
#   the samples *saturate* (flat, blown-out strokes, lost detail). Without any clipping
#   (`threshold=None`) it is worse: the values run off (to $|\hat x_0| \approx 50$ below) and the samples
#   come out as hard black-and-white blocks.
# * **Dynamic thresholding** (Imagen, Saharia et al. 2022, §2.3): per sample, take $s$ = the
#   $p$-th percentile of $|\hat x_0|$ (Imagen: $p = 99.5\,\%$), and if $s > 1$ clip to $[-s, s]$ and **divide by
#   $s$**:
#
# $$
# s = \max\!\big(1,\ \mathrm{quantile}_p(|\hat x_0|)\big),\qquad \hat x_0 \leftarrow \frac{\mathrm{clip}(\hat x_0, -s, s)}{s}.
# $$
#
# Rescaling instead of cutting keeps the *relative* values (the structure of the image) and pulls the whole
# prediction back inside $[-1, 1]$, so fewer pixels are stuck at the edge. In `ddpm_lite` it is
# `diffusion.dynamic_threshold` and `threshold="dynamic"` in every sampler.
#
# ### Exercise 2 · dynamic thresholding
#
# Write `my_dynamic_threshold(x0, percentile)` for a batch `x0` of shape `[B, C, H, W]` (one $s$ per sample;
# `torch.quantile` over the flattened pixels of each sample). Don't modify `x0` in place.

# %%
def my_dynamic_threshold(x0, percentile=0.995):
    ### BEGIN SOLUTION
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=1)
    s = s.clamp(min=1.0).reshape(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s
    ### END SOLUTION


nb08.check_dynamic_threshold(my_dynamic_threshold)


# %% [markdown]
# ### Exercise 3 · measuring saturation
#
# Write `saturated_fraction(x, tol=1e-3)`: for each sample of a batch, the fraction of its entries with
# $|x| \ge 1 - \mathrm{tol}$ (a tensor of shape `[B]`). The table below puts a number on "blown out" with it.

# %%
def saturated_fraction(x, tol=1e-3):
    ### BEGIN SOLUTION
    return (x.abs() >= 1 - tol).float().flatten(1).mean(dim=1)
    ### END SOLUTION


nb08.check_saturated_fraction(saturated_fraction)

# %% [markdown]
# ### Exercise 4 · the guided, thresholded denoiser
#
# Every sampler of the package asks the model, at every step, for a pair $(\hat x_0, \hat\varepsilon)$
# (`GaussianDiffusion.model_predictions`) and moves towards it. Write that piece,
# `guided_predictions(model, diffusion, x_t, t, y, w, threshold, percentile)` for a batch `x_t` [B, 1, 8, 8] at
# timesteps `t` [B] with labels `y` [B]:
#
# 1. the guided $\tilde\varepsilon$ of section 1: the model on the labels `y` and on the **null class**
#    (`null_labels(model, y)`: label 10 for every sample);
# 2. $\hat x_0 = \big(x_t - \sqrt{1 - \bar\alpha_t}\,\tilde\varepsilon\big) / \sqrt{\bar\alpha_t}$, with
#    $\bar\alpha_t$ = `diffusion.schedule.alphas_cumprod[t]` reshaped to [B, 1, 1, 1];
# 3. `threshold` None: return $(\hat x_0, \tilde\varepsilon)$. `"static"`: clip $\hat x_0$ to $[-1, 1]$;
#    `"dynamic"`: your `my_dynamic_threshold` at `percentile`. Then **recompute** the noise from the
#    thresholded $\hat x_0$, $\hat\varepsilon = \big(x_t - \sqrt{\bar\alpha_t}\,\hat x_0\big) / \sqrt{1 - \bar\alpha_t}$,
#    so that the sampler's next step moves towards the thresholded image, and return both.
#
# The experiment below samples with your function.

# %%
def guided_predictions(model, diffusion, x_t, t, y, w, threshold=None, percentile=PERCENTILE):
    ### BEGIN SOLUTION
    eps_c = model(x_t, t, y)
    eps_null = model(x_t, t, null_labels(model, y))
    eps = (1 + w) * eps_c - w * eps_null
    ab = diffusion.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    if threshold is None:
        return x0, eps
    x0 = x0.clamp(-1, 1) if threshold == "static" else my_dynamic_threshold(x0, percentile)
    return x0, (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    ### END SOLUTION


nb08.check_guided_predictions(guided_predictions)

# %% [markdown]
# Now the experiment: the same seeds and labels at a large weight, $w = 8.0$ (`W_LARGE`; a guidance scale
# $s = 1 + w$ in Imagen's terms), sampled three ways: no thresholding, static clipping, dynamic
# thresholding, each step's $(\hat x_0, \hat\varepsilon)$ coming from your `guided_predictions`. We record the
# model's $\hat x_0$ at every step *before* any thresholding (what the network asks for) and *after* it (what
# the sampler uses).
#
# *The percentile.* Imagen uses $p = 99.5\,\%$ on 64×64×3 images, so $s$ is set by the top 60 or so of 12 288
# values. An 8×8 digit has 64 values, where the 99.5 % quantile is simply the largest one; we use
# $p = 0.95$ (`PERCENTILE`; the top three pixels or so), the same idea at this image size.

# %%
n_large = 10 * N_LARGE_PER_CLASS
y_large = torch.arange(10).repeat_interleave(N_LARGE_PER_CLASS)         # class by class
x_T_large = torch.randn(n_large, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def run(threshold):
    # the model's raw x̂0 at every step, and the x̂0 the sampler then uses (after `threshold`)
    raw, used = [], []

    def denoiser(x, t):
        raw.append(guided_predictions(model, diffusion, x, t, y_large, W_LARGE, None)[0])
        x0, eps = guided_predictions(model, diffusion, x, t, y_large, W_LARGE, threshold, PERCENTILE)
        used.append(x0)
        return x0, eps

    x = samplers.ddim(denoiser, diffusion, x_T_large, steps=STEPS)
    return dict(x=x.clamp(-1, 1), raw=torch.stack(raw), used=torch.stack(used))


with torch.no_grad():
    runs = {"no threshold": run(None), "static clipping": run("static"), "dynamic thresholding": run("dynamic")}
# your denoiser inside DDIM does exactly what the package's sampler does with threshold="dynamic"
ref = samplers.sample(model, diffusion, x_T_large.shape, sampler="ddim", steps=STEPS, y=y_large,
                      guidance=W_LARGE, threshold="dynamic", percentile=PERCENTILE, x_T=x_T_large)
assert torch.allclose(runs["dynamic thresholding"]["x"], ref, atol=1e-4)   # float32 rounding of x̂0 at large t

# %%
fig = plt.figure(figsize=(11.5, 3.9))
sub = fig.subfigures(1, 2, width_ratios=[1.2, 1.0])
for ax, (name, r) in zip(sub[0].subplots(1, 3), runs.items()):
    plots.show_class_grid(r["x"], n_rows=10, ax=ax, title=name)
plots.plot_value_histograms({"raw x̂0 (no threshold)": runs["no threshold"]["raw"],
                             "x̂0 after static clipping": runs["static clipping"]["used"],
                             "x̂0 after dynamic thr.": runs["dynamic thresholding"]["used"]},
                            ax=sub[1].subplots(1, 1), range=(-4, 4),
                            title=f"x̂0 values over all {STEPS} steps")
fig.suptitle(f"the same {n_large} seeds at w = {W_LARGE:g} (s = {1 + W_LARGE:g})", fontsize=11)
plt.show()

# %%
saturation = saturated_fraction                  # your function (exercise 3; the package's: metrics.saturated_fraction)


def describe(x, y):
    return dict(saturated=float(saturation(x).mean()), mean=float(x.mean()),
                accuracy=metrics.sample_accuracy(x, y, classifier),
                fd=metrics.feature_frechet_distance(x, real_rest, classifier))


table = {"real digits": describe(real_x, real_y),
         "w = 0, static (sec. 2)": describe(explorer.samples(0.0, "static"), explorer.labels)}
table.update({f"w = {W_LARGE:g}, {name}": describe(r["x"], y_large) for name, r in runs.items()})
print(f"{'':>30} {'at ±1':>6} {'mean':>6} {'accuracy':>9} {'FD':>6}")
for name, d in table.items():
    print(f"{name:>30} {100 * d['saturated']:5.1f}% {d['mean']:+6.2f} {100 * d['accuracy']:8.1f}% {d['fd']:6.2f}")

raw = runs["no threshold"]["raw"]
used_static, used_dyn = runs["static clipping"]["used"], runs["dynamic thresholding"]["used"]
sat_static, sat_dyn = (float(saturation(u.flatten(0, 1)).mean()) for u in (used_static, used_dyn))
print(f"raw x̂0 outside [−1, 1]: {100 * float((raw.abs() > 1).float().mean()):.0f}% of values "
      f"(max |x̂0| = {float(raw.abs().max()):.1f}); x̂0 used by the sampler at ±1: static {100 * sat_static:.0f}%, "
      f"dynamic {100 * sat_dyn:.0f}%")

# large guidance drives x̂0 far outside the data range ...
assert float((raw.abs() > 1).float().mean()) > 0.05
# ... static clipping piles it up at ±1, dynamic thresholding keeps it inside [−1, 1] without the pile-up ...
assert float(used_dyn.abs().max()) <= 1.0 + 1e-6 and sat_dyn < 0.5 * sat_static
# ... and in the samples: static clipping saturates more as w grows, dynamic thresholding does not
s = {k: d["saturated"] for k, d in table.items()}
assert s[f"w = {W_LARGE:g}, static clipping"] > 1.5 * s["w = 0, static (sec. 2)"]
assert s[f"w = {W_LARGE:g}, dynamic thresholding"] < 0.5 * s[f"w = {W_LARGE:g}, static clipping"]

# %% [markdown]
# Read the three columns, the histogram and the table together:
#
# * **No threshold**: the raw $\hat x_0$ runs far outside $[-1, 1]$ (the long tails of the histogram, piling
#   up in the end bins), and the samples come out as hard blocks of black and white.
# * **Static clipping** keeps $\hat x_0$ in range by cutting it off, so a large share of the values sits
#   *exactly* at $\pm 1$ (the spikes at the edges of the histogram), and the samples have more pixels at
#   $\pm 1$ than the unguided ones: thick, flat, saturated strokes with few grey levels.
# * **Dynamic thresholding** rescales each sample's $\hat x_0$ by its own $s$: the values stay inside
#   $[-1, 1]$ with almost none at the edges, and the strokes keep their grey levels.
#
# **Does it make better samples?** On 8×8 digits, that depends on the weight, and the table shows why:
# *real* digits are nearly black and white (most of their pixels are exactly $-1$, the background, or
# $+1$), so static clipping's saturation looks less wrong here than on natural images, and dynamic
# thresholding has a visible cost: dividing by $s$ also lifts the black background towards grey (the mean
# pixel value rises, more so the larger $w$ and hence $s$). The FD of both at a moderate and at the large
# weight, from the same seeds:

# %%
fd_pair = {(W_LARGE, th): metrics.feature_frechet_distance(runs[name]["x"], real_rest, classifier)
           for th, name in (("static", "static clipping"), ("dynamic", "dynamic thresholding"))}
for th in ("static", "dynamic"):
    x = samplers.sample(model, diffusion, x_T_large.shape, sampler="ddim", steps=STEPS, y=y_large,
                        guidance=W_MODERATE, threshold=th, percentile=PERCENTILE, x_T=x_T_large)
    fd_pair[(W_MODERATE, th)] = metrics.feature_frechet_distance(x, real_rest, classifier)
for w in (W_MODERATE, W_LARGE):
    print(f"w = {w:g}: FD static {fd_pair[(w, 'static')]:.2f}, dynamic {fd_pair[(w, 'dynamic')]:.2f}")
ratio = {w: fd_pair[(w, "dynamic")] / fd_pair[(w, "static")] for w in (W_MODERATE, W_LARGE)}
# at the moderate weight dynamic thresholding gives the better FD; at the large weight its advantage is gone
assert ratio[W_MODERATE] < 1 < ratio[W_LARGE], ratio

# %% [markdown]
# At the moderate weight, dynamic thresholding beats static clipping on FD: it removes the saturation and
# the background is still close to black. At the large weight $s$ grows, the grey background costs more
# than the saturation it removes, and on digits static clipping comes out ahead. On natural images at
# $s \approx 7$–$20$ the saturation of static clipping is the dominant failure, and dynamic thresholding is
# what let Imagen use such weights at all (Saharia et al. 2022, Fig. 4c). The percentile $p$ sets the
# balance (a lower $p$ gives a smaller $s$: less greying, more clipping). Try it yourself in the widget:
# `GuidanceExplorer(model, diffusion, weights=(0, 2, 4, 8), thresholds=("static", "dynamic"), percentile=0.95)`,
# then toggle between the two at each weight.

# %% [markdown]
# ## 5 · What does guidance sample? An exact check in 2D
#
# Section 1 motivated guidance with Bayes' rule: it samples "(roughly)" $p(x \mid c)\,p(c \mid x)^w$. On digits
# we cannot check that: we know neither the true scores nor that distribution. On a Gaussian mixture we know
# both exactly, so we can run guidance with a *perfect* model and compare what it samples with what it is
# supposed to sample.
#
# **The toy.** Three overlapping classes in the plane, $p(x \mid c) = \mathcal N(m_c, 0.3^2 I)$ for
# $c = 0, 1, 2$, equally likely, so $p(x) = \frac13 \sum_c p(x \mid c)$. `toys.ExactGMMDenoiser` gives the
# exact $\varepsilon^*(x_t, c) = \mathbb E[\varepsilon \mid x_t, c]$ and, for the null label, the exact
# unconditional $\varepsilon^*(x_t, \varnothing)$: guidance with them has no network error at all.
#
# **The target, the tilted distribution.**
#
# $$
# p_w(x \mid c) \;\propto\; p(x \mid c)\,p(c \mid x)^{w} \;\propto\; p(x \mid c)^{1+w}\,p(x)^{-w}
# $$
#
# (the same up to a constant, since $p(c \mid x) = p(x \mid c)\,p(c)/p(x)$). `oracle.TiltedMixture` has its
# exact density (the normalising constant by quadrature) and draws exact samples by rejection: draw
# $x \sim p(x \mid c)$ and keep it with probability $p(c \mid x)^w$, which is at most 1.
#
# **The measurement** (`oracle.guidance_gap`). Guided sampling of class 0 with
# $\tilde\varepsilon = (1 + w)\,\varepsilon^*(x_t, c) - w\,\varepsilon^*(x_t, \varnothing)$ from 2000 noises, with
# deterministic DDIM at 200 steps (enough that the sampler's own error is negligible: at $w = 0$ it must
# reproduce $p(x \mid c)$) and with 1000-step ancestral DDPM. The distance is the sliced Wasserstein distance
# $\mathrm{SW}_2$ (`metrics.sliced_wasserstein`: the optimal-transport distance between the 1D projections
# of two point clouds, averaged over directions, in the units of $x$; notebook 07 §7), next to its
# **floor**, the distance between two independent exact samples of the target.

# %%
ORACLE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)   # guidance weights for the exact 2D check
W_SHOW = 4.0                                 # the weight drawn below (s = 5, as in text-to-image models)
three = toys.GaussianMixture([1.0, 1.0, 1.0], [[-0.6, -0.35], [0.6, -0.35], [0.0, 0.7]], stds=0.3)
toy_diffusion = GaussianDiffusion("linear", 1000)        # the digits model's schedule: linear, T = 1000
start = time.perf_counter()
gap = {"DDIM": oracle.guidance_gap(three, toy_diffusion, 0, ORACLE_WEIGHTS, n=2000, sampler="ddim", steps=200),
       "DDPM": oracle.guidance_gap(three, toy_diffusion, 0, ORACLE_WEIGHTS, n=2000, sampler="ddpm", steps=None)}
# control: the same gap with four times as many DDIM steps
gap_800 = oracle.guidance_gap(three, toy_diffusion, 0, (W_SHOW,), n=2000, sampler="ddim", steps=800).rows[0]
print(f"exact guided sampling, {len(ORACLE_WEIGHTS)} weights × 2 samplers: {time.perf_counter() - start:.1f} s")
rows = {name: {r["w"]: r for r in g.rows} for name, g in gap.items()}
print(f"{'w':>4} {'p_w vs p(x|c)':>14} {'DDIM-CFG vs p_w':>16} {'DDPM-CFG vs p_w':>16} {'floor':>6}")
for w in ORACLE_WEIGHTS:
    r = rows["DDIM"][w]
    print(f"{w:4g} {r['tilt']:14.3f} {r['to_tilted']:16.3f} {rows['DDPM'][w]['to_tilted']:16.3f} {r['floor']:6.3f}")
print(f"DDIM-CFG vs p_w at w = {W_SHOW:g}: {rows['DDIM'][W_SHOW]['to_tilted']:.3f} with 200 steps, "
      f"{gap_800['to_tilted']:.3f} with 800")

# %%
target = oracle.TiltedMixture.for_class(three, 0, W_SHOW)
grid = torch.linspace(-2.2, 1.6, 161, dtype=torch.float64)
gx, gy = torch.meshgrid(grid, grid, indexing="xy")
dens = target.log_prob(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).exp().reshape(gx.shape)
# density levels that enclose 50 %, 90 % and 99 % of p_w's mass
cell = float(grid[1] - grid[0]) ** 2
sorted_d = dens.reshape(-1).sort(descending=True).values
mass = sorted_d.cumsum(0) * cell
levels = sorted(float(sorted_d[int((mass < q).sum())]) for q in (0.5, 0.9, 0.99))

data_x, data_c = three.sample(1500, generator=torch.Generator().manual_seed(3), return_labels=True)
panels = {"data: class 0 (blue), 1 and 2": (data_x, data_c),
          f"target p_w(x | 0), w = {W_SHOW:g}": (gap["DDIM"].tilted[W_SHOW], None),
          f"CFG, DDIM 200 steps, w = {W_SHOW:g}": (gap["DDIM"].guided[W_SHOW], None),
          f"CFG, DDPM 1000 steps, w = {W_SHOW:g}": (gap["DDPM"].guided[W_SHOW], None)}
fig, axes = plt.subplots(1, 5, figsize=(16, 3.4), gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.25]})
for ax, (title, (x, c)) in zip(axes, panels.items()):
    x = x.float()[:1500]
    colour = "C0" if c is None else np.array(["C0", "0.55", "0.8"])[c.numpy()]
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, c=colour, linewidths=0)
    ax.contour(gx.numpy(), gy.numpy(), dens.numpy(), levels=levels, colors="k", linewidths=0.8)
    ax.set(xlim=(-2.2, 1.6), ylim=(-1.9, 1.9), aspect="equal")
    ax.set_title(title, fontsize=9)
ax = axes[-1]
for name, style in (("DDIM", "C0-o"), ("DDPM", "C1-s")):
    ax.plot(ORACLE_WEIGHTS, [rows[name][w]["to_tilted"] for w in ORACLE_WEIGHTS], style, label=f"CFG ({name}) vs p_w")
ax.plot(ORACLE_WEIGHTS, [rows["DDIM"][w]["tilt"] for w in ORACLE_WEIGHTS], "k--", lw=1, label="p_w vs p(x | c)")
ax.plot(ORACLE_WEIGHTS, [rows["DDIM"][w]["floor"] for w in ORACLE_WEIGHTS], "k:", lw=1, label="floor")
ax.set(xlabel="guidance weight w", ylabel="SW₂")
ax.set_title("distance to the tilted target", fontsize=9)
ax.legend(fontsize=7)
fig.suptitle(f"black contours: the tilted target p_w(x | 0) at w = {W_SHOW:g} (50 %, 90 %, 99 % of its mass)",
             fontsize=10, y=1.02)
fig.tight_layout()
plt.show()

# %%
m0 = three.means[0].double()
away = m0 - three.means[1:].double().mean(0)                 # from the other two classes towards class 0
away = away / away.norm()
clouds = {"p(x | 0)": oracle.TiltedMixture.for_class(three, 0, 0.0).sample(2000, generator=torch.Generator().manual_seed(4)),
          "p_w(x | 0)": gap["DDIM"].tilted[W_SHOW], "CFG, DDIM": gap["DDIM"].guided[W_SHOW],
          "CFG, DDPM": gap["DDPM"].guided[W_SHOW]}
shift = {k: float((x.double().mean(0) - m0) @ away) for k, x in clouds.items()}
spread = {k: float(x.double().std(0).mean()) for k, x in clouds.items()}
for k in clouds:
    print(f"{k:>11}: mean moved {shift[k]:+.3f} away from the other classes, spread (std) {spread[k]:.3f}")
ddim_vs_ddpm = metrics.sliced_wasserstein(gap["DDIM"].guided[W_SHOW], gap["DDPM"].guided[W_SHOW])
print(f"DDIM-CFG vs DDPM-CFG at w = {W_SHOW:g}: SW₂ = {ddim_vs_ddpm:.3f}")

floor = float(np.mean([r["floor"] for r in gap["DDIM"].rows]))   # the sampling floor, averaged over w
print(f"sampling floor (mean over w): {floor:.3f}")
# w = 0: both samplers reproduce p(x|c) up to sampling noise (the exact denoiser has no model error)
assert rows["DDIM"][0.0]["to_tilted"] < 2 * floor and rows["DDPM"][0.0]["to_tilted"] < 2 * floor
for w in ORACLE_WEIGHTS[2:]:                                   # w >= 1
    # guided samples are far from the tilted target, further than the tilt itself moves the class
    assert rows["DDIM"][w]["to_tilted"] > 5 * floor and rows["DDIM"][w]["to_tilted"] > 2 * rows["DDIM"][w]["tilt"]
    assert rows["DDPM"][w]["to_tilted"] > 3 * floor and rows["DDPM"][w]["to_tilted"] > 1.5 * rows["DDPM"][w]["tilt"]
# not a discretisation error: four times the steps, the same gap
assert abs(gap_800["to_tilted"] - rows["DDIM"][W_SHOW]["to_tilted"]) < 0.05 * gap_800["to_tilted"]
# guidance overshoots: the samples move several times further out than the tilted target (DDIM also contracts)
assert min(shift["CFG, DDIM"], shift["CFG, DDPM"]) > 3 * shift["p_w(x | 0)"]
assert spread["CFG, DDIM"] < 0.8 * spread["p_w(x | 0)"]
# ... and the two samplers, which would agree for the scores of one diffusion, disagree
assert ddim_vs_ddpm > 4 * floor

# %% [markdown]
# With $w = 0$ both samplers reproduce $p(x \mid c)$, as they must with an exact denoiser. With $w > 0$:
#
# * The **target** $p_w$ moves little (dashed line): the tilt only reweights the class by $p(c \mid x)^w$,
#   removing the part of the blob that the other two classes also explain. It cannot put mass where
#   $p(x \mid c)$ has little, because $p_w \le p(x \mid c)/Z$.
# * **Guided sampling** moves much further: its samples are pushed away from the other classes, out of
#   the bulk of $p(x \mid c)$ (with DDIM they also contract into a crescent at the far edge). The gap to
#   the target, several times the sampling floor from $w = 0.5$ on, grows with $w$, and it is not the
#   sampler's fault: it is the same at 800 steps as at 200. Chidambaram et al. (2024) prove this behaviour for simple mixtures:
#   as $w$ grows, guidance samples more and more from the edge of the class's support (in their examples,
#   the edge facing away from the other classes).
# * **DDIM and DDPM disagree** with each other, too: the stochastic sampler lands closer to the target (but
#   still well above the floor) and keeps the target's spread. Given the scores of one genuine diffusion,
#   the deterministic and the stochastic sampler produce the same distribution; with guidance they do not.
#
# **Why.** The guided noise prediction is a scaled score, as in section 1. With
# $\varepsilon^*(x_t, \cdot) = -\sigma_t \nabla_{x_t} \log p_t(x_t \mid \cdot)$,
#
# $$
# \tilde\varepsilon = (1 + w)\,\varepsilon^*(x_t, c) - w\,\varepsilon^*(x_t, \varnothing)
# = -\sigma_t\, \nabla_{x_t} \log\!\big[\,p_t(x_t \mid c)^{1+w}\; p_t(x_t)^{-w}\,\big],
# $$
#
# so at every noise level the sampler follows the score of the **tilt of the noised distributions**
# $p_t(\cdot \mid c)$ and $p_t$. To sample $p_w$ it would need the score of the **noised tilted distribution**,
# $\int q(x_t \mid x_0)\, p_w(x_0 \mid c)\,\mathrm dx_0$. The two agree at $t = 0$ and not in general for
# $t > 0$: adding noise (a convolution) and tilting (powers and products of densities) do not commute,
#
# $$
# \int q(x_t \mid x_0)\, \frac{p(x_0 \mid c)^{1+w}\, p(x_0)^{-w}}{Z}\,\mathrm dx_0
# \;\ne\; \frac{p_t(x_t \mid c)^{1+w}\, p_t(x_t)^{-w}}{Z_t}.
# $$
#
# At high noise the classes overlap, $p_t(c \mid x_t)$ changes slowly but everywhere, and
# $w\,\nabla \log p_t(c \mid x_t)$ pushes every sample away from the other classes while nothing is decided
# yet; the later steps, which follow $p_t(x \mid c)$ near the data, do not take that push back. Moreover, the
# family $p_t(x \mid c)^{1+w} p_t(x)^{-w}$ is not the set of marginals of *any* one diffusion, so samplers
# that agree for true scores (the ODE of DDIM, the SDE of DDPM) need not agree. Bradley & Nakkiran (2024)
# show that neither generates $p(x \mid c)^{\gamma} p(x)^{1-\gamma}$ ($\gamma = 1 + w$), and that in the SDE
# limit guided sampling is a predictor-corrector method: a DDIM step for $p(x \mid c)$ followed by Langevin
# steps that sharpen towards a powered distribution $p_t(x \mid c)^{\gamma'} p_t(x)^{1-\gamma'}$, with a
# $\gamma'$ that is not simply $1 + w$.
#
# So "guidance samples $p(x \mid c)\,p(c \mid x)^w$" is a motivation, not a fact. What guidance does
# deliver is what section 3 measured: samples that are more typical of their class *and* less diverse,
# here even less diverse than the tilted target, and pushed past it.

# %% [markdown]
# ## 6 · Imagen's other findings, and where the course goes next
#
# Dynamic thresholding is one of three ideas in *Photorealistic Text-to-Image Diffusion Models with Deep
# Language Understanding* (Saharia et al. 2022). The others are about the condition, which in Imagen is a
# text prompt rather than a class label:
#
# * **A large frozen text encoder.** Imagen conditions its diffusion model on the embeddings of a *pretrained,
#   frozen* T5-XXL language model (4.6 B parameters, trained on text only), rather than on a text encoder
#   trained on image–caption pairs (CLIP) or jointly with the diffusion model. On COCO FID and CLIP score
#   T5-XXL and CLIP's text encoder did about equally well; human raters preferred the T5-XXL model on both
#   alignment and fidelity (on the paper's DrawBench prompts).
# * **Scale the text encoder, not (only) the U-Net.** Growing T5 from small to XXL improved both image
#   fidelity and image–text alignment much more than growing the diffusion U-Net did (Imagen, Fig. 4).
# * **Efficient U-Net and cascades.** Imagen generates at 64×64 and upsamples with two text-conditional
#   super-resolution diffusion models (to 256 and 1024). Its *Efficient U-Net* moves parameters to the
#   low-resolution blocks, scales skip connections by $1/\sqrt 2$ and reverses the order of down-/upsampling
#   and convolution: less memory, faster steps and faster convergence than the usual U-Net.
# * Classifier-free guidance at large weights, made usable by dynamic thresholding (this notebook), and
#   noise-conditioning augmentation for the super-resolution stages. The result: a zero-shot FID of 7.27 on
#   COCO, without ever training on COCO.
#
# **Next in the course** (planned notebooks):
#
# * **08 · Latent diffusion** (Rombach et al. 2022, Stable Diffusion): run the same diffusion and the same
#   fast samplers in the latent space of an autoencoder instead of pixel space.
# * **09 · Text conditioning with CLIP**: replace the class embedding by text embeddings and cross-attention;
#   CLIP's contrastive image–text training, and how its embeddings differ from Imagen's frozen T5.
# * **10 · Personalisation (DreamBooth)**: fine-tune a text-to-image model on a few pictures of one subject
#   bound to a rare token, with a prior-preservation loss.
#
# ## Summary
#
# * One network, trained with **label dropout**, predicts both $\varepsilon_\theta(x_t, c)$ and
#   $\varepsilon_\theta(x_t, \varnothing)$; classifier-free guidance uses
#   $\tilde\varepsilon = (1+w)\,\varepsilon_\theta(x_t, c) - w\,\varepsilon_\theta(x_t, \varnothing)$ (scale $s = 1 + w$ elsewhere).
# * Measured on digits: as $w$ grows, class accuracy rises (to 100 %) and precision rises at small $w$,
#   while recall and within-class diversity fall steeply. Guidance trades diversity for fidelity.
# * At large $w$, $\hat x_0$ leaves the data range. Static clipping piles it up at $\pm 1$ and saturates the
#   samples; Imagen's dynamic thresholding rescales each sample by its $p$-th percentile $s$ and keeps
#   $\hat x_0$ inside $[-1, 1]$ with far fewer saturated values. On nearly black-and-white digits that pays
#   off at moderate weights; at large ones the greyed background costs more than the saturation it removes.
# * Guidance does **not** sample the tilted distribution $p(x \mid c)\,p(c \mid x)^w$: with exact scores on
#   a 2D mixture it lands far from it (several times the sampling floor for $w \ge 1$, whatever the number of
#   steps), overshooting away from the other classes, and DDIM and DDPM disagree. Its score is the tilt of
#   the *noised* distributions, not the score of the noised tilt.
# * Imagen's other lessons: a large **frozen** text encoder, scaling it matters more than scaling the U-Net,
#   and an efficient U-Net in a cascade.
#
# ## What comes next
#
# This notebook ends the DDPM part of the course: a trained model (03), conditioning (04), sampling
# (05, 06) and guidance (07). The next part moves from pixels to latents and from class labels to text:
# **[08 · Latent diffusion](09_latent_diffusion.ipynb)** trains the same diffusion in an autoencoder's latent
# space and edits images with it (image-to-image, inpainting); CLIP, text-to-image (a mini Stable Diffusion and
# a mini Imagen, where dynamic thresholding returns) and DreamBooth follow (not published yet).
#
# **References.** J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, NeurIPS 2021 workshop,
# arXiv:2207.12598 (eq. 6, §4). C. Saharia et al., *Photorealistic Text-to-Image Diffusion Models with Deep Language
# Understanding* (Imagen), NeurIPS 2022 (§2.3, §2.4, Fig. 4). P. Dhariwal, A. Nichol, *Diffusion
# Models Beat GANs on Image Synthesis*, NeurIPS 2021 (classifier guidance). T. Kynkäänniemi et al.,
# *Improved Precision and Recall Metric for Assessing Generative Models*, NeurIPS 2019. A. Nichol et al.,
# *GLIDE*, ICML 2022. M. Chidambaram, K. Gatmiry, S. Chen, H. Lee, J. Lu, *What does guidance
# do? A fine-grained analysis in a simple setting*, NeurIPS 2024, arXiv:2409.13074. A. Bradley, P. Nakkiran,
# *Classifier-Free Guidance is a Predictor-Corrector*, arXiv:2408.09000 (2024; TMLR 2025).

# %%
elapsed = time.perf_counter() - NOTEBOOK_START
print(f"notebook run time: {elapsed:.0f} s")
