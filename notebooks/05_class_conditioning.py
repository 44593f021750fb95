# %% [markdown]
# # 05 · Class conditioning and classifier-free guidance
#
# So far the model has drawn *some* digit. Now we want to ask for a *particular* one: "draw me a 7". That is a
# **conditional** model $p_\theta(x \mid c)$ with a class label $c$. In a diffusion model the change is small:
# the network gets the label as a third input, $\varepsilon_\theta(x_t, t, c)$, and everything else (the
# forward process, the loss, the samplers) stays exactly as before.
#
# Two tricks on top of that make conditional diffusion models work as well as they do today:
# **label dropout**, which trains an unconditional model inside the conditional one for free, and
# **classifier-free guidance**, which combines the two at sampling time to make samples look *more* like
# their class. Every text-to-image model you have heard of (GLIDE, Imagen, Stable Diffusion) samples this way.
#
# **What you will learn**
#
# * how the label gets into the U-Net: a learned vector per class (the source material's *class bias*), added
#   to the time embedding, which every residual block turns into a per-channel bias; what these vectors
#   look like after training;
# * label dropout: why replacing the label by a *null class* $\varnothing$ 10 % of the time gives you an
#   unconditional model $\varepsilon_\theta(x_t, t, \varnothing)$ at no extra cost;
# * classifier-free guidance, $\tilde\varepsilon = (1+w)\,\varepsilon_\theta(x_t, c) - w\,\varepsilon_\theta(x_t, \varnothing)$
#   (Ho & Salimans), where it comes from and what the weight $w$ does;
# * how to *measure* whether a sample of class 3 looks like a 3 (a classifier trained on real digits), and
#   the **guidance explorer** widget;
# * by building it: you predict where the label matters most before the notebook measures it, and in the
#   exercises you write the guided $\tilde\varepsilon$, label dropout and the **conditional training loss**,
#   then train a small class-conditional 2D model with your loss and sample it with your guided $\tilde\varepsilon$.
#
# We use the trained class-conditional digits model that ships with the course (`assets/checkpoints/digits`):
# an 8×8 U-Net with 10 classes plus the null class, index 10. The only training here is the small 2D model of
# exercise 3 (a few seconds).
#
# *Run time: under a minute on a laptop CPU.*

# %%
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ddpm_lite import metrics, plots, toys
from ddpm_lite.checkpoint import from_pretrained
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion, null_labels
from ddpm_lite.exercises import nb05
from ddpm_lite.oracle import sample_points
from ddpm_lite.samplers import ddim, sample
from ddpm_lite.toy_mlp import ToyMLP
from ddpm_lite.train import TrainConfig
from ddpm_lite.unet import ResBlock, timestep_embedding
from ddpm_lite.widgets import GuidanceExplorer

plots.setup()                  # small figures (72 dpi), grey images, pixel-sharp 8×8 digits
torch.set_num_threads(1)       # small tensors: extra threads only add overhead (and stall on a busy CPU)
NOTEBOOK_START = time.perf_counter()

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
CHECKPOINT = REPO / "assets" / "checkpoints" / "digits"
model, diffusion = from_pretrained(CHECKPOINT)        # the EMA weights, eval mode, on the CPU
classifier = metrics.load_classifier("digits")        # a small CNN trained on real digits (99 % held out)
K = model.num_classes                                 # 10 digit classes ...
NULL = K                                              # ... and the learned null class, index 10
real = load_dataset("digits")                         # real digits: images [N, 1, 8, 8] in [-1, 1], labels [N]

n_params = sum(p.numel() for p in model.parameters())
print(f"U-Net with {n_params / 1e6:.2f}M parameters, {K} classes + null class {NULL}; {diffusion}")
assert K == 10 and model.class_emb.num_embeddings == K + 1

# %% [markdown]
# ## 1 · How the label gets in: one learned vector per class
#
# The U-Net already has a way to hear about a number: the timestep $t$ goes through a sinusoidal embedding
# $\gamma(t)$ and a small MLP, and the resulting vector is fed to every residual block. The label uses the
# same road. A lookup table $E \in \mathbb R^{(K+1) \times d}$ (`model.class_emb`, an `nn.Embedding`) holds one
# learned vector per class, and the model simply adds it:
#
# $$
# e(t, c) = \mathrm{MLP}\big(\gamma(t)\big) + E_c .
# $$
#
# Inside residual block $\ell$ the embedding is projected to one number per channel and added to every
# pixel of the feature map $h$:
#
# $$
# h \;\leftarrow\; h + W_\ell\,\mathrm{SiLU}\big(e(t, c)\big) + b_\ell .
# $$
#
# So a label acts as a **learned bias per class and per channel** in every block: the *class bias* idea of
# the course's source material. Here one shared table $E$ feeds all blocks (each block projects it with its
# own $W_\ell$), and because of the SiLU the bias a class produces also depends on $t$ (the same design as
# Dhariwal & Nichol 2021). The network is free to use this bias to switch features on and off: "at this noise level,
# look for a loop at the top" for a 9, "a vertical stroke" for a 1.
#
# Row 10 of $E$ is the **null class** $\varnothing$: "no label given". We come back to it in section 2.
#
# Below, on the left, the bias each digit adds in the first residual block at $t = 500$, *relative to the
# null class*: $W_1\,\mathrm{SiLU}(e(t, c)) - W_1\,\mathrm{SiLU}(e(t, \varnothing))$, one row per digit, one column per
# channel. On the right, how similar these class biases are between digits (cosine similarity of the biases of
# all residual blocks, put end to end).

# %%
E = model.class_emb.weight.detach()                  # [K + 1, d]: one learned vector per class, + null
blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
t_mid = torch.full((K + 1,), 500)
with torch.no_grad():
    time_emb = model.time_mlp(timestep_embedding(t_mid, model.base_channels))     # MLP(γ(t)), same for every row
    bias = [blk.emb_proj(F.silu(time_emb + E)) for blk in blocks]             # per block: [K + 1, channels]
class_bias = [b[:K] - b[NULL] for b in bias]          # what each digit adds, relative to "no label"
all_bias = torch.cat(class_bias, dim=1)               # [K, channels of all blocks]
cos = F.cosine_similarity(all_bias[:, None, :], all_bias[None, :, :], dim=-1)

fig, (ax_b, ax_c) = plt.subplots(1, 2, figsize=(11.5, 3.6), gridspec_kw={"width_ratios": [2.2, 1]})
plots.plot_class_bias(class_bias[0], ax=ax_b, title="class bias in block 1 at t = 500 (minus the null class's)")
off_diag = cos.clone().fill_diagonal_(float("nan"))                 # the diagonal is 1 by definition
im = ax_c.imshow(off_diag, cmap="viridis")
ax_c.set_xticks(range(K)); ax_c.set_yticks(range(K)); ax_c.grid(False)
ax_c.set_title("cosine similarity of the class biases\n(all blocks; diagonal left blank)", fontsize=10)
fig.colorbar(im, ax=ax_c, fraction=0.046)
fig.tight_layout()
plt.show()

i, j = divmod(int(off_diag.nan_to_num(-2).argmax()), K)
E_cos = F.cosine_similarity(E[:, None, :], E[None, :, :], dim=-1)[~torch.eye(K + 1, dtype=bool)]
print(f"{len(blocks)} residual blocks, {all_bias.shape[1]} channels in all; most similar class biases: "
      f"digits {i} and {j} (cos = {cos[i, j]:.2f})")
print(f"the table E: d = {E.shape[1]}, mean row norm {E.norm(dim=1).mean():.1f} (random N(0, 1) rows: "
      f"√d = {E.shape[1] ** 0.5:.1f}), mean |cos| between rows {E_cos.abs().mean():.2f}")
assert all_bias.shape == (K, sum(b.shape[1] for b in bias)) and off_diag.nan_to_num(0).max() < 0.95

# %% [markdown]
# Each digit switches its own pattern of channels up (red) or down (blue), and digits that share strokes
# tend to get similar biases (look for the brightest cells on the right). The table $E$ itself is less
# telling: compare its printed statistics with those of random vectors. In $d$ = a hundred or more dimensions
# random vectors are already nearly orthogonal, so training has no need to push them apart; what the network
# learns is mostly in the projections $W_\ell$ that turn each class vector into biases.
#
# **Does the label matter equally at every noise level?** We take real digits, noise them to $x_t$, and ask
# the network for its noise prediction once *with* the true label and once with the null label. Each noise
# prediction implies a guess of the clean image, $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}$
# (eq. 4 solved for $x_0$; notebook 06 looks at it closely), clipped to the data range $[-1, 1]$ as the samplers
# do. The root-mean-square difference between the two guesses, per pixel, says how much the label changes the
# model's idea of the image.
#
# **Predict, then run.** Before the next cell measures it: at which noise level does the label change the
# model's guess $\hat x_0$ the most? (a) at small $t$ ($t \le 250$), where there is little noise and the
# details of the digit could depend on the label; (b) in the middle ($250 < t < 750$); (c) at large $t$
# ($t \ge 750$), where the image is nearly pure noise. Commit to an answer first.

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "c"
### END SOLUTION
nb05.commit_label_effect_prediction(prediction)

# %%
gen = torch.Generator().manual_seed(0)
x0_real, y_real = real.images[:64], real.labels[:64]
ts_probe = [10, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999]
label_effect = []
with torch.no_grad():
    for t in ts_probe:
        tt = torch.full((len(x0_real),), t)
        x_t = diffusion.q_sample(x0_real, tt, generator=gen)
        x0_c = diffusion.predict_x0_from_eps(x_t, tt, model(x_t, tt, y_real)).clamp(-1, 1)     # with the label
        x0_u = diffusion.predict_x0_from_eps(x_t, tt, model(x_t, tt, null_labels(model, y_real))).clamp(-1, 1)
        label_effect.append((x0_c - x0_u).pow(2).mean().sqrt().item())

fig, ax = plt.subplots(figsize=(5.5, 2.8))
ax.plot(ts_probe, label_effect, "o-")
ax.set(xlabel="t", ylabel="RMS change of $\\hat x_0$", title="how much does the label change the guess $\\hat x_0$?")
plt.show()
print("RMS change of x̂0 per pixel:", ", ".join(f"t={t}: {e:.3f}" for t, e in zip(ts_probe, label_effect)))
assert label_effect[-1] > 3 * label_effect[0], label_effect
nb05.reveal_label_effect(prediction, ts_probe, label_effect)

# %% [markdown]
# At small $t$ the image itself says which digit it is, so the label adds almost nothing. At large $t$ the
# image is almost pure noise and the label is the *only* information about what to draw: that is where the
# class decides the shape.
#
# ## 2 · Label dropout: an unconditional model for free
#
# To train the conditional model, the trainer (`ddpm_lite.train`, `TrainConfig.label_dropout`) takes each
# batch of images and labels and, independently for every example, **replaces the label by the null class**
# with probability $p_\text{uncond}$ (0.1 here; Ho & Salimans used 0.1 to 0.2):
#
# $$
# \tilde c = \begin{cases} \varnothing & \text{with probability } p_\text{uncond} \\ c & \text{otherwise,}\end{cases}
# \qquad
# L = \mathbb E_{x_0, c, t, \varepsilon}\,\big\lVert \varepsilon - \varepsilon_\theta(x_t, t, \tilde c)\big\rVert^2 .
# $$
#
# Why does this give an unconditional model? For the examples labelled $\varnothing$ the network cannot know
# which digit $x_0$ was, so the loss is minimised by averaging over all of them:
# $\varepsilon_\theta(x_t, t, \varnothing) \to \mathbb E[\varepsilon \mid x_t]$ with $x_0$ drawn from *all*
# digits, which is exactly the optimal **unconditional** denoiser. With labels it learns
# $\mathbb E[\varepsilon \mid x_t, c]$. One network, one training run, two models; the price is that 10 % of the
# examples do not train the conditional model.
#
# Here is the mask the trainer draws, on one batch of 16 labels (`10` = null):

# %%
p_uncond = TrainConfig().label_dropout
y = real.labels[:16]
drop = torch.rand(y.shape, generator=torch.Generator().manual_seed(3)) < p_uncond
print(f"label_dropout = {p_uncond}")
print("labels         ", y.tolist())
print("after dropout  ", [NULL if d else v for v, d in zip(y.tolist(), drop.tolist())])
print(f"dropped {int(drop.sum())} of {len(y)}")

# %% [markdown]
# Now the payoff: sample with the null label (`y=None` means "all null") and let the digits classifier say
# what came out. An unconditional model should produce *all* digits, in roughly the proportions of the
# training data (about 10 % each):

# %%
t0 = time.perf_counter()
x_uncond = sample(model, diffusion, (100, 1, 8, 8), sampler="ddim", steps=20, y=None,
                  generator=torch.Generator().manual_seed(1))
sec_uncond = time.perf_counter() - t0
pred_uncond = metrics.classify(x_uncond, classifier)
counts = torch.bincount(pred_uncond, minlength=K)

fig, (ax_g, ax_h) = plt.subplots(1, 2, figsize=(9, 3.3), gridspec_kw={"width_ratios": [1, 1.4]})
plots.show_images(x_uncond[:50], nrow=10, ax=ax_g, title="null class: 50 unconditional samples")
ax_h.bar(range(K), counts.numpy() / len(x_uncond))
ax_h.axhline(0.1, color="k", ls=":", lw=1, label="uniform (10 %)")
ax_h.set(xticks=range(K), xlabel="digit the classifier sees", ylabel="fraction", title="what came out")
ax_h.legend()
fig.tight_layout()
plt.show()
print(f"100 unconditional samples in {sec_uncond:.1f} s; classified as: {counts.tolist()}")
assert (counts > 0).sum() >= 8 and counts.max() <= 30, counts

# %% [markdown]
# ## 3 · Classifier-free guidance
#
# A conditional model samples from $p(x \mid c)$, and its samples are as varied as the training data of that
# class: some 4s are sloppy. Often we would rather trade some of that diversity for samples that are *very
# clearly* a 4. Classifier guidance (Dhariwal & Nichol 2021) did this with a separate classifier $p(c \mid x_t)$
# trained on noisy images, sampling from $p(x_t \mid c)\,p(c \mid x_t)^{w}$. Ho & Salimans noticed that the
# classifier is already hidden inside the two models we have. By Bayes' rule
# $p(c \mid x_t) \propto p(x_t \mid c) / p(x_t)$, so
#
# $$
# \nabla_{x_t} \log p(c \mid x_t) = \nabla_{x_t} \log p(x_t \mid c) - \nabla_{x_t} \log p(x_t).
# $$
#
# A noise prediction is a scaled score, $\varepsilon_\theta(x_t, c) = -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t} \log p(x_t \mid c)$
# (and with $\varnothing$ for $p(x_t)$). Following the score of $p(x_t \mid c)\,p(c \mid x_t)^{w}$ therefore
# means using the **guided noise prediction**
#
# $$
# \tilde\varepsilon_\theta(x_t, c) = \varepsilon_\theta(x_t, c) + w\,\big(\varepsilon_\theta(x_t, c) - \varepsilon_\theta(x_t, \varnothing)\big)
# = (1 + w)\,\varepsilon_\theta(x_t, c) - w\,\varepsilon_\theta(x_t, \varnothing)
# $$
#
# (Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2021/2022, eq. 6) in place of $\varepsilon_\theta$ in any
# sampler. The difference $\varepsilon_c - \varepsilon_\varnothing$ points "towards the class and away from
# digits in general"; $w$ says how far to push.
#
# * $w = 0$ is the plain conditional model; $w > 0$ over-emphasises the class.
# * **Convention.** `ddpm_lite` uses $w$ as above (`guidance=w`). Other libraries (diffusers, Stable
#   Diffusion) write a *guidance scale* $s = 1 + w$, $\tilde\varepsilon = \varepsilon_\varnothing + s\,(\varepsilon_c - \varepsilon_\varnothing)$:
#   Stable Diffusion's default $s = 7.5$ is $w = 6.5$ here.
# * Each step now costs two network evaluations (`ddpm_lite` runs them as one batch of $2B$).
# * Guidance needs a label: with $c = \varnothing$ the two predictions coincide and $\tilde\varepsilon = \varepsilon_\varnothing$
#   whatever $w$, and `sample(..., y=None, guidance=2)` refuses with an error.
#
# This is `GaussianDiffusion.model_output(model, x_t, t, y, guidance=w)`, which every sampler calls. Check it
# on the real model against the other libraries' form with the guidance scale $s = 1 + w$ (the two forms are
# the same formula, rearranged):

# %%
tt = torch.full((8,), 600)
x_t = diffusion.q_sample(real.images[:8], tt, generator=torch.Generator().manual_seed(2))
y8 = real.labels[:8]
with torch.no_grad():
    eps_c = model(x_t, tt, y8)                          # ε_θ(x_t, c)
    eps_u = model(x_t, tt, null_labels(model, y8))      # ε_θ(x_t, ∅): label 10
    for w in (0.0, 1.0, 3.0):
        guided = diffusion.model_output(model, x_t, tt, y8, guidance=w)
        s = 1 + w                                       # the "guidance scale" of diffusers & co.
        err = (guided - (eps_u + s * (eps_c - eps_u))).abs().max().item()
        print(f"w = {w}: max |model_output(guidance=w) − (ε_∅ + s (ε_c − ε_∅))| = {err:.1e} with s = {s}")
        assert err < 1e-5

# %% [markdown]
# ## 4 · Samples per class, and how to measure them
#
# Here are samples from the model, one row per requested digit, 10 seeds per row (DDIM with 20 steps, which
# notebook 07 explains; for now: a fast sampler). Every column starts from **the same** noise $x_T$ in every
# row, so the only thing that changes down a column is the label.
#
# How good are they? Looking is not measuring. The course ships a small CNN trained on *real* 8×8 digits
# (99.15 % accuracy on held-out real digits, `ddpm_lite.metrics`). We ask it which digit each sample is; the
# fraction that matches the requested label is the **class accuracy** of the samples, a measure of how well
# the model follows its conditioning (it says nothing about diversity: a model that drew the same perfect 3
# every time would score 100 %).
#
# The samples come from a `GuidanceExplorer` (section 5), which samples every guidance weight it offers once,
# up front, so that its slider is instant; here we use its $w = 0$ samples.

# %%
t0 = time.perf_counter()
explorer = GuidanceExplorer(model, diffusion, weights=(0.0, 1.0, 3.0), n_per_class=10, n_show=8,
                            sampler="ddim", steps=20, seed=0, classifier=classifier)
sec_explorer = time.perf_counter() - t0
x_w0 = explorer.samples(0.0)                  # [100, 1, 8, 8]: 10 seeds for each digit, class by class
acc_w0 = metrics.sample_accuracy(x_w0, explorer.labels, classifier)
per_class = metrics.per_class_accuracy(x_w0, explorer.labels, classifier)

ax = plots.show_class_grid(x_w0, n_rows=K, title=f"w = 0: {100 * acc_w0:.0f} % classified as their row's digit")
plt.show()
print(f"sampled 3 guidance weights × 100 samples in {sec_explorer:.1f} s")
print("accuracy per digit:", " ".join(f"{c}:{100 * a:.0f}%" for c, a in enumerate(per_class.tolist())))
assert acc_w0 >= 0.9, acc_w0

# %% [markdown]
# Down a column the starting noise is the same, yet every row becomes a different digit: the label, through
# the class bias, steers the whole trajectory. Across a row the noise changes and so does the style (slant,
# thickness, size).
#
# ## 5 · The guidance explorer
#
# Move the slider to change $w$. The grid shows the first 8 seeds of every digit (the same $x_T$ for every $w$,
# so each cell is "the same" sample under more or less guidance); the histogram shows the pixel values of all
# 100 samples; the line underneath gives the fraction of saturated pixels and the class accuracy.
#
# Things to look for: as $w$ grows, the odd, hard-to-read samples turn into clean, "prototypical" digits; the
# seeds of a row look more alike; and more pixels end up at exactly $\pm 1$ (guidance pushes $\hat x_0$ beyond
# the data range, where the sampler clips it). On this small model the changes are modest; at the large $w$ of
# text-to-image models they are strong. Notebook 08 measures this fidelity/diversity trade-off properly and
# shows a fix for the saturation (dynamic thresholding).
#
# *(The widget needs a running kernel: if you only see a text placeholder, run the cell.)*

# %%
explorer


# %% [markdown]
# The same numbers from code: for each $w$ the class accuracy, the fraction of saturated pixels, and a
# **diversity** measure: the mean distance between two samples of the same class in the classifier's feature
# space (relative to $w = 0$).

# %%
def within_class_spread(x, labels):
    # mean pairwise feature distance between samples of the same class
    feats = metrics.extract_features(x, classifier)
    return float(np.mean([torch.pdist(feats[labels == c]).mean().item() for c in range(K)]))

rows = []
for w in explorer.weights:
    x = explorer.samples(w)
    rows.append({"w": w, "accuracy": explorer.accuracy(w), "saturated": float((x.abs() >= 0.999).double().mean()),
                 "spread": within_class_spread(x, explorer.labels)})
for r in rows:
    r["diversity"] = r["spread"] / rows[0]["spread"]
    print(f"w = {r['w']:3.1f} (s = {1 + r['w']:3.1f}): accuracy {100 * r['accuracy']:5.1f} %, "
          f"saturated pixels {100 * r['saturated']:4.1f} %, within-class diversity {r['diversity']:.2f}")
real_digits = load_dataset("digits", "test").tensors[0]
real_saturated = float((real_digits.abs() >= 0.999).double().mean())
print(f"real 8×8 digits: saturated pixels {100 * real_saturated:4.1f} %")
assert rows[-1]["saturated"] > rows[0]["saturated"], rows
assert rows[-1]["diversity"] < rows[0]["diversity"], rows
assert rows[-1]["accuracy"] >= rows[0]["accuracy"] - 0.03, rows


# %% [markdown]
# Guidance raises (or at least keeps) the accuracy while the samples of each class become more alike and a
# little more saturated. Mind the last line, though: *real* 8×8 digits have even more pixels at exactly ±1 than
# any of these samples (the background, and the ink of these coarse digits, sit at the ends of the range), so
# on this data "saturated pixels in the samples" cannot show what guidance costs. Notebook 08 measures the
# saturation where it does show: in the $\hat x_0$ the sampler uses at every step. With an 8×8 model that already follows its labels well at $w = 0$ there is little fidelity left
# to gain; on hard conditioning (text prompts) the gain is dramatic, which is why text-to-image models use
# $w$ of 3 to 10.
#
# ## 6 · The same recipe at 28×28
#
# Nothing above is specific to 8×8 digits. The course also ships a class-conditional model for **28×28 MNIST
# digits** (`mnist5k`: 5,000 real MNIST digits that ship inside a Python package, so this works offline),
# trained by the same `Trainer` with the same label dropout, through the command recorded in
# `assets/checkpoints/mnist5k/README.md` (a 0.69M-parameter U-Net, 55 minutes on a 2-core laptop CPU). It is scored
# by a classifier trained on real 28×28 digits (`metrics` picks the classifier that fits the image size).
# Again one row per digit, every column from the same $x_T$, no guidance ($w = 0$).

# %%
model28, diffusion28 = from_pretrained(REPO / "assets" / "checkpoints" / "mnist5k")
labels28 = torch.arange(10).repeat_interleave(10)         # ten of each digit, class by class
t0 = time.perf_counter()
with torch.no_grad():
    torch.set_num_threads(2)                               # 28×28 convolutions do use two cores
    x_T = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0)).repeat(10, 1, 1, 1)
    x28 = sample(model28, diffusion28, (100, 1, 28, 28), sampler="ddim", steps=20, y=labels28, x_T=x_T)
    torch.set_num_threads(1)
acc28 = metrics.sample_accuracy(x28, labels28)             # the 28×28 classifier (98 % on held-out real digits)
ax = plots.show_class_grid(x28, n_rows=10, size_per_image=0.62,
                           title=f"28×28, w = 0: {100 * acc28:.0f} % classified as their row's digit")
plt.show()
print(f"100 samples, DDIM-20, in {time.perf_counter() - t0:.1f} s; "
      f"{sum(p.numel() for p in model28.parameters()) / 1e6:.2f}M parameters")
assert acc28 >= 0.9, acc28

# %% [markdown]
# ## 7 · Exercises
#
# Each exercise has a code cell to complete and a check that prints **✅ Correct** or tells you what is wrong.
#
# ### Exercise 1 · The guided noise prediction
#
# Write `guided_eps(eps_cond, eps_uncond, w)` that returns classifier-free guidance's $\tilde\varepsilon$ in
# this package's convention ($w = 0$: no guidance). The check compares it with
# `GaussianDiffusion.model_output` for several $w$, and recognises the usual mix-ups (the "guidance scale"
# form, swapped arguments).

# %%
def guided_eps(eps_cond, eps_uncond, w):
    ### BEGIN SOLUTION
    return (1 + w) * eps_cond - w * eps_uncond
    ### END SOLUTION


nb05.check_guided_eps(guided_eps)


# %% [markdown]
# ### Exercise 2 · Label dropout
#
# Write `drop_labels(y, p, num_classes, generator)` as the trainer does it: return a **new** tensor in which
# each label of `y` (a `torch.long` tensor) is replaced by the null class `num_classes` with probability `p`,
# independently, using random numbers drawn from `generator` (so that training is reproducible). Leave the
# input unchanged.
#
# *Hint:* `torch.rand(y.shape, generator=generator) < p` is a mask that is `True` with probability `p`;
# `torch.where(mask, a, b)` picks from `a` where the mask is `True`.

# %%
def drop_labels(y, p, num_classes, generator=None):
    ### BEGIN SOLUTION
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)
    ### END SOLUTION


nb05.check_drop_labels(drop_labels)


# %% [markdown]
# ### Exercise 3 · The conditional training loss, and a model trained with it
#
# Now put label dropout into training. Write `cfg_loss(model, diffusion, x0, y, p_uncond, generator)`: the loss
# of one training step of a class-conditional model that also learns the unconditional $\varepsilon_\theta(x_t, \varnothing)$.
# Replace the labels `y` by the null class `model.num_classes` with probability `p_uncond` (your `drop_labels`),
# then return the **batch mean** of `diffusion.training_losses(model, x0, y=..., generator=generator)["loss"]`:
# that function draws $t$ and $\varepsilon$, forms $x_t$, calls the model once and applies the loss weighting
# (min-SNR-γ, as the course's `Trainer` does). Draw every random number from `generator`, and return a tensor the
# optimiser can call `.backward()` on.
#
# The check watches what your function gives the model (which labels, which timesteps, clean or noisy inputs) and
# recomputes the loss from exactly that. The cell after it then **trains a class-conditional model with your
# loss**: a small MLP on the ring of 8 Gaussians, each Gaussian a class (notebook 02's toy data), about 5 s.

# %%
def cfg_loss(model, diffusion, x0, y, p_uncond, generator=None):
    ### BEGIN SOLUTION
    y_tilde = drop_labels(y, p_uncond, model.num_classes, generator)
    return diffusion.training_losses(model, x0, y=y_tilde, generator=generator)["loss"].mean()
    ### END SOLUTION


nb05.check_cfg_loss(cfg_loss)

# %%
TOY_STEPS = 800                                   # AdamW steps (about 5 s on one core)
ring = toys.GaussianMixture.ring(8, radius=0.7, std=0.07)          # 8 Gaussians; class c = Gaussian c
toy_diffusion = GaussianDiffusion("linear", 1000, min_snr_gamma=5.0)  # the digits model's schedule and weighting
torch.manual_seed(0)
toy = ToyMLP(dim=2, hidden=64, num_classes=8)     # a class embedding added to the time embedding; null class 8
opt = torch.optim.AdamW(toy.parameters(), lr=3e-3)
gen = torch.Generator().manual_seed(0)
t0 = time.perf_counter()
for step in range(TOY_STEPS):
    for group in opt.param_groups:                # a short warm-up, then cosine decay
        group["lr"] = 3e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / TOY_STEPS)))
    x0, c = ring.sample(256, generator=gen, return_labels=True)
    loss = cfg_loss(toy, toy_diffusion, x0, c, 0.1, gen)           # your loss, p_uncond = 0.1
    opt.zero_grad()
    loss.backward()
    opt.step()
toy.eval()
print(f"trained with your cfg_loss: {TOY_STEPS} steps in {time.perf_counter() - t0:.1f} s, last loss {loss.item():.3f}")


# %% [markdown]
# The model is sampled with DDIM (50 steps; notebook 07) through **your** `guided_eps` of exercise 1: at every
# step the denoiser below asks the network for $\varepsilon_\theta(x_t, c)$ and $\varepsilon_\theta(x_t, \varnothing)$
# and combines them with your function. Three runs from the same 800 starting points: the null class
# (unconditional), each class (100 points per class) without guidance, and the same with $w = 3$.

# %%
def guided_denoiser(y, w):
    """(x̂0, ε̂) of the toy model with your guided ε̃ = guided_eps(ε(x_t, c), ε(x_t, ∅), w); x̂0 clipped to [-1, 1]."""
    null = torch.full_like(y, toy.num_classes)

    def denoiser(x, t):
        with torch.no_grad():
            eps = guided_eps(toy(x, t, y), toy(x, t, null), w)
        x0_hat = toy_diffusion.predict_x0_from_eps(x, t, eps).clamp(-1, 1)
        return x0_hat, toy_diffusion.predict_eps_from_x0(x, t, x0_hat)
    return denoiser


x_T_toy = torch.randn(800, 2, generator=torch.Generator().manual_seed(1))
y_each = torch.arange(800) % 8                                      # 100 points asked of each class
toy_runs = {"null class ∅: unconditional": (torch.full((800,), 8), 0.0),
            "each class, w = 0": (y_each, 0.0), "each class, w = 3": (y_each, 3.0)}
toy_samples = {name: ddim(guided_denoiser(y, w), toy_diffusion, x_T_toy, steps=50)
               for name, (y, w) in toy_runs.items()}
mode = {name: torch.cdist(x.double(), ring.means.double()).min(1) for name, x in toy_samples.items()}

fig, axes = plt.subplots(1, 3, figsize=(11, 3.7))
for ax, (name, x) in zip(axes, toy_samples.items()):
    colour = None if name.startswith("null") else toy_runs[name][0]
    plots.plot_2d(x, ax=ax, c=colour, lim=1.1, s=4, title=name, cmap="tab10" if colour is not None else None)
fig.tight_layout()
plt.show()

near = {name: float((m.values < 3 * 0.07).double().mean()) for name, m in mode.items()}
shares = torch.bincount(mode["null class ∅: unconditional"].indices, minlength=8) / 800
at_class = {name: float(((m.indices == y_each) & (m.values < 3 * 0.07)).double().mean())
            for name, m in mode.items() if not name.startswith("null")}


def spread(x):       # RMS distance of a class's points to their own centre, averaged over the classes
    return float(np.mean([(x[y_each == k] - x[y_each == k].mean(0)).norm(dim=1).pow(2).mean().sqrt().item()
                          for k in range(8)]))


package = sample_points(toy, toy_diffusion, x_T_toy, "ddim", 50, y=y_each, guidance=3.0, threshold="static")
gap = float((package - toy_samples["each class, w = 3"]).abs().max())
print(f"null class: share of points per Gaussian {[round(v, 2) for v in shares.tolist()]}, "
      f"{near['null class ∅: unconditional']:.0%} within 3σ of a mean (the data: 98.9 %)")
for name, v in at_class.items():
    x = toy_samples[name]
    print(f"{name}: {v:.1%} land on the Gaussian of their class; spread within a class {spread(x):.3f} "
          f"(the data: {0.07 * 2 ** 0.5:.3f}), mean distance from the centre {x.norm(dim=1).mean():.2f} (ring: 0.70)")
print(f"your guided sampler vs the package's (model_output with guidance=3): max |difference| = {gap:.1e}")
w0, w3 = toy_samples["each class, w = 0"], toy_samples["each class, w = 3"]
assert shares.min() > 0.07 and all(v > 0.95 for v in at_class.values()), (shares, at_class)
assert near["null class ∅: unconditional"] < min(at_class.values()) and gap < 1e-4, (near, gap)
assert spread(w3) < 0.5 * spread(w0) and w3.norm(dim=1).mean() > w0.norm(dim=1).mean(), (spread(w0), spread(w3))

# %% [markdown]
# One network, one training run, two models. Asked for a class, the model puts its points on that class's
# Gaussian. Asked for the null class, it draws from all eight, in about equal shares: the unconditional model
# exists only because your loss sent 10 % of the labels to $\varnothing$. It is also much blurrier, its points
# filling the disc inside the ring. Its task is the harder one (which of eight Gaussians, and where), and it
# saw a tenth of the examples; the conditional model only has to place a point within one Gaussian. A small
# network trained for a few seconds shows that gap plainly.
#
# Guidance with $w = 3$ keeps every point on its class and does something else: the points of a class huddle
# together (the spread within a class drops to a fraction of the data's) and move outwards, away from the other
# classes, where $p(c \mid x)$ is highest. That is the fidelity-for-diversity trade of section 5, taken far on easy
# data. Notebook 08 measures it properly.

# %%
print(f"notebook run time: {time.perf_counter() - NOTEBOOK_START:.0f} s")

# %% [markdown]
# ## Summary
#
# * A class-conditional diffusion model only needs the label as an extra input. Here a learned vector $E_c$ per
#   class is added to the time embedding, so in every residual block the class acts as a learned per-channel
#   **class bias**, which also depends on $t$. The label matters most at large $t$, where the image itself
#   carries no information.
# * **Label dropout** (label → null class $\varnothing$ with probability 0.1 during training) makes the same
#   network an unconditional model $\varepsilon_\theta(x_t, \varnothing)$ as well: sampled with the null label it
#   draws all ten digits.
# * **Classifier-free guidance** $\tilde\varepsilon = (1 + w)\,\varepsilon_\theta(x_t, c) - w\,\varepsilon_\theta(x_t, \varnothing)$
#   follows the score of $p(x_t \mid c)\,p(c \mid x_t)^w$ without any classifier. In `ddpm_lite` $w = 0$ is the
#   plain conditional model; other libraries' guidance scale is $s = 1 + w$.
# * Measured with a classifier trained on real digits: the conditional samples at $w = 0$ have the class
#   accuracy asserted above (at least 90 %); guidance raises it further while making the samples of a class
#   more alike (less diverse) and a little more saturated.
# * Built by you: the guided $\tilde\varepsilon$, label dropout and the conditional training loss are enough to
#   train a class-conditional model (2D, a few seconds) that is also an unconditional one, and to sample it with
#   guidance, matching the package's sampler.
#
# ## What comes next
#
# **05 · Watching a model sample** opens the sampler up: ancestral sampling step by step, the noisy $x_t$ next to
# the model's guess $\hat x_0$ at every step, a scrubber widget over the whole reverse process, particle
# trajectories in 2D, DDPM against DDIM, and seeds. **07 · Guidance** returns to $w$ and measures the
# fidelity/diversity trade-off, with Imagen's dynamic thresholding.
#
# **References.** J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, NeurIPS 2021 Workshop on Deep
# Generative Models (arXiv:2207.12598, 2022). P. Dhariwal, A. Nichol, *Diffusion Models Beat GANs on Image
# Synthesis*, NeurIPS 2021 (class embeddings, classifier guidance). J. Ho, A. Jain, P. Abbeel, *Denoising
# Diffusion Probabilistic Models*, NeurIPS 2020.
