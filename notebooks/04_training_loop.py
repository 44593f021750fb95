# %% [markdown]
# # 04 · The training loop
#
# Notebook 02 derived the objective: a network $\varepsilon_\theta(x_t, t)$ learns to tell which noise
# $\varepsilon$ was mixed into a clean image $x_0$; notebook 03 took that network, a U-Net, apart. This notebook
# is about *training* it: the training loop, written
# out by hand once and then run for real with `ddpm_lite`'s `Trainer`, and the practical machinery every
# diffusion codebase has around that loop: an exponential moving average of the weights, checkpoints you can
# load and resume, and a few well-known ways to get it wrong.
#
# **What you will learn**
#
# * the eight steps of a DDPM training step, and how they map onto Algorithm 1 of Ho et al. (2020). You
#   **write the training step yourself** (Exercise 1), and the notebook's first training loop runs with it;
# * a **predict-then-run** question before the real run: where does the logged loss of an untrained network start?
# * how to run a real training with `Trainer(TrainConfig(...))`, watch it live and read the loss curve (which
#   is the min-SNR-γ-weighted ε-loss of notebook 02 §6b, not $L_\text{simple}$);
# * why samples come from an **EMA** of the weights, and what the EMA buys on a short and a long run;
# * how to **save**, **load** and **resume** a run, and how to check that nothing was lost on the way;
# * three classic failures, shown on purpose so you recognise them: data outside $[-1, 1]$, too few
#   diffusion steps $T$, and an EMA that still remembers the random initialisation.
#
# *Run time: about a minute on an idle 2-core laptop CPU, 25 s of it the training run (up to two minutes on a
# busy one).*

# %% [markdown]
# ## Configuration
#
# The notebook trains one small model for `MAX_SECONDS` seconds; everything else reuses that run or the course's
# pretrained digits model (`assets/checkpoints/digits`), so it stays short.
#
# **To scale up:** on a GPU set `DATASET = "mnist"` (the 28×28 MNIST digits: torchvision downloads them once,
# or place the files where the error message says), keep `PRESET = "auto"` (it picks the `"mnist"` U-Net
# preset, or write `"mnist"` yourself) and give it `MAX_SECONDS = 600` or more. On an H100-class GPU MNIST then
# takes a few minutes to produce clean digits. The command line does the same without a notebook:
# `python -m ddpm_lite train --dataset mnist --preset mnist --max-seconds 600 --out runs/mnist`.

# %%
DATASET = "digits"     # "digits" (8×8, bundled, offline) | "mnist" | "fashion_mnist" (28×28, via torchvision)
DEVICE = "auto"        # "auto" = cuda > mps > cpu
PRESET = "auto"        # U-Net preset: "auto" = the dataset's own ("digits" / "mnist"); see ddpm_lite.unet.PRESETS
MAX_SECONDS = 25       # length of the main training run; the whole notebook takes ≈ MAX_SECONDS + 40 s on 2 CPU cores
OUT_DIR = None         # None = a temporary folder; e.g. "runs/nb04" to keep the checkpoint afterwards

# %%
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from ddpm_lite import metrics, plots, samplers
from ddpm_lite.checkpoint import from_pretrained, load_config, model_from_config
from ddpm_lite.data import load_dataset
from ddpm_lite.device import pick_device
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.ema import EMA
from ddpm_lite.exercises import nb04
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import TrainConfig, Trainer
from ddpm_lite.unet import unet_preset

NOTEBOOK_START = time.perf_counter()
plots.setup()
torch.set_num_threads(1)   # small tensors: one thread is fastest on a busy 2-core CPU; raise it on an idle big machine
REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
REFERENCE = REPO / "assets" / "checkpoints" / "digits"   # the course's pretrained class-conditional digits model
device = pick_device(DEVICE)
classifier = metrics.load_classifier("digits", device=device)   # judges 8×8 digit samples (99 % on real ones)
print(f"device: {device}, torch {torch.__version__}")

# %% [markdown]
# ## 1 · The recipe, by hand
#
# Algorithm 1 of Ho et al. (2020) is the whole training procedure of a DDPM:
#
# $$
# \begin{array}{ll}
# \hline
# \textbf{Algorithm 1} & \text{Training} \\
# \hline
# 1: & \textbf{repeat} \\
# 2: & \quad x_0 \sim q(x_0) \\
# 3: & \quad t \sim \mathrm{Uniform}(\{1, \dots, T\}) \\
# 4: & \quad \varepsilon \sim \mathcal N(0, I) \\
# 5: & \quad \text{Take a gradient descent step on } \nabla_\theta \big\lVert \varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big) \big\rVert^2 \\
# 6: & \textbf{until } \text{converged} \\
# \hline
# \end{array}
# $$
#
# Spelled out as a recipe, a training program does eight things:
#
# | step | what | `ddpm_lite` |
# |---|---|---|
# | 1 | fix the forward schedule $\beta_t$, $\bar\alpha_t = \prod_{s \le t}(1-\beta_s)$ | `GaussianDiffusion("linear", 1000)` |
# | 2 | choose the loss: here $L_\text{simple}$, the mean squared error on $\varepsilon$ (eq. 14); the `Trainer` of §2 weights it per step | `loss_type="l2"`, `min_snr_gamma` |
# | 3 | draw a batch $x_0$, timesteps $t$ and noise $\varepsilon \sim \mathcal N(0, I)$ | `sample_timesteps`, `torch.randn` |
# | 4 | perturb $x_0 \to x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ (eq. 4) | `q_sample(x0, t, noise)` |
# | 5 | let the model predict the noise, $\hat\varepsilon = \varepsilon_\theta(x_t, t)$ | `model(x_t, t, y)` |
# | 6 | compute the loss $\lVert \varepsilon - \hat\varepsilon \rVert^2$ | steps 3–6 in one call: `training_losses` |
# | 7 | optimise: back-propagate and take an optimiser step | `loss.backward(); opt.step()` |
# | 8 | repeat from step 3 | the loop |
#
# Here are those eight steps, with a class-conditional U-Net (it also gets the digit's label $y$, which notebook
# 04 is about). Timesteps are 0-based in code: index `t` is the paper's $t + 1$. Steps 1 and 2 are fixed once:

# %%
digits = load_dataset("digits")                       # the training split: 1×8×8 images in [-1, 1], labels 0..9
diffusion = GaussianDiffusion("linear", 1000)         # step 1: the forward schedule (β from 1e-4 to 0.02)

def l_simple(eps_pred, eps):                          # step 2: the loss, L_simple (Ho et al. eq. 14)
    return F.mse_loss(eps_pred, eps)

# %% [markdown]
# ### Exercise 1 · The training step (the loop below trains with it)
#
# Write `training_step(model, opt, diffusion, x0, y, t, noise)`, steps 4 to 7 of the recipe for one batch: the
# batch `x0` (`[B, 1, 8, 8]`), its labels `y`, the timesteps `t` and the noise $\varepsilon$ are given (step 3 is
# drawn by the loop). Form $x_t$ (`diffusion.q_sample(x0, t, noise)`), ask the model for $\hat\varepsilon$
# (`model(x_t, t, y)`), compute `l_simple`, take one optimiser step with `opt`, and return the loss as a
# plain float (`loss.item()`), so the loop can log it without keeping the graph.
#
# *Mind the order of the three optimiser calls:* PyTorch **adds** each `backward()` into `.grad`, and `opt.step()`
# uses whatever `.grad` holds at that moment. The check runs your function twice on a small model and names the
# usual mistakes.

# %%
def training_step(model, opt, diffusion, x0, y, t, noise):
    ### BEGIN SOLUTION
    noisy = diffusion.q_sample(x0, t, noise)           # step 4: perturb x0 -> x_t
    loss = l_simple(model(noisy, t, y), noise)         # steps 5-6: predict ε, the loss
    opt.zero_grad()                                    # step 7: clear old gradients, back-propagate, step
    loss.backward()
    opt.step()
    return loss.item()
    ### END SOLUTION


nb04.check_training_step(training_step)

# %% [markdown]
# Now the loop (step 8), with **your** `training_step`: 40 steps on batches of 32 digits, a few seconds.

# %%
torch.manual_seed(0)
model = unet_preset("digits").to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
gen = torch.Generator().manual_seed(0)

hand_losses = []
for step in range(40):                                            # step 8: repeat
    idx = torch.randint(0, len(digits), (32,), generator=gen)
    x0, y = digits.images[idx].to(device), digits.labels[idx].to(device)
    t = diffusion.sample_timesteps(32, generator=gen).to(device)  # step 3: t ~ U{0..T-1} ...
    noise = torch.randn(x0.shape, generator=gen).to(device)       #         ... and ε ~ N(0, I)
    hand_losses.append(training_step(model, opt, diffusion, x0, y, t, noise))   # steps 4-7: yours
    if step % 5 == 4:
        print(f"steps {step - 4:2d}-{step:2d}: mean loss {sum(hand_losses[-5:]) / 5:.4f}")
assert sum(hand_losses[-10:]) < 0.8 * sum(hand_losses[:10]), hand_losses

# steps 3-6 are exactly what GaussianDiffusion.training_losses does (per sample; the trainer takes the mean)
with torch.no_grad():
    by_hand = l_simple(model(diffusion.q_sample(x0, t, noise), t, y), noise)
    packaged = diffusion.training_losses(model, x0, t=t, noise=noise, y=y)["loss"].mean()
print(f"by hand {by_hand.item():.6f}  vs  training_losses {packaged.item():.6f}")
assert torch.allclose(by_hand, packaged, rtol=1e-5), (by_hand, packaged)

# %% [markdown]
# What does the network see, and what must it answer? For four digits of the last batch: the clean $x_0$, the
# noisy $x_t$ at its random $t$, the noise $\varepsilon$ that was mixed in, and the model's guess
# $\hat\varepsilon$ after these 40 steps (still poor: the real training below takes hundreds of steps, and a
# good model thousands).

# %%
show = slice(0, 4)
with torch.no_grad():
    x_t = diffusion.q_sample(x0, t, noise)
    eps_pred = model(x_t, t, y)
fig, axes = plt.subplots(1, 4, figsize=(6.4, 3.0))
for ax, images, title in zip(axes, [x0, x_t, noise, eps_pred],
                             ["$x_0$", "$x_t$ (t in yellow)", r"$\varepsilon$", r"$\hat\varepsilon$ after 40 steps"]):
    scaled = images[show] if ax is axes[0] else images[show].clamp(-2.5, 2.5) / 2.5   # noise: shown at ±2.5
    plots.show_images(scaled, nrow=1, ax=ax, title=title,
                      labels=[int(v) for v in t[show]] if ax is axes[1] else None)
plt.show()

# %% [markdown]
# ## 2 · A real run with `Trainer`
#
# `ddpm_lite.train.Trainer` is the same loop with the extras that make it train well and survive real life:
#
# * **min-SNR-γ loss weighting** (notebook 02 §6b): each sample's $\lVert\varepsilon - \hat\varepsilon\rVert^2$ is
#   multiplied by $\min(\mathrm{SNR}_t, \gamma)/\mathrm{SNR}_t$, which down-weights the almost clean steps. By default
#   (`min_snr_gamma="auto"`) γ = 1 for digits and 5 otherwise; `min_snr_gamma=None` trains on plain $L_\text{simple}$.
#   So the loss the trainer reports is this weighted loss, not $L_\text{simple}$;
# * **AdamW** with a linear learning-rate **warm-up** (large steps on a random network blow up), then a cosine
#   decay over the run (over `max_steps`, or over `max_seconds` of wall-clock time as here);
# * **gradient clipping** at norm 1;
# * an **EMA** of the weights, updated after every step (section 3);
# * **label dropout**: 10 % of the labels are replaced by a "null" class, so the same network also learns the
#   unconditional model needed for classifier-free guidance (notebook 05);
# * a **progress bar**, a logged history, sample grids, **checkpoints** (section 4), bf16 autocast and
#   multi-GPU (DDP) on GPUs, and Ctrl-C (or ■ in Jupyter) saves a checkpoint and returns cleanly.
#
# Every setting lives in one `TrainConfig`. The run below stops after `MAX_SECONDS` seconds. Watch the bar:
# it shows the step, the loss (averaged over the last 5 steps), the images per second and the learning rate.
#
# **Predict, then run.** The U-Net's last layer starts at zero, so the untrained network answers
# $\hat\varepsilon = 0$ for every input. Where will the first logged loss (the mean over the first 5 steps) be?
# (a) about 1, 0.9 to 1.2: $\hat\varepsilon = 0$ misses unit-variance noise by 1 per pixel; (b) clearly below 1,
# 0.6 to 0.9; (c) far below 1, under 0.6; (d) above 1.2: a random network's guesses add error on top of the
# noise. Commit to an answer before running the training cell.

# %%
prediction = None  # "a", "b", "c" or "d"
### BEGIN SOLUTION
prediction = "b"
### END SOLUTION
nb04.commit_first_loss_prediction(prediction)

# %%
run_dir = Path(OUT_DIR) if OUT_DIR else Path(tempfile.mkdtemp(prefix="ddpm-nb04-"))
config = TrainConfig(
    dataset=DATASET, preset=PRESET, device=DEVICE,
    max_seconds=MAX_SECONDS,        # stop after this long (or set max_steps=...)
    batch_size=64, lr=2e-3,         # small batches: more steps in a short run
    warmup_steps=20,                # LR warm-up; then a cosine decay over the MAX_SECONDS
    log_every=5,                    # one history entry (and bar update of the loss) every 5 steps
    sample_n=10, sample_steps=10,   # the sample grid made at the end of train() (DDIM, 10 steps)
    out_dir=str(run_dir),           # checkpoint/, samples/, history.json
    seed=0,
)
trainer = Trainer(config)
n_params = sum(p.numel() for p in trainer.raw_model.parameters())
print(f"{config.dataset}: {len(trainer.images)} images {tuple(trainer.sample_shape)}, "
      f"U-Net with {n_params / 1e6:.2f} M parameters, T = {trainer.diffusion.num_timesteps}")
print(f"{trainer.diffusion}\nthe loss it trains on: {trainer.diffusion.loss_label}")
history = trainer.train()

# %%
first, last = history[0]["loss"], sum(h["loss"] for h in history[-3:]) / 3
print(f"{trainer.step} steps in {trainer.elapsed:.1f} s ({trainer.step / trainer.elapsed:.1f} steps/s); "
      f"loss {first:.3f} (first {config.log_every} steps) -> {last:.3f} (last {3 * config.log_every} steps)")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [3, 2]})
plots.plot_loss(history, ax=axes[0], beta=0.5)
axes[0].set_title(f"training loss: {trainer.diffusion.loss_label}\nlogged every {config.log_every} steps")
plots.show_images(trainer.samples[-1]["images"], nrow=5, ax=axes[1],
                  title=f"EMA samples at step {trainer.samples[-1]['step']}\n(classes 0-4 on top, 5-9 below)")
plt.show()
assert last < first / 2, f"the loss should at least halve: {first:.3f} -> {last:.3f}"

# %%
nb04.reveal_first_loss(prediction, first, trainer.diffusion)


# %% [markdown]
# The loss starts near 0.8: the U-Net's last layer starts at zero, so an untrained network outputs 0, its
# ε-error is $\mathbb E\lVert\varepsilon\rVert^2 / D = 1$ per pixel at every $t$, and the min-SNR weights (γ = 1)
# average 0.82 over $t$ (plain $L_\text{simple}$ would start at 1). It drops fast as the network learns the easy part (at large $t$, $x_t$ is nearly all noise, so
# $\hat\varepsilon \approx x_t$ is already a good answer) and then slowly, because at small $t$ the noise is a tiny
# perturbation of a digit and hard to tell apart from it (the weighting counts those steps little, γ/SNR_t).
# The curve stays noisy however long you train: each batch draws different $t$, and the weighted loss differs a
# lot from one $t$ to another. Judge a run by the smoothed curve and, better, by its samples. Compare it only
# with losses weighted the same way: the held-out loss of §3 is plain $L_\text{simple}$ and therefore larger.
#
# After these few dozen (on a fast machine, a few hundred) steps the samples are blobs with at best a hint of the
# right digit: a low loss is not yet a good model. The pretrained model used below trained for longer; on MNIST
# with a GPU, give it tens of thousands of steps.

# %% [markdown]
# ## 3 · EMA weights versus raw weights
#
# The raw weights after an optimiser step are one noisy point of a wandering trajectory. Diffusion models are
# therefore sampled from an **exponential moving average** of the weights, updated after every step:
#
# $$
# \theta_\text{EMA} \leftarrow d\,\theta_\text{EMA} + (1 - d)\,\theta, \qquad d = 0.9999 \text{ in Ho et al. (2020)}.
# $$
#
# It averages over roughly the last $1/(1-d)$ steps, which smooths out the step-to-step noise of SGD. The trainer
# keeps it in `trainer.ema.module` (the raw network is `trainer.raw_model`), and checkpoints store both.
#
# Let's compare the two on our short run, with the pretrained model's EMA weights for scale (the shipped
# checkpoint keeps only its EMA weights, the ones sampling uses), in two ways:
#
# * **samples**: 50 each (5 per class, DDIM with 10 steps, the same starting noise for all), scored with
#   `metrics.sample_accuracy`: the digits classifier says which digit each sample is, and we count how often that
#   is the class we asked for (chance is 10 %, real test digits score 99 %);
# * **held-out loss**: plain, unweighted $L_\text{simple}$ (not the trainer's min-SNR-weighted loss) on the 355
#   test digits that no model trained on, with the *same* $t$ and $\varepsilon$ for every model, so the numbers
#   compare exactly.

# %%
def samples_and_accuracy(model, diffusion, n=50, seed=1, sampler="ddim", steps=10, **kw):
    y = torch.arange(n) % 10             # n / 10 of each class; column k of the grids below is class k
    x = samplers.sample(model, diffusion, (n, 1, 8, 8), sampler=sampler, steps=steps, y=y,
                        generator=torch.Generator().manual_seed(seed), device=device, **kw)
    return x, metrics.sample_accuracy(x, y, classifier)

test = load_dataset("digits", split="test")
held_gen = torch.Generator().manual_seed(3)
x_held, y_held = test.images.to(device), test.labels.to(device)
t_held = torch.randint(0, 1000, (len(x_held),), generator=held_gen).to(device)
eps_held = torch.randn(x_held.shape, generator=held_gen).to(device)

@torch.no_grad()
def held_out_loss(model):                # plain L_simple (the `diffusion` of section 1), same t and ε every time
    return diffusion.training_losses(model, x_held, t=t_held, noise=eps_held, y=y_held)["loss"].mean().item()

ref_ema, ref_diffusion = from_pretrained(REFERENCE, device=device)                 # use_ema=True: the default
ref_steps = load_config(REFERENCE)["extra"].get("step")

models = {}
if tuple(trainer.sample_shape) == (1, 8, 8):      # our run (digits only: the classifier knows 8×8 digits)
    models[f"our run, {trainer.step} steps: EMA"] = (trainer.ema.module, trainer.diffusion)
    models[f"our run, {trainer.step} steps: raw"] = (trainer.raw_model, trainer.diffusion)
models[f"pretrained, {ref_steps} steps: EMA"] = (ref_ema, ref_diffusion)

scores = {}
fig, axes = plt.subplots((len(models) + 1) // 2, 2, figsize=(10, 4.2 * ((len(models) + 1) // 2)))
for ax, (name, (model_, diffusion_)) in zip(axes.flat, models.items()):
    x, acc = samples_and_accuracy(model_, diffusion_)
    scores[name] = {"accuracy": acc, "held-out loss": held_out_loss(model_)}
    plots.show_images(x, nrow=10, ax=ax, title=name.replace(": ", "\n") +
                      f": accuracy {acc:.0%}\nheld-out loss {scores[name]['held-out loss']:.4f}")
for ax in list(axes.flat)[len(models):]:
    ax.set_axis_off()
fig.tight_layout()
plt.show()
for name, score in scores.items():
    print(f"{name:28s} accuracy {score['accuracy']:.2f}   held-out loss {score['held-out loss']:.4f}")
pre_ema = scores[f"pretrained, {ref_steps} steps: EMA"]
assert pre_ema["accuracy"] > 0.8

# %% [markdown]
# What to read here:
#
# * The pretrained model is far better than our short run on both counts: minutes of training against seconds.
# * (Its raw weights, when they still shipped, were close to its EMA: both near the classifier's ceiling. That
#   run ended with the LR decayed to a tenth, which calms the raw weights by itself.) The EMA earns its keep when the LR stays high, as in Ho et al. (a constant 2·10⁻⁴ for 800k steps),
#   and on big models whose raw samples visibly change from one checkpoint to the next. It costs one copy of the
#   weights and one `lerp_` per step, so everyone uses it.
# * On our short run EMA and raw are close as well, and that is not a matter of course. With `ema_decay=0.9999`
#   the average would remember 10 000 steps, far more than we ran; the trainer avoids this with a **warm-up** of
#   the decay, $d_k = \min\!\big(d, \tfrac{1 + k}{10 + k}\big)$ at update $k$ (0.1, then 0.5 at $k = 8$, 0.9 at
#   $k = 80$, 0.99 at $k = 890$, the full 0.9999 only from $k = 89\,990$ on), so the average always covers
#   roughly the last 10 % of training.
#   Without it you get failure 3 below.

# %% [markdown]
# ## 4 · Save, load, resume
#
# `Trainer.train()` saved a checkpoint at the end (and would every `save_every` steps). A checkpoint is a folder
# of plain data, no pickle: `config.json` says what to build, `model.safetensors` and `ema.safetensors` hold the
# raw and the EMA weights, `trainer_state.*` everything needed to continue (optimiser moments, step, data order,
# random-number generator states). It is written atomically: a crash while saving leaves the previous one intact.

# %%
ckpt_dir = trainer.checkpoint_dir
for f in sorted(ckpt_dir.iterdir()):
    print(f"  {f.name:28s} {f.stat().st_size / 1e6:6.2f} MB")

loaded, loaded_diffusion = from_pretrained(run_dir, device=device)     # a run folder or its checkpoint/ folder
probe_gen = torch.Generator().manual_seed(0)
x_probe = torch.randn(16, *trainer.sample_shape, generator=probe_gen).to(device)
t_probe = torch.randint(0, 1000, (16,), generator=probe_gen).to(device)
y_probe = (torch.arange(16) % 10).to(device)
with torch.no_grad():
    out_loaded = loaded(x_probe, t_probe, y_probe)
    out_trained = trainer.ema.module(x_probe, t_probe, y_probe)
print("loaded EMA model == trainer's EMA model, bit for bit:", torch.equal(out_loaded, out_trained))
assert torch.equal(out_loaded, out_trained)
assert loaded_diffusion.config == trainer.diffusion.config

# %% [markdown]
# **Resuming** has to restore more than the weights: the optimiser's moment estimates (AdamW without them takes
# wild first steps), the EMA, the position in the shuffled data, and the random-number generators that draw $t$
# and $\varepsilon$. `Trainer.resume(run_dir)` does all of it, so a resumed run is the *same* run. We check that:
# continue the original trainer for 5 steps, and a trainer resumed from the checkpoint for 5 steps, and compare
# the weights.

# %%
# 5 more steps, counted in steps rather than seconds (a time limit would make the two runs differ)
more = dict(max_seconds=None, max_steps=trainer.step + 5, progress=False)
resumed = Trainer.resume(run_dir, out_dir=str(run_dir / "resumed"), **more)   # the saved config, with overrides
print(f"resumed at step {resumed.step} with {len(resumed.history)} history entries")
assert resumed.step == trainer.step and len(resumed.history) == len(trainer.history)
saved_step = resumed.step

rng = torch.get_rng_state()          # the global RNG (dropout uses it) as the checkpoint restored it ...
resumed.train()
torch.set_rng_state(rng)             # ... and the same for the original, which kept running in this notebook
for key, value in more.items():
    setattr(trainer.config, key, value)
trainer.train()

same = all(torch.equal(a, b) for a, b in zip(trainer.raw_model.state_dict().values(),
                                            resumed.raw_model.state_dict().values()))
same_ema = all(torch.equal(a, b) for a, b in zip(trainer.ema.module.state_dict().values(),
                                                resumed.ema.module.state_dict().values()))
print(f"after 5 more steps each: step {trainer.step} vs {resumed.step}; identical weights: {same}, "
      f"identical EMA: {same_ema}")
assert resumed.step == trainer.step == saved_step + 5
if device.type == "cpu":             # on GPUs some kernels are not bit-reproducible; there it is close, not equal
    assert same and same_ema

# %% [markdown]
# ## 5 · Classic failures, on purpose
#
# Each of these trains or samples "fine": no error, a loss goes down, images come out. They are worth seeing once,
# so you recognise them in your own runs.
#
# ### Failure 1 · data not in $[-1, 1]$
#
# The whole construction assumes data scaled to $[-1, 1]$, so that $x_0$ and $\varepsilon$ live on the same
# scale: the forward process ends at $x_T = \sqrt{\bar\alpha_T}\,x_0 + \sqrt{1-\bar\alpha_T}\,\varepsilon \approx \varepsilon$
# only if $\sqrt{\bar\alpha_T}\,x_0$ is negligible, and sampling starts from $\mathcal N(0, I)$ for that reason.
# Feed raw pixel values in $[0, 255]$ and $\sqrt{\bar\alpha_T} \approx 0.0064$ times 255 is still 1.6: the last
# step of the forward process **still holds the digit** (its mean, bottom row, is the digit itself, at the scale
# of the noise). Its distance from $\mathcal N(0, I)$ is the prior term
# $L_T$ of the bound (notebook 02), `diffusion.prior_bpd`, which should be about 0 (data in $[0, 1]$ passes this test; its trouble is quieter, see below):

# %%
x_real = digits.images[:4]             # 4 digits at the last forward step t = T - 1, with the same noise
scalings = {"[-1, 1]": x_real, "[0, 1]": (x_real + 1) / 2, "[0, 255]": (x_real + 1) * 127.5}
t_last = torch.full((4,), diffusion.num_timesteps - 1)
eps_last = torch.randn(x_real.shape, generator=torch.Generator().manual_seed(2))

fig, axes = plt.subplots(1, 3, figsize=(10, 2.6))
prior = {}
for ax, (name, x) in zip(axes, scalings.items()):
    x_T = diffusion.q_sample(x, t_last, eps_last)
    mean_T, _, _ = diffusion.q_mean_variance(x, t_last)          # E[x_T | x_0] = sqrt(alpha_bar_T) x_0
    prior[name] = diffusion.prior_bpd(x).mean().item()
    plots.show_images(torch.cat([x_T, mean_T]).clamp(-3, 3) / 3, nrow=4, ax=ax,      # both shown at ±3
                      title=f"data in {name}: $L_T$ = {prior[name]:.2g} bits/dim\n"
                            r"top $x_T$, bottom its mean $\sqrt{\bar\alpha_T}\,x_0$")
    ax.title.set_fontsize(9)
plt.show()
assert prior["[-1, 1]"] < 1e-4 and prior["[0, 1]"] < 1e-4 and prior["[0, 255]"] > 0.1

# %% [markdown]
# And the training? Same model, same seed, same batches, same $t$ and $\varepsilon$ as our main run, only the
# data multiplied into $[0, 255]$ (`(x + 1) * 127.5`, the bug of forgetting `x / 127.5 - 1`):

# %%
n_bad = config.log_every * min(4, trainer.step // config.log_every)     # 20 steps (fewer if the run was shorter)
bad_config = TrainConfig(**{**asdict(config), "max_seconds": None, "max_steps": n_bad,
                            "out_dir": None, "progress": False, "sample_n": 10, "sample_steps": 2})
bad = Trainer(bad_config, dataset=((trainer.images.cpu() + 1) * 127.5, trainer.labels.cpu()))
bad.train()

fig, ax = plt.subplots(figsize=(6, 3))
plots.plot_loss([h for h in history if h["step"] <= n_bad], ax=ax, beta=0.0, label="data in [-1, 1]")
plots.plot_loss(bad.history, ax=ax, beta=0.0, label="data in [0, 255]")
ax.set_title(f"the first {n_bad} steps of the same run")
plt.show()
good_loss = [h["loss"] for h in history if h["step"] == n_bad][0]
print(f"loss at step {n_bad}: {good_loss:.3f} with data in [-1, 1], {bad.history[-1]['loss']:.3f} with [0, 255]")
assert bad.history[-1]["loss"] > 1.5 * good_loss


# %% [markdown]
# With pixels in $[0, 255]$ the loss hardly moves from where it started (about 0.8, see §2). At almost every $t$ the input $x_t$ is dominated by a
# huge $\sqrt{\bar\alpha_t}\,x_0$, and the network would have to subtract it to a precision of a fraction of a
# grey level to find $\varepsilon$. And even a network that managed would be sampled from the wrong starting
# point, $\mathcal N(0, I)$ instead of the $x_T$ above, with the sampler clipping its $\hat x_0$ to $[-1, 1]$.
#
# Data in $[0, 1]$ is the quieter version of the same bug: it trains, but the digit is half as loud relative to
# the noise (a noisier schedule than you chose), the mean is off-centre, and samples come out in $[0, 1]$ where
# every viewer and metric expects $[-1, 1]$, so they look grey and washed out. Always check
# `x.min(), x.max()` of a batch before training; `ddpm_lite.data` returns $[-1, 1]$.
#
# ### Failure 2 · $T$ too small
#
# Why a thousand steps? Two reasons, one loud and one quiet.
#
# **The loud one: the forward process must end in noise.** Copy Ho et al.'s $\beta_1 = 10^{-4}$ and
# $\beta_T = 0.02$ but set $T = 10$, and $\bar\alpha_T = \prod_t (1-\beta_t) \approx 0.90$: after the last step the
# image is still 90 % there. The model never sees pure noise in training, yet sampling starts from
# $\mathcal N(0, I)$. (`ddpm_lite`'s linear schedule scales $\beta$ by $1000/T$ to avoid exactly this.)
#
# **The quiet one: the reverse steps must be small.** The reverse process models each step back,
# $p_\theta(x_{t-1} \mid x_t)$, as a *Gaussian*. That is accurate when each forward step adds a little noise; the
# true reverse step of a big jump is far from Gaussian (it has to decide *which* digit to become), and a Gaussian
# can only average over the choices.
#
# We do not need to train $T = 10$ models to see both. The best $\varepsilon$-predictor depends only on the noise
# level $\bar\alpha_t$, not on $T$, so the pretrained $T = 1000$ network, asked at the timestep with the same
# $\bar\alpha$, stands in for a well-trained network of any shorter schedule (`Retimed` below). Then we run plain
# ancestral DDPM sampling (Algorithm 2) on each schedule, 100 samples each:

# %%
class Retimed(torch.nn.Module):
    # a T = 1000 model used with another schedule: step t of that schedule -> the T = 1000 step with the same SNR
    def __init__(self, model, long, short):
        super().__init__()
        self.model = model
        gap = short.schedule.snr.cpu().log()[:, None] - long.schedule.snr.cpu().log()[None, :]
        self.register_buffer("index", gap.abs().argmin(1).to(device))

    def forward(self, x, t, y=None):
        return self.model(x, self.index[t], y)


schedules_T = {
    "T = 10, β from 1e-4 to 0.02": GaussianDiffusion(NoiseSchedule(betas=torch.linspace(1e-4, 0.02, 10))),
    "T = 10, scaled β": GaussianDiffusion("linear", 10),
    "T = 50, scaled β": GaussianDiffusion("linear", 50),
}
runs_T = {}
for name, short in schedules_T.items():
    x, _ = samples_and_accuracy(Retimed(ref_ema, ref_diffusion, short), short.to(device), n=100, sampler="ddpm",
                                steps=None)
    runs_T[name] = (x, metrics.evaluate_samples(x, torch.arange(100) % 10, classifier=classifier))
    n_clamped = int((short.schedule.betas >= 0.999).sum())        # β clamped at 0.999 (a β ≥ 1 is impossible)
    print(f"{name:28s} alpha_bar_T = {short.schedule.alphas_cumprod[-1].item():.2g}   " +
          "  ".join(f"{k} {runs_T[name][1][k]:.2f}" for k in ("accuracy", "precision", "recall")) +
          f"   β clamped at 0.999: {n_clamped} of {short.num_timesteps}")
assert int((schedules_T["T = 10, scaled β"].schedule.betas >= 0.999).sum()) == 5

fig, axes = plt.subplots(3, 1, figsize=(6.4, 11))
for ax, (name, (x, ev)) in zip(axes, runs_T.items()):
    plots.show_images(x[:50], nrow=10, ax=ax, title=f"{name}\naccuracy {ev['accuracy']:.0%}, recall {ev['recall']:.2f}")
fig.tight_layout()
plt.show()
unscaled, t10, t50 = (ev for x, ev in runs_T.values())
assert unscaled["accuracy"] < 0.4 and t10["accuracy"] > 0.8
assert t10["recall"] < t50["recall"] - 0.03

# %% [markdown]
# * With the unscaled $\beta$ the samples are **noise**: the first reverse step treats pure noise as a slightly
#   noisy digit, and there is no room left to recover.
# * With $\beta$ scaled to reach noise in ten steps the digits are readable (8×8 digits are forgiving) but
#   the set is **less varied**. A caveat on this schedule: scaling Ho et al.'s $\beta$ by $1000/T = 100$ asks for
#   $\beta_t$ from 0.01 to 2, and $\beta \ge 1$ is impossible, so the last five of its ten $\beta_t$ are clamped at
#   0.999 (printed above). Those five steps all happen in almost pure noise ($\bar\alpha_t < 10^{-3}$), so this
#   sampler really has about five useful steps: a crude short schedule, which only strengthens the point. `metrics.evaluate_samples` measures this with *precision* (the share of samples
#   that look like some real digit) and *recall* (the share of real digits that some sample resembles), both in
#   the digits classifier's feature space: precision stays, recall drops (by 0.08 to 0.2 over the seeds we tried).
#   The Gaussian steps average over the
#   possible digits, and the samples collapse towards typical ones. On real images this is the visible blur and
#   noise of few-step DDPM: DDIM's Table 1 (Song et al. 2021) has CIFAR-10 FID 41 for 10 ancestral steps against
#   4.7 for 1000.
#
# This is why DDPM uses $T = 1000$, and why it is slow to sample from. Notebook 07 shows how to have both: DDIM
# and DPM-Solver++ take 10–20 *deterministic* steps with a model trained at $T = 1000$.
#
# ### Failure 3 · the EMA still holds the random initialisation
#
# With decay $d$ and no warm-up, after $n$ updates the EMA still contains a share $d^{\,n}$ of the weights it
# started from, which are the *random initial* weights. Sample from it early, or after a short run with
# $d = 0.9999$, and you get noise, even though the raw model has learned plenty:

# %%
print("share of the random initial weights left in the EMA:")
for d in (0.9999, 0.999, 0.99):
    print(f"  decay {d}: " + ", ".join(f"{d ** n:.3f} after {n} steps" for n in (100, 300, 1000, 10_000)))

# An extreme case: let the network be *perfect* from step 1 (the pretrained weights) and keep an EMA of it
# for 300 steps, started from a random initialisation, with and without warm-up.
torch.manual_seed(0)
random_init = model_from_config(load_config(REFERENCE)).to(device)
ema_no_warmup = EMA(random_init, decay=0.9999, warmup=None)
ema_warmup = EMA(random_init, decay=0.9999, warmup=10)
for _ in range(300):
    ema_no_warmup.update(ref_ema)
    ema_warmup.update(ref_ema)
init_share = {"no warm-up": math.prod(ema_no_warmup.current_decay(k) for k in range(300)),
              "warm-up": math.prod(ema_warmup.current_decay(k) for k in range(300))}
print("share of the random initialisation after 300 updates:", {k: f"{v:.2g}" for k, v in init_share.items()})

runs_ema = {"EMA 0.9999, no warm-up": samples_and_accuracy(ema_no_warmup.module, ref_diffusion),
            "EMA 0.9999, warm-up 10": samples_and_accuracy(ema_warmup.module, ref_diffusion)}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, (name, (x, acc)) in zip(axes, runs_ema.items()):
    plots.show_images(x, nrow=10, ax=ax, title=f"{name}\n300 steps, accuracy {acc:.0%}")
fig.tight_layout()
plt.show()
acc_no, acc_yes = (acc for x, acc in runs_ema.values())
print(f"accuracy without warm-up {acc_no:.0%}, with warm-up {acc_yes:.0%}")
assert acc_no < 0.3 and acc_yes > 0.8 and init_share["no warm-up"] > 0.9 and init_share["warm-up"] < 1e-10


# %% [markdown]
# After 300 steps the EMA without warm-up is still 97 % random initialisation: noise, whatever the raw network
# knows. The warm-up keeps the share of the initialisation at about $10^{-17}$. The same failure appears
# with a correct warm-up if you sample from the EMA *too early* in a long run, or when you resume a run but forget
# to restore the EMA (it restarts from the current weights, which is harmless) or restore it from a different
# run (which is not). If your raw samples look better than your EMA samples, suspect the EMA.
#
# Other classics, briefly: a large learning rate without warm-up, which can make the first steps diverge; a
# timestep off by one between training and sampling (0-based in one place, 1-based in the other), which is hard
# to notice because the samples still look plausible; forgetting `model.eval()` when sampling from a network
# with dropout.

# %% [markdown]
# ## Exercises
#
# Exercise 1 (the training step) and the predict-then-run question are in §1 and §2, where the notebook uses them.
#
# ### Exercise 2 · $L_\text{simple}$ from scratch
#
# Write the loss of Algorithm 1 for one batch without `training_losses` or `q_sample`:
# `my_l_simple(model, x0, t, noise, alphas_cumprod, y)` gets a batch `x0` (`[B, 1, 8, 8]`), timesteps `t`
# (`[B]`, 0-based, `torch.long`), the noise $\varepsilon$, the table $\bar\alpha$ and the labels `y`. Form $x_t$
# (eq. 4), ask the model for $\hat\varepsilon$ and return the mean squared error over the batch *and* the pixels, as a
# 0-d tensor that gradients flow through.

# %%
def my_l_simple(model, x0, t, noise, alphas_cumprod, y):
    ### BEGIN SOLUTION
    a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return ((model(x_t, t, y) - noise) ** 2).mean()
    ### END SOLUTION


nb04.check_simple_loss(my_l_simple)


# %% [markdown]
# ### Exercise 3 · One EMA update
#
# Write `my_ema_update(shadow, model, decay)`: move every parameter of the averaged copy `shadow` towards the
# matching parameter of `model`, $s \leftarrow d\,s + (1 - d)\,\theta$, **in place**, without touching `model`.
#
# *Hint:* loop over `zip(shadow.parameters(), model.parameters())` under `torch.no_grad()`; tensors have in-place
# `mul_`, `add_` and `lerp_`.

# %%
@torch.no_grad()
def my_ema_update(shadow, model, decay):
    ### BEGIN SOLUTION
    for s, p in zip(shadow.parameters(), model.parameters()):
        s.mul_(decay).add_(p, alpha=1 - decay)
    ### END SOLUTION


nb04.check_ema_update(my_ema_update)


# %% [markdown]
# ### Exercise 4 · The EMA warm-up
#
# Write `my_ema_decay(step, decay, warmup)`, the decay used at update number `step` (0-based):
# $d_\text{step} = \min\!\big(d, \frac{1 + \text{step}}{\text{warmup} + \text{step}}\big)$, returned as a float.
# At step 0 it is $1/\text{warmup}$: the first update makes the average almost a copy of the current weights.

# %%
def my_ema_decay(step, decay, warmup):
    ### BEGIN SOLUTION
    return min(decay, (1 + step) / (warmup + step))
    ### END SOLUTION


nb04.check_ema_warmup(my_ema_decay)

# %% [markdown]
# ## Summary
#
# * A DDPM training step is eight things: a fixed schedule, the $L_\text{simple}$ loss, a draw of $t$ and
#   $\varepsilon$, the jump $x_0 \to x_t$ with `q_sample`, the model's guess $\hat\varepsilon$, the squared error,
#   an optimiser step, and again. You wrote steps 4–7 as `training_step` and trained the U-Net with it;
#   `GaussianDiffusion.training_losses` does steps 3–6, and we checked it equals the hand-written version.
# * `Trainer(TrainConfig(...))` weights the loss with min-SNR-γ (γ = 1 for digits; so its loss curve is not
#   $L_\text{simple}$) and adds AdamW with warm-up, gradient clipping, the EMA, label dropout, progress,
#   sample grids and checkpoints. Our run more than halved the loss within seconds; good digit samples take
#   a thousand or so steps.
# * Sample from the **EMA** weights; its decay needs a **warm-up**, or a short run samples from its random
#   initialisation.
# * Checkpoints are `config.json` + safetensors. `from_pretrained` reloaded our model bit for bit and
#   `Trainer.resume` continued the run to exactly the same weights as not stopping at all.
# * Classic failures: data outside $[-1, 1]$ ($x_T$ still holds the digit, the loss stalls); too few steps $T$
#   (a forward process that never reaches noise gives noise; Gaussian reverse steps that are too big give
#   less varied samples); and an EMA without warm-up (noise).
#
# ## What comes next
#
# **04 · Class conditioning** looks at the label $y$ we have been passing along all the time: how the U-Net
# uses a class embedding, why the trainer drops 10 % of the labels, and how classifier-free guidance turns the
# conditional and the unconditional model into sharper, more class-typical samples.
#
# **References.** J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020
# (Algorithm 1, eq. 14, EMA 0.9999). A. Nichol, P. Dhariwal, *Improved Denoising Diffusion Probabilistic Models*,
# ICML 2021 (schedules for other $T$, respacing). I. Loshchilov, F. Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019
# (AdamW). J. Song, C. Meng, S. Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021.

# %%
if not OUT_DIR:                      # the temporary run folder is not needed any more
    import shutil
    shutil.rmtree(run_dir, ignore_errors=True)
print(f"notebook run time: {time.perf_counter() - NOTEBOOK_START:.0f} s")
