# %% [markdown]
# # 12 · DreamBooth: teaching the text-to-image model one subject
#
# Notebook 11's mini Stable Diffusion draws any digit it was taught the words for. **DreamBooth** (Ruiz et al.
# 2023) asks for something it was never taught: *this particular* thing, shown in 3–5 pictures. It binds the
# subject to a new word, an **identifier** [V], by fine-tuning the model on the pictures with the prompt
# "a [V] seven", and a **prior-preservation loss** keeps the model from forgetting what an ordinary seven is.
# On a GPU this takes a 14 GB model and minutes; here the whole recipe runs on the 1.75M-parameter mini-SD in
# seconds on a laptop CPU, so we can watch it go wrong as well as right.
#
# **What you will learn**
#
# * what a **subject** is, and how to check that the training data never showed it;
# * why the identifier must be a word with a **weak prior** (a rare token), not a word the model already uses;
# * the **prior-preservation loss** of eq. 2 (you write it) and the **class-image set** it needs (you build it);
#   both are then used by the fine-tuning below;
# * **language drift** (predict it first): fine-tuning without prior preservation turns every "a seven" into the
#   subject; with it,
#   the class survives. Measured: accuracy, Fréchet distance, diversity, distance to the subject;
# * **overfitting**: the longer it trains, the more [V] looks like the subject and the less it obeys other words;
# * **textual inversion**, the cheap alternative that trains one embedding row, and what it cannot do;
# * a prompt box with the personalised model.
#
# *Run time: about a minute and a half on a 2-core laptop CPU, nearly all of it three live fine-tuning runs.*
#
# ## The ideas in equations
#
# **The data.** A few images $x^{(1)}, \dots, x^{(N)}$ of the subject, $N = 3..5$, with one prompt
# $c$ = "a [V] seven"; and $M$ **class images** $x_{\text{pr}}$ that the *frozen* model drew for the class prompt
# $c_{\text{pr}}$ = "a seven" before fine-tuning started.
#
# **The loss** (Ruiz et al. 2023, eq. 2; written there for a model $\hat x_\theta$ predicting the clean image):
#
# $$
# \mathbb E_{x, c, \varepsilon, \varepsilon', t}\Big[\, w_t\, \big\|\hat x_\theta(\alpha_t x + \sigma_t \varepsilon,\, c) - x\big\|_2^2
# \;+\; \lambda\, w_{t'}\, \big\|\hat x_\theta(\alpha_{t'} x_{\text{pr}} + \sigma_{t'} \varepsilon',\, c_{\text{pr}}) - x_{\text{pr}}\big\|_2^2 \,\Big].
# $$
#
# The first term is ordinary diffusion training on the subject images under the new prompt. The second is the same
# loss on the class images under the class prompt, with its own timestep $t'$ and noise $\varepsilon'$: since the
# model already predicts those images well, it pulls the weights back whenever fine-tuning starts to change what
# "a seven" means. Our model predicts $\varepsilon$ and weighs timesteps by min-SNR-5, so each term is simply its
# training loss, `diffusion.training_losses(...)["loss"]`, averaged over its batch; $\lambda = 1$ as in the paper.
#
# **The identifier.** A prompt is read through a frozen text encoder, so a word means whatever its embedding row
# makes the encoder output. A common word ("thick") already moves the image a lot: binding the subject to it
# must overwrite that meaning and damages every prompt that uses it. A **rare token** has a weak prior: the
# model barely reacts to it, so the fine-tuning is free to give it the subject. Our text encoder has a closed
# vocabulary of 43 words, so we add one, "sks", whose embedding starts as the row of `<unk>`, the token no
# training caption ever contained.

# %%
# Settings. Mini-SD ships with the course (assets/checkpoints/mnist5k-sd); the subject too (assets/subjects).
SD_CHECKPOINT = "assets/checkpoints/mnist5k-sd"
SUBJECT = "assets/subjects/hollow-seven"  # four pictures of one person's bubble-letter seven (README there)
IDENTIFIER = "sks"       # the rare token [V]
CLASS_NOUN = "seven"     # the subject's class, as the prompts say it
STEPS = 120              # fine-tuning steps per run (about 15 s with prior preservation here). GPU: 1000
LR = 2e-4                # AdamW learning rate for the U-Net weights (the paper: 5e-6 for Stable Diffusion)
PRIOR_WEIGHT = 1.0       # λ of eq. 2
NUM_CLASS_IMAGES = 100   # class images for the prior loss (the paper: about 1000). GPU: 1000
SNAPSHOTS = (40, 80, 120)  # section 5: measure the fine-tuning run at these steps (and before it)
TI_STEPS = 120           # section 6: textual-inversion steps (one embedding row, lr 5e-2)
EVAL_N = 40              # images per prompt for the measurements. GPU: 1000
GUIDANCE = 3.0           # classifier-free guidance weight for every sample
SEED = 0

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lite import metrics, plots
from ddpm_lite import personalize as db
from ddpm_lite.data import load_dataset
from ddpm_lite.exercises import nb12
from ddpm_lite.pipeline import TextToImage
from ddpm_lite.subjects import load_subject, novelty
from ddpm_lite.text_to_image import measured_value
from ddpm_lite.widgets import PromptExplorer

plots.setup()
torch.set_num_threads(2)       # two threads: 15–30 % faster than one on a 2-core CPU
NOTEBOOK_START = time.perf_counter()

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
sd = TextToImage.from_pretrained(REPO / SD_CHECKPOINT)        # the frozen model: text encoder + U-Net + autoencoder
subject = load_subject(REPO / SUBJECT)                        # [4, 1, 28, 28] in [-1, 1]
classifier = metrics.load_classifier("mnist5k")               # a CNN trained on real 28×28 digits: our judge
train_images = load_dataset("mnist5k", "train").tensors[0]
held_out = load_dataset("mnist5k", "test").tensors[0]
print(sd)
print(f"subject: {tuple(subject.shape)}; U-Net parameters: {sum(p.numel() for p in sd.model.parameters()) / 1e6:.2f}M")


def draw(pipe, prompt, n=EVAL_N, seed=1):
    """n images of one prompt; the same seed gives every model the same starting noise."""
    with torch.no_grad():
        return pipe([prompt] * n, guidance=GUIDANCE, steps=20, generator=torch.Generator().manual_seed(seed))

# %% [markdown]
# ## 1 · The subject, and a check that the model never saw it
#
# Our subject is one person's seven, drawn four times, in hollow "bubble" strokes: four neighbouring sevens of
# the *test* split, outlined (`ddpm_lite.subjects`; `assets/subjects/hollow-seven/README.md` has the command).
# A subject must be something the model cannot already draw on request. The check is notebook 07's memorisation
# test turned around: how far is each subject image from its nearest training image, compared with how far new,
# held-out real digits are from theirs?

# %%
nv = novelty(subject, train_images, held_out, classifier)
fig, axes = plt.subplots(2, 4, figsize=(6, 3.2))
for i in range(4):
    axes[0, i].imshow(subject[i, 0], cmap="gray", vmin=-1, vmax=1)
    axes[0, i].set_title(f"subject {i}", fontsize=9)
    axes[1, i].imshow(train_images[nv.nearest[i], 0], cmap="gray", vmin=-1, vmax=1)
    axes[1, i].set_title(f"nearest: {nv.pixel[i]:.1f}", fontsize=9)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle("the subject (top) and its nearest training digit (bottom, pixel distance)", fontsize=10)
plt.show()
print("farther from the training data than this share of held-out real digits:")
print("  in pixels:           ", [f"{p:.3f}" for p in nv.pixel_percentile.tolist()])
print("  in classifier space: ", [f"{p:.3f}" for p in nv.feature_percentile.tolist()])
print("the classifier reads the subject as:", metrics.classify(subject, classifier).tolist())
assert (nv.pixel_percentile >= 0.98).all() and (nv.feature_percentile >= 0.99).all()

# %% [markdown]
# Every subject image lies farther from the training set than 98% of new real digits do (99% in the
# classifier's features), and its nearest training images are ordinary filled sevens. The classifier, trained on
# the same data, reads three of the four as nines: nothing like them was in its training set either.
#
# ## 2 · The identifier: a word with a weak prior
#
# `with_tokens` returns a copy of the frozen text encoder that knows one more word. Before any fine-tuning, how
# much does each word change what the model draws? Compare "a [V] seven" and "a thick seven" with "a seven"
# (same starting noise), by the Fréchet distance of their classifier features.

# %%
encoder_v = sd.text_encoder.with_tokens([IDENTIFIER])   # "sks" starts as <unk>'s row
with_v = TextToImage(sd.model, sd.diffusion, encoder_v, sd.autoencoder, name="mini-SD + [V]")
plain = draw(sd, f"a {CLASS_NOUN}")
prior_fd = {word: metrics.feature_frechet_distance(draw(with_v, f"a {word} {CLASS_NOUN}"), plain, classifier)
            for word in (IDENTIFIER, "thick")}
print(f"FD to 'a {CLASS_NOUN}' before fine-tuning: " + ", ".join(f"'{w}' {v:.2f}" for w, v in prior_fd.items()))
assert prior_fd[IDENTIFIER] < prior_fd["thick"]

# %% [markdown]
# "sks" barely moves the samples (a weak prior), "thick" moves them a lot (a strong one). Fine-tuning on
# "a thick seven" would have to undo that meaning, and every other prompt with "thick" would drift with it; the
# benchmark (`benchmarks/dreambooth.py`) measures exactly that: with the subject bound to "thick" instead of
# "sks" (same recipe, 120 steps), the samples of "a thick two" move four times as far from what they were (FD 67
# against 15) and those of "a two" three and a half times as far (22 against 6).
#
# ### Exercise 1 · the prior-preservation loss
#
# Write `dreambooth_loss(model, diffusion, x, c, x_pr, c_pr, lam, t, noise, t_pr, noise_pr)`: `x` are subject
# images (latents) with the instance prompt's `TextCondition` `c`, `x_pr` class images with the class prompt's
# `c_pr`; `t, noise` and `t_pr, noise_pr` are the timesteps and noise of each batch. Return one number, eq. 2:
# the mean training loss of the first batch plus `lam` times that of the second. The training loss of a batch,
# per image and with the model's min-SNR weights, is `diffusion.training_losses(model, x, t=t, noise=noise, y=c)["loss"]`.

# %%
def dreambooth_loss(model, diffusion, x, c, x_pr, c_pr, lam, t, noise, t_pr, noise_pr):
    ### BEGIN SOLUTION
    subject_term = diffusion.training_losses(model, x, t=t, noise=noise, y=c)["loss"].mean()
    prior_term = diffusion.training_losses(model, x_pr, t=t_pr, noise=noise_pr, y=c_pr)["loss"].mean()
    return subject_term + lam * prior_term
    ### END SOLUTION


nb12.check_prior_preservation_loss(dreambooth_loss)

# %% [markdown]
# ### Exercise 2 · the class-image set
#
# Write `class_images(pipe, class_noun, n, generator)`: `n` samples of the **frozen** pipeline for the class
# prompt "a seven", kept in the space the U-Net denoises (`pipe.sample_base` returns the 4×7×7 latents before the
# decoder; use guidance 3 and 20 steps). The check decodes and classifies them. The notebook then builds the
# prior-preservation set with your function.

# %%
def class_images(pipe, class_noun, n, generator):
    ### BEGIN SOLUTION
    return pipe.sample_base([f"a {class_noun}"] * n, guidance=3.0, steps=20, generator=generator)
    ### END SOLUTION


examples = nb12.check_class_images(class_images, sd, classifier, subject)
class_set = class_images(sd, CLASS_NOUN, NUM_CLASS_IMAGES, torch.Generator().manual_seed(SEED))
print(f"prior-preservation set: {tuple(class_set.shape)} latents")
plots.show_images(examples, nrow=8, title="class images (decoded): what the frozen model means by 'a seven'")
plt.show()

# %%
def evaluate(pipe, knows_v=True):
    """The measurements of section 4's table (and the samples to show)."""
    sevens, twos = draw(pipe, f"a {CLASS_NOUN}"), draw(pipe, "a two", n=EVAL_N // 2)
    row = {"'a seven' accuracy": metrics.sample_accuracy(sevens, torch.full((EVAL_N,), 7), classifier),
           "'a seven' FD to before": metrics.feature_frechet_distance(sevens, plain, classifier),
           "'a seven' diversity": db.diversity(sevens, classifier),
           "'a seven' subject distance": float(db.feature_distance(sevens, subject, classifier).mean()),
           "'a two' accuracy": metrics.sample_accuracy(twos, torch.full((EVAL_N // 2,), 2), classifier),
           "'a two' FD to before": metrics.feature_frechet_distance(twos, twos_before, classifier)}
    v = None
    if knows_v:
        v = draw(pipe, f"a {IDENTIFIER} {CLASS_NOUN}")
        row["'a [V] seven' subject distance"] = float(db.feature_distance(v, subject, classifier).mean())
        row["'a [V] seven' diversity"] = db.diversity(v, classifier)
    return row, (v, sevens)


def show_run(samples, title_class):
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    plots.show_images(subject, nrow=2, title="the subject", ax=axes[0])
    plots.show_images(samples[0][:16], nrow=4, title=f"'a {IDENTIFIER} {CLASS_NOUN}'", ax=axes[1])
    plots.show_images(samples[1][:16], nrow=4, title=title_class, ax=axes[2])
    plt.show()


twos_before = draw(sd, "a two", n=EVAL_N // 2)
results = {"before": evaluate(sd, knows_v=False)[0]}

# %% [markdown]
# ## 3 · Fine-tuning without prior preservation: language drift
#
# First the naive recipe: all U-Net weights, the four subject images, the prompt "a sks seven", and no class
# images (λ = 0: the subject term of your loss alone).
#
# **Predict, then run.** The model is trained only on "a sks seven". Afterwards, what share of its samples for
# "a seven" will the classifier still read as a seven? (a) about all of them: that prompt was never trained;
# (b) some of them, 40% to 90%; (c) few of them, under 40%. Commit to an answer before running the next cells.

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "c"
### END SOLUTION
nb12.commit_drift_prediction(prediction)

# %%
torch.set_grad_enabled(True)
naive = db.dreambooth(sd, subject, identifier=IDENTIFIER, class_noun=CLASS_NOUN, steps=STEPS, lr=LR,
                      prior_weight=0.0, seed=SEED)
print(f"{STEPS} steps without prior preservation: {naive.seconds:.1f} s")
results["no prior (λ = 0)"], shown = evaluate(naive.pipe)
show_run(shown, "'a seven' (!)")
nb12.reveal_drift(prediction, results["no prior (λ = 0)"]["'a seven' accuracy"])

# %% [markdown]
# The model learned the subject, and forgot the class: "a seven", a prompt it never saw during fine-tuning,
# now draws the hollow seven too. The identifier had a weak prior, so the easiest way for the model to fit the
# four images was to change what "seven" means. This is **language drift** (Ruiz et al. §3.3).
#
# ## 4 · With prior preservation
#
# The same run with λ = 1, your loss function and the class set you built: each step also trains on 8 class
# images with "a seven". The callback takes snapshots for section 5.

# %%
snapshots = {}


def measure(step, pipe):
    """Section 5's overfitting curve: at a few steps, distance of [V] samples to the subject and whether "small"
    and "shifted to the left" are still obeyed."""
    if step not in (0, *SNAPSHOTS):
        return
    v = draw(pipe, f"a {IDENTIFIER} {CLASS_NOUN}", n=12, seed=2)
    small = draw(pipe, f"a small {IDENTIFIER} {CLASS_NOUN}", n=12, seed=3)
    left = draw(pipe, f"a {IDENTIFIER} {CLASS_NOUN}, shifted to the left", n=12, seed=4)
    snapshots[step] = {"subject distance": float(db.feature_distance(v, subject, classifier).mean()),
                       "'small' obeyed": float(measured_value(small, "size", {}).float().mean()),
                       "'left' obeyed": float(1 - measured_value(left, "position", {}).float().mean())}


measure(0, with_v)  # before fine-tuning, with the new word
booth = db.dreambooth(sd, subject, identifier=IDENTIFIER, class_noun=CLASS_NOUN, steps=STEPS, lr=LR,
                      prior_weight=PRIOR_WEIGHT, class_set=class_set, seed=SEED, loss_fn=dreambooth_loss,
                      callback=measure)
print(f"{STEPS} steps with prior preservation: {booth.seconds:.1f} s (snapshots included)")
results["DreamBooth (λ = 1)"], shown = evaluate(booth.pipe)
show_run(shown, "'a seven'")

# %% [markdown]
# Now "a sks seven" draws the subject and "a seven" stays an ordinary seven. The numbers, for the model before
# fine-tuning, after the naive run and after DreamBooth (same starting noise for all three), measured by
# `evaluate` above:
#
# * **class accuracy** of "a seven" samples (the classifier reads a hollow seven as a nine, so drift shows here),
#   their **FD** to the samples of the model before fine-tuning, and their **diversity** (mean pairwise feature
#   distance);
# * **subject distance**: mean feature distance of the samples to the four subject images (lower = more like the
#   subject), for "a [V] seven" and for "a seven";
# * the same accuracy and FD for **another digit**, "a two", which no loss term protects.

# %%
print(f"{'':32s}" + "".join(f"{name:>20s}" for name in results))
for k in results["DreamBooth (λ = 1)"]:
    print(f"{k:32s}" + "".join(f"{r[k]:20.3f}" if k in r else f"{'-':>20s}" for r in results.values()))

before, naive_r, booth_r = results.values()
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
names, colours = list(results), ["0.6", "C3", "C0"]
for ax, key, label in ((axes[0], "'a seven' accuracy", "'a seven' read as a seven"),
                       (axes[1], "'a seven' FD to before", "'a seven': FD to before (log)"),
                       (axes[2], "'a seven' subject distance", "'a seven': distance to the subject")):
    keep = [1, 2] if "FD" in key else [0, 1, 2]  # FD to "before" is 0 for "before" itself
    ax.bar(range(len(keep)), [list(results.values())[i][key] for i in keep], color=[colours[i] for i in keep])
    ax.set_xticks(range(len(keep)), [["before", "λ = 0", "λ = 1"][i] for i in keep])
    ax.set_title(label, fontsize=10)
    if "FD" in key:
        ax.set_yscale("log")
fig.suptitle("what fine-tuning did to the class prompt: without prior preservation (λ = 0) and with it",
             fontsize=10, y=1.04)
plt.show()
assert booth_r["'a seven' accuracy"] >= 0.9                                      # the class survives...
assert booth_r["'a seven' FD to before"] < 0.2 * naive_r["'a seven' FD to before"]  # ...much closer to what it was
assert naive_r["'a seven' accuracy"] < booth_r["'a seven' accuracy"] - 0.2 or \
    naive_r["'a seven' FD to before"] > 10 * booth_r["'a seven' FD to before"]  # without it: measurably worse
assert booth_r["'a [V] seven' subject distance"] < 0.6 * before["'a seven' subject distance"]  # [V] is the subject

# %% [markdown]
# Read the table row by row. Without prior preservation "a seven" loses most of its accuracy, its FD to the
# model's own earlier samples jumps by two orders of magnitude and its samples sit as close to the subject as the
# [V] samples do: the class *became* the subject. With λ = 1 the class keeps its accuracy and lands close to
# where it was, while "a [V] seven" gets nearly as close to the subject as in the naive run, and more varied
# (the naive run draws one hollow seven over and over). Prior preservation protects what it trains on,
# "a seven", and little else: "a two" drifts in both runs (the loss never shows the model a two), which is why
# the paper's class set is large and its steps few.
#
# ## 5 · Overfitting: fidelity against obedience
#
# The snapshots taken during the DreamBooth run: the distance of "a [V] seven" samples to the subject, and
# whether the model still draws "a small [V] seven" small and "a [V] seven, shifted to the left" on the left.

# %%
steps = sorted(snapshots)
fig, ax1 = plt.subplots(figsize=(6, 3.2))
ax1.plot(steps, [snapshots[s]["subject distance"] for s in steps], "o-", color="C0", label="subject distance")
ax1.axhline(before["'a seven' subject distance"], color="C0", ls=":", label="ordinary sevens")
ax1.set_xlabel("fine-tuning step")
ax1.set_ylabel("feature distance to the subject", color="C0")
ax2 = ax1.twinx()
for key, colour in (("'small' obeyed", "C1"), ("'left' obeyed", "C2")):
    ax2.plot(steps, [snapshots[s][key] for s in steps], "s--", color=colour, label=key)
ax2.set_ylim(-0.05, 1.05)
ax2.set_ylabel("share of samples obeying")
fig.legend(loc="upper right", fontsize=8, bbox_to_anchor=(0.88, 0.88))
ax1.set_title("the longer it trains, the more [V] is the subject and the less it obeys 'small'", fontsize=10)
plt.show()
for s in steps:
    print(s, {k: round(v, 2) for k, v in snapshots[s].items()})
assert snapshots[steps[-1]]["subject distance"] < snapshots[steps[0]]["subject distance"]
assert snapshots[steps[-1]]["'small' obeyed"] < snapshots[steps[0]]["'small' obeyed"]

# %% [markdown]
# Four images, all the same size and position, are a very narrow picture of the subject. As the model fits them
# better, "small" stops working with [V] (before fine-tuning, "a small [V] seven" came out small every time),
# while "shifted to the left" keeps working. (At this scale the curve is noisy: the benchmark, with 100 samples
# per point, sees "small" obeyed 0.59, 0.52, 0.33, 0.24 at steps 40–200 and then 0.70 again at 300.) The paper sees the same trade-off (its Fig. 7 and §4.3: more steps, more fidelity,
# less diversity and less obedience to the prompt) and stops at about 1000 steps for a model 500 times bigger.
# Early stopping is the main knob; the subject's pictures in several poses are the other.
#
# ## 6 · Textual inversion: train one row
#
# Gal et al. (2023) keep the *whole* model frozen and train only the identifier's embedding: 128 numbers instead
# of 1.75 million, and nothing else can drift. The gradient still flows through the U-Net and the text encoder to
# that one row.

# %%
ti = db.dreambooth(sd, subject, identifier=IDENTIFIER, class_noun=CLASS_NOUN, steps=TI_STEPS, lr=5e-2,
                   prior_weight=0.0, train="embedding", seed=SEED)
torch.set_grad_enabled(False)
ti_v = draw(ti.pipe, f"a {IDENTIFIER} {CLASS_NOUN}", n=EVAL_N)
ti_dist = float(db.feature_distance(ti_v, subject, classifier).mean())
ti_fd = metrics.feature_frechet_distance(draw(ti.pipe, f"a {CLASS_NOUN}"), plain, classifier)
print(f"textual inversion, {TI_STEPS} steps in {ti.seconds:.1f} s: subject distance {ti_dist:.2f} (DreamBooth "
      f"{booth_r[chr(39) + 'a [V] seven' + chr(39) + ' subject distance']:.2f}, ordinary sevens "
      f"{before[chr(39) + 'a seven' + chr(39) + ' subject distance']:.2f}); 'a seven' FD to before: {ti_fd:.3f}")
plots.show_images(ti_v[:16], nrow=8, title="textual inversion: 'a sks seven'")
plt.show()
assert ti_fd < 1e-6                                                     # nothing else changed, exactly
assert ti_dist > booth_r["'a [V] seven' subject distance"]                 # but it gets less close

# %% [markdown]
# Textual inversion changes nothing else, exactly (FD 0: "a seven" is computed by the same weights), but it
# gets only part of the way to the subject: it can only *find* a point in the text encoder's input space whose
# images look most like the subject, among the images the frozen U-Net can already draw. The hollow stroke is
# new to the U-Net; no word makes it draw one. DreamBooth changes the U-Net, so it can. (The third option in
# `ddpm_lite.personalize`, `train="cross_attention"`, trains only the keys and values of the cross-attention
# layers, as Custom Diffusion does; on this small model it learns the subject less well than DreamBooth and still
# moves "a seven": `benchmarks/dreambooth.py` has the numbers.)
#
# ## 7 · What it costs at full scale
#
# Ruiz et al. fine-tune Imagen or Stable Diffusion for about 1000 steps at learning rate $10^{-5}$ (Imagen) or
# $5 \cdot 10^{-6}$ (Stable Diffusion), with λ = 1 and about 1000 class images generated first, in about five
# minutes on one accelerator (a TPUv4 for Imagen); every weight of a model with about a billion parameters is
# copied per subject.
# Here: 120 steps on a 1.75M-parameter U-Net, 100 class images, about 15–25 seconds on two CPU cores. The
# personalised model is an ordinary checkpoint; the command line does the same as this notebook:
#
# ```bash
# python -m ddpm_lite dreambooth --checkpoint assets/checkpoints/mnist5k-sd --subject assets/subjects/hollow-seven \
#     --identifier sks --class-noun seven --steps 120 --out runs/sks-seven
# python -m ddpm_lite sample --checkpoint runs/sks-seven --prompt "a sks seven" --prompt "a seven" --n 16 --guidance 3
# ```
#
# ## 8 · A prompt box with the personalised model
#
# The DreamBooth model knows one more word. Try "a sks seven" with the other words: "thick", "slanted to the
# left", "shifted to the right", "upside-down" (a combination the base model never learned for sevens), or
# "a sks two" (does the subject's style carry over to another digit?).

# %%
explorer = PromptExplorer(booth.pipe, prompt=f"a {IDENTIFIER} {CLASS_NOUN}, shifted to the right", n=4,
                          guidance=GUIDANCE, steps=15)
explorer

# %% [markdown]
# ## Summary
#
# * **DreamBooth** fine-tunes a text-to-image model on 3–5 images of a subject with the prompt "a [V] class",
#   where [V] is a word with a **weak prior** (here a new token initialised from `<unk>`): the model binds the
#   subject to the identifier instead of overwriting a word it already uses.
# * Alone, that fine-tuning causes **language drift**: the class word itself turns into the subject. The
#   **prior-preservation loss** trains on the frozen model's own samples of "a class" at the same time,
#   $L = L_{\text{subject}} + \lambda L_{\text{prior}}$; with λ = 1 "a seven" keeps its accuracy and stays
#   close to what it was, while "a [V] seven" becomes the subject.
# * It protects the class prompt, not everything: other prompts drift a little, and with more steps [V] fits the
#   four pictures better and obeys other words ("small") less: **overfitting**, controlled by the step count.
# * **Textual inversion** trains only the identifier's embedding: nothing else changes, but it can only find
#   what the frozen model can already draw.
#
# ## What comes next
#
# This is the last notebook of the survey: from the forward process of notebook 01 to a personalised
# text-to-image model, every piece was built and trained in this course's package. The course's README lists
# where to go from here: the same notebooks on MNIST and CIFAR-10 with a GPU (`CONFIG` cells), and the papers.
#
# **References.** N. Ruiz et al., *DreamBooth: Fine Tuning Text-to-Image Diffusion Models for Subject-Driven
# Generation*, CVPR 2023 (eq. 2, §3.2 rare-token identifiers, §3.3 prior preservation and language drift).
# R. Gal et al., *An Image is Worth One Word: Personalizing Text-to-Image Generation using Textual Inversion*,
# ICLR 2023. N. Kumari et al., *Multi-Concept Customization of Text-to-Image Diffusion* (Custom Diffusion), CVPR
# 2023. R. Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, CVPR 2022.
# T. Hang et al., *Efficient Diffusion Training via Min-SNR Weighting Strategy*, ICCV 2023.

# %%
elapsed = time.perf_counter() - NOTEBOOK_START
print(f"notebook run time: {elapsed:.0f} s")
