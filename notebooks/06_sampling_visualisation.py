# %% [markdown]
# # 06 · Watching a model sample
#
# A trained diffusion model turns noise into data in many small steps. In this notebook we open that loop and
# look inside: at every step the network makes a guess of the final image, $\hat x_0$, and the sampler moves
# the noisy state $x_t$ a little towards it. Watching both side by side shows how a sample is *decided*: the
# rough shape first, the details last.
#
# **What you will learn**
#
# * ancestral sampling, Algorithm 2 of Ho et al. (2020), line by line, and the model's running guess
#   $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$;
# * when, during the 1000 steps, a digit becomes recognisable (measured with a classifier), and how to scrub
#   through a whole sampling run with the **sampling scrubber** widget;
# * what sampling looks like for 2D points: particle trajectories under the exact denoiser of a Gaussian
#   mixture, stochastic (DDPM) against deterministic (DDIM);
# * DDPM against DDIM: network evaluations, seconds and class accuracy, measured here (and how many samples an
#   accuracy needs to mean something);
# * seeds: what makes a sample reproducible, and what does not;
# * by building it: you predict when a digit is decided before the notebook measures it, and in the exercises
#   you write the **ancestral sampling loop** (the notebook runs your loop on the digits model and checks that it
#   reproduces section 2's samples) and a DDIM step that becomes a 20-step sampler.
#
# We use the trained class-conditional digits model that ships with the course (`assets/checkpoints/digits`).
#
# *Run time: about a minute on a laptop CPU (most of it the 1000-step DDPM run of section 2).*

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lite import metrics, plots, toys
from ddpm_lite.checkpoint import from_pretrained
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.exercises import nb06
from ddpm_lite.samplers import (ddim, ddim_steps, ddpm_steps, make_denoiser, sample, sample_steps,
                                timestep_sequence)
from ddpm_lite.widgets import SamplingScrubber

plots.setup()                  # small figures (72 dpi), grey images, pixel-sharp 8×8 digits
torch.set_num_threads(1)       # small tensors: extra threads only add overhead (and stall on a busy CPU)
NOTEBOOK_START = time.perf_counter()

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
CHECKPOINT = REPO / "assets" / "checkpoints" / "digits"
model, diffusion = from_pretrained(CHECKPOINT)        # the EMA weights, eval mode, on the CPU
classifier = metrics.load_classifier("digits")        # a small CNN trained on real digits (99 % held out)
T = diffusion.num_timesteps
labels = torch.arange(10)                             # one sample of each digit
print(f"{diffusion}; model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
assert T == 1000 and model.num_classes == 10

# %% [markdown]
# ## 1 · Ancestral sampling, Algorithm 2
#
# Ho et al. (2020) sample by running the learned reverse process $p_\theta(x_{t-1} \mid x_t)$ from pure noise:
#
# > $x_T \sim \mathcal N(0, I)$
# > **for** $t = T, \dots, 1$: $\quad z \sim \mathcal N(0, I)$ if $t > 1$, else $z = 0$
# > $\qquad x_{t-1} = \dfrac{1}{\sqrt{\alpha_t}}\Big(x_t - \dfrac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\Big) + \sigma_t z$
# > **return** $x_0$
#
# with $\sigma_t^2 = \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ here (`variance="fixed_small"`).
# The mean (eq. 11) has a more telling form. Solve the closed form $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$
# for $x_0$ with the predicted noise: that is the model's **guess of the clean image**
#
# $$
# \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\;\varepsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}} ,
# $$
#
# and eq. 11 is exactly the mean of the forward-process posterior $q(x_{t-1} \mid x_t, x_0)$ (notebook 02) with
# $\hat x_0$ in place of $x_0$:
#
# $$
# \mu_\theta(x_t, t) = \tilde\mu_t(\hat x_0, x_t) = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,\hat x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t .
# $$
#
# So each step says: *guess the clean image, then take the posterior step towards that guess, and add a little
# fresh noise*. That is how `ddpm_lite` implements it (`samplers.ddpm_steps`), which also lets it clip
# $\hat x_0$ to the data range $[-1, 1]$ (Ho et al.'s code does the same). Without clipping the two forms
# agree; check on the real model (`p_mean_variance` computes $\hat x_0$ and then the posterior mean; you will
# write the whole sampling loop yourself in exercise 1):

# %%
gen = torch.Generator().manual_seed(0)
x_t = torch.randn(10, 1, 8, 8, generator=gen)
s = diffusion.schedule
for t in (999, 500, 20):
    tt = torch.full((10,), t)
    with torch.no_grad():
        out = diffusion.p_mean_variance(model, x_t, tt, labels, clip_denoised=False)
        eps = model(x_t, tt, labels)
    eq11 = (x_t - s.betas[t] / s.sqrt_one_minus_alphas_cumprod[t] * eps) / s.alphas[t].sqrt()
    err = (out["mean"] - eq11).abs().max().item()
    print(f"t = {t}: max |posterior mean μ̃(x̂0, x_t) − eq. 11| = {err:.1e}")
    assert err < 1e-4

# %% [markdown]
# ## 2 · A sampling run, step by step
#
# `samplers.sample_steps` runs any sampler as a Python generator that yields a `Step` after every network
# evaluation: `Step(index, t, x, pred_x0, eps)`, where `x` is the new state (at timestep index `t`; `t = -1`
# is the finished sample), and `pred_x0`, `eps` are what the network predicted on the way there. We keep all
# 1000 steps of one DDPM run: one sample of each digit. *(This is the expensive cell of the notebook.)*
#
# **Predict, then run.** At every step the network also makes its guess $\hat x_0$ of the finished image. The
# cells below ask the digits classifier what each guess shows. From which point of the run on will (nearly) all
# the guesses show the requested digit? (a) early, in the first third ($t > 667$), while $x_t$ still looks like
# pure noise; (b) in the middle third ($333 < t \le 667$); (c) late, in the last third ($t \le 333$), when $x_t$
# itself starts to show the digit. Commit to an answer before you run the sampler.

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "a"
### END SOLUTION
nb06.commit_settle_prediction(prediction)

# %%
t0 = time.perf_counter()
run = list(sample_steps(model, diffusion, (10, 1, 8, 8), sampler="ddpm", y=labels,
                        generator=torch.Generator().manual_seed(0)))
sec_ddpm = time.perf_counter() - t0
x_final = run[-1].x
print(f"DDPM: {len(run)} network evaluations for 10 samples in {sec_ddpm:.1f} s; "
      f"first step lands at t = {run[0].t}, last at t = {run[-1].t} (the sample)")
assert len(run) == T and run[0].t == T - 2 and run[-1].t == -1
# at the last step there is no noise and the posterior mean puts all weight on x̂0: the sample *is* the guess
assert torch.allclose(x_final, run[-1].pred_x0, atol=1e-5)

# %% [markdown]
# Here is the run at a few moments: the state $x_t$ (top) and the model's guess $\hat x_0$ at that step
# (bottom), for four of the ten digits:

# %%
moments = [0, 200, 400, 600, 750, 850, 920, 960, 990, T - 1]          # step indices into `run`
fig, axes = plt.subplots(2, len(moments), figsize=(1.05 * len(moments), 2.7))
for col, k in enumerate(moments):
    step = run[k]
    plots.show_images(step.x[:4], nrow=2, ax=axes[0, col], title=f"t = {step.t}")
    plots.show_images(step.pred_x0[:4], nrow=2, ax=axes[1, col])
axes[0, 0].text(-6, 9, "$x_t$", fontsize=12, ha="right")
axes[1, 0].text(-6, 9, "$\\hat x_0$", fontsize=12, ha="right")
fig.suptitle("DDPM sampling: state x_t (top) and the model's guess x̂0 (bottom)", fontsize=10)
plt.show()

# %% [markdown]
# Early on, $x_t$ is noise and $\hat x_0$ is a blurry average, "something digit-like of this class". Long
# before $x_t$ shows anything to the eye, $\hat x_0$ already has the digit's shape; the last few hundred steps
# mostly remove the remaining noise and sharpen details. We can measure this: at every step, ask the digits
# classifier what $\hat x_0$ shows, and measure how far $\hat x_0$ still is from the final sample.

# %%
ts = np.array([step.t + 1 for step in run])                              # the t each guess was made at
guesses = torch.stack([step.pred_x0 for step in run])                    # [1000, 10, 1, 8, 8]
pred = metrics.classify(guesses.flatten(0, 1), classifier).reshape(len(run), -1)
right = (pred == labels).double().mean(1).numpy()                        # fraction of x̂0 showing its digit
dist = (guesses - x_final).pow(2).mean((1, 2, 3, 4)).sqrt().numpy()      # RMS distance to the final sample
# the first step from which on at least 9 of the 10 guesses show the requested digit, at every later step
settled = int(np.argmax([(right[k:] >= 0.9).all() for k in range(len(run))]))

fig, ax = plt.subplots(figsize=(9, 2.8))
ax.plot(ts, right, label="x̂0 classified as the requested digit")
ax.plot(ts, dist / dist.max(), label="RMS(x̂0 − final sample), relative")
ax.axvline(ts[settled], color="k", ls=":", lw=1, label=f"≥ 9 of 10 right from t = {ts[settled]} on")
ax.set(xlabel="t (sampling runs from right to left)", xlim=(T, 0), ylim=(-0.02, 1.05))
ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
fig.tight_layout()
plt.show()
acc_ddpm = metrics.sample_accuracy(x_final, labels, classifier)
print(f"final samples: {100 * acc_ddpm:.0f} % classified as requested; from t = {ts[settled]} on (of {T}) at "
      f"least 9 of the 10 guesses x̂0 show the requested digit; RMS(x̂0 − final) at t = {ts[0]}: {dist[0]:.2f}, "
      f"at t = {ts[T - 100]}: {dist[T - 100]:.3f}")
assert acc_ddpm >= 0.8, acc_ddpm
assert ts[settled] > 300 and dist[T - 100] < 0.25 * dist[0], (ts[settled], dist[T - 100], dist[0])
nb06.reveal_settle(prediction, ts[settled], T)

# %% [markdown]
# The class of a sample is decided early, in the noisiest part of the run; after that, the steps refine a
# digit that is already chosen. (This is also why guidance, notebook 05, matters most at large $t$. It says
# nothing about how large a sampler's steps may be: that depends on how smoothly $x_t$ moves, which section 4
# shows in 2D and notebook 07 explains.)
#
# ## 3 · The sampling scrubber
#
# Drag the slider (or press ▶) to move through the run above: on the left the state $x_t$ after each step,
# on the right the guess $\hat x_0$ the network made at that step. All 1000 steps were computed above; the
# widget keeps 200 of them (evenly spaced, always including the last) and only swaps two pictures when you
# move. It starts at the end, the finished samples; press *Home* on the slider to jump to the first step.
#
# *(The widget needs a running kernel: if you only see a text placeholder, run the cell.)*

# %%
scrubber = SamplingScrubber(run, max_frames=200, n_show=10, nrow=5)
scrubber

# %% [markdown]
# The widget can be driven from code too: `scrubber.slider` is the slider, `scrubber.frames` the frames it
# holds (each with `t`, `x`, `pred_x0`). Its first frame is the first step from pure noise, its last the sample:

# %%
first, last = scrubber.frames[0], scrubber.frames[-1]
print(f"{len(scrubber.frames)} frames, from t = {first['t']} (std of x_t {first['x'].std():.2f}) "
      f"to t = {last['t']} (the sample); the slider starts at frame {scrubber.slider.value}")
assert len(scrubber.frames) == 200 and first["t"] == T - 2 and last["t"] == -1
assert scrubber.slider.value == len(scrubber.frames) - 1 and torch.equal(last["x"], x_final)

# %% [markdown]
# ## 4 · Trajectories in 2D
#
# Images have 64 dimensions; points in the plane have 2, so we can draw the path of every sample. For a
# Gaussian mixture the best possible denoiser is known in closed form (`toys.ExactGMMDenoiser`: the exact
# $\mathbb E[\varepsilon \mid x_t]$, notebook 02), so this is what sampling looks like with a *perfect* model,
# on "8 Gaussians" on a ring, with the same schedule ($T = 1000$, linear) as the digits model.
#
# We compare two samplers from the same 500 starting points $x_T$:
#
# * **DDPM** (Algorithm 2), 1000 steps, fresh noise $\sigma_t z$ at every step;
# * **DDIM** with $\eta = 0$ (Song et al. 2021; notebook 07), 50 steps, **no** noise: each step jumps along
#   $x_{\text{prev}} = \sqrt{\bar\alpha_{\text{prev}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{\text{prev}}}\,\hat\varepsilon$,
#   so the end point is a deterministic function of $x_T$.
#
# (Clipping $\hat x_0$ to $[-1, 1]$ is for images; the ring reaches 1.3, so it is off here: `threshold=None`.)

# %%
toy_diffusion = GaussianDiffusion("linear", T)
ring = toys.GaussianMixture.ring(k=8, radius=1.0, std=0.1)
perfect = make_denoiser(toys.ExactGMMDenoiser(ring, toy_diffusion.schedule), toy_diffusion, threshold=None)
x_T_toy = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))

t0 = time.perf_counter()
path_ddpm = torch.stack([x_T_toy] + [s.x for s in ddpm_steps(perfect, toy_diffusion, x_T_toy,
                                                               generator=torch.Generator().manual_seed(1))])
path_ddim = torch.stack([x_T_toy] + [s.x for s in ddim_steps(perfect, toy_diffusion, x_T_toy, steps=50)])
sec_toy = time.perf_counter() - t0

fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
plots.plot_2d(ring.sample(500, generator=torch.Generator().manual_seed(2)), ax=axes[0], lim=2.5,
              title="data: 8 Gaussians")
plots.plot_trajectories(path_ddpm, ax=axes[1], n=4, color="cycle", lw=1.0, alpha=0.8, every=25,  # 4 paths, 1 colour each
                        title=f"DDPM, {len(path_ddpm) - 1} steps (4 paths, every 25th state)")
plots.plot_trajectories(path_ddim, ax=axes[2], n=48, title=f"DDIM (η = 0), {len(path_ddim) - 1} steps (48 paths)")
fig.tight_layout()
plt.show()

def near_a_mode(points):   # fraction within 3 standard deviations of the nearest component mean
    return (torch.cdist(points.double(), ring.means.double()).min(1).values < 3 * 0.1).double().mean().item()

def mode_shares(points):
    return torch.bincount(torch.cdist(points.double(), ring.means.double()).argmin(1), minlength=8) / len(points)

for name, path in (("DDPM", path_ddpm), ("DDIM", path_ddim)):
    print(f"{name}: {100 * near_a_mode(path[-1]):.1f} % of end points within 3σ of a mode "
          f"(a perfect sampler: 98.9 %); share per mode {[round(v, 2) for v in mode_shares(path[-1]).tolist()]}")
    assert near_a_mode(path[-1]) > 0.95 and mode_shares(path[-1]).min() > 0.07
print(f"(both runs together: {sec_toy:.1f} s)")

# %% [markdown]
# Both samplers land on the data, in the right proportions. Their paths differ: DDPM particles jitter
# (fresh noise is added at every step; four paths, one colour each, drawn through every 25th state) and only
# settle at the very end; DDIM particles move on smooth curves
# (the steps follow an ordinary differential equation, the *probability-flow ODE*), so 50 large steps
# are enough. Notice also where the choice of mode happens: particles fan out to their mode early, while the
# cloud is still wide, the 2D version of "the class is decided early" above.
#
# ## 5 · DDPM against DDIM on digits
#
# The same comparison on the digits model: the 1000-step DDPM run from section 2 against DDIM with 50 and
# with 20 steps, from the **same** starting noise (same labels, same seed). We measure wall-clock seconds
# and class accuracy. Ten samples per sampler make the accuracy **anecdotal**: one misread digit moves it by 10
# points, and even 10 of 10 right is compatible with a true accuracy anywhere from about 70 % to 100 % (95 %
# interval). 1000 DDPM steps for 100 samples would not fit this notebook's two-minute budget on a busy 2-core
# CPU (the ten above take from ten seconds to a minute, depending on the load); the two DDIM samplers are cheap, so below they also get 100 samples each (10 of each digit), and notebook 07
# measures quality against the number of steps with more samples.

# %%
x_T = torch.randn((10, 1, 8, 8), generator=torch.Generator().manual_seed(0))   # what the DDPM run started from
results = [{"sampler": "DDPM", "evals": len(run), "seconds": sec_ddpm, "x": x_final}]
for steps in (50, 20):
    t0 = time.perf_counter()
    x = sample(model, diffusion, (10, 1, 8, 8), sampler="ddim", steps=steps, y=labels, x_T=x_T)
    results.append({"sampler": f"DDIM {steps}", "evals": steps, "seconds": time.perf_counter() - t0, "x": x})

fig, axes = plt.subplots(len(results), 1, figsize=(8, 1.25 * len(results)))
for ax, r in zip(axes, results):
    r["accuracy"] = metrics.sample_accuracy(r["x"], labels, classifier)
    plots.show_images(r["x"], nrow=10, ax=ax)
    ax.set_title(f"{r['sampler']}: {r['evals']} evaluations, {r['seconds']:.1f} s", fontsize=9)
fig.tight_layout()
plt.show()

# 100 samples (10 of each digit, the same 100 starting noises) for the two DDIM samplers, which are cheap enough
y100 = torch.arange(10).repeat_interleave(10)
x_T100 = torch.randn((100, 1, 8, 8), generator=torch.Generator().manual_seed(1))
for r in results[1:]:
    x100 = sample(model, diffusion, (100, 1, 8, 8), sampler="ddim", steps=r["evals"], y=y100, x_T=x_T100)
    r["accuracy100"] = metrics.sample_accuracy(x100, y100, classifier)

print(f"{'sampler':8s} {'evals':>6s} {'seconds':>8s} {'speed-up':>9s} {'accuracy, 10 (anecdotal)':>25s} "
      f"{'accuracy, 100':>14s}")
for r in results:
    acc100_text = f"{100 * r['accuracy100']:13.0f}%" if "accuracy100" in r else f"{'(too slow)':>14s}"
    print(f"{r['sampler']:8s} {r['evals']:6d} {r['seconds']:8.2f} {sec_ddpm / r['seconds']:8.0f}× "
          f"{100 * r['accuracy']:24.0f}% {acc100_text}")
assert sec_ddpm / results[-1]["seconds"] > 10, [r["seconds"] for r in results]
assert all(r["accuracy"] >= 0.7 for r in results), [r["accuracy"] for r in results]
assert all(r["accuracy100"] >= 0.85 for r in results[1:]), [r["accuracy100"] for r in results[1:]]


# %% [markdown]
# Seconds scale with the number of network evaluations: DDIM with 20 steps is dozens of times faster than
# DDPM's 1000. On 100 samples both DDIM samplers are recognised about as often as real digits; DDPM's ten are
# too few to rank it against them, so this table shows speed, not a quality ranking. The two DDIM rows start from the same $x_T$ and
# follow the same deterministic path with different step sizes, so they give nearly the same digits; the DDPM
# row differs, because DDPM adds 999 fresh noise vectors on the way and $x_T$ alone does not fix its result.
# Notebook 07 explains why DDIM may skip steps, and measures quality against the number of evaluations more
# carefully.
#
# ## 6 · Seeds and reproducibility
#
# Where does the randomness in a sample come from? From the starting noise $x_T$ and, for stochastic
# samplers (DDPM, DDIM with $\eta > 0$), from the noise $z$ added at each step. In `ddpm_lite` all of it is
# drawn from the `generator` you pass (a `torch.Generator`), never from PyTorch's global random state, so:
#
# * the same seed gives **bit-identical** samples (on the same device and software);
# * different seeds give different samples;
# * deterministic DDIM ($\eta = 0$) depends on $x_T$ only; a stochastic sampler also on the later draws;
# * other code that uses the global RNG (`torch.manual_seed`, dropout, ...) cannot shift your samples.

# %%
def digits_from(seed, **kw):
    return sample(model, diffusion, (10, 1, 8, 8), sampler="ddim", steps=20, y=labels,
                  generator=torch.Generator().manual_seed(seed), **kw)

a, b, c = digits_from(7), digits_from(7), digits_from(8)
torch.manual_seed(12345); _ = torch.rand(1000)          # disturb the global RNG: no effect
a_again = digits_from(7)
print("same seed, twice:            identical =", torch.equal(a, b))
print("after torch.manual_seed(...): identical =", torch.equal(a, a_again))
print(f"seed 7 vs seed 8:            mean |difference| = {(a - c).abs().mean():.2f}")
assert torch.equal(a, b) and torch.equal(a, a_again) and (a - c).abs().mean() > 0.1

# deterministic DDIM (eta = 0) depends on x_T only; with eta = 1 the per-step noise comes from the generator
x_T7 = torch.randn((10, 1, 8, 8), generator=torch.Generator().manual_seed(7))
det = [sample(model, diffusion, (10, 1, 8, 8), steps=20, y=labels, x_T=x_T7, eta=0.0,
              generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
sto = [sample(model, diffusion, (10, 1, 8, 8), steps=20, y=labels, x_T=x_T7, eta=1.0,
              generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
print("DDIM eta=0, same x_T, different generators: identical =", torch.equal(*det), "(and equal to seed 7's:",
      torch.equal(det[0], a), ")")
print(f"DDIM eta=1, same x_T: same generator identical = {torch.equal(sto[0], sto[1])}, "
      f"different generator: mean |difference| = {(sto[0] - sto[2]).abs().mean():.2f}")
assert torch.equal(*det) and torch.equal(det[0], a)
assert torch.equal(sto[0], sto[1]) and (sto[0] - sto[2]).abs().mean() > 0.05

fig, axes = plt.subplots(4, 1, figsize=(8, 5.0))
for ax, (x, title) in zip(axes, [(a, "seed 7"), (b, "seed 7 again: identical"), (c, "seed 8"),
                                 (sto[2], "seed 7's x_T, DDIM eta = 1, other per-step noise")]):
    plots.show_images(x, nrow=10, ax=ax)
    ax.set_title(title, fontsize=9)
fig.tight_layout()
plt.show()


# %% [markdown]
# Two caveats for real projects. On a GPU some kernels are not bit-for-bit deterministic (see
# `torch.use_deterministic_algorithms`), so the same seed gives *almost* but not exactly the same images, and
# different hardware or library versions can differ slightly. And `ddpm_lite` draws its noise on the
# generator's device and moves it (`diffusion.randn`), so a CPU generator gives the same $x_T$ whether the
# model runs on a CPU or a GPU.
#
# ## 7 · Exercises
#
# Each exercise has a code cell to complete and a check that prints **✅ Correct** or tells you what is wrong.
#
# ### Exercise 1 · The sampling loop, run on the digits model
#
# In notebook 02 you wrote one reverse step from $\hat\varepsilon$ (eq. 11) and were handed the noise. Now write the
# whole sampler, in the form the package uses for images (section 1: the posterior mean with the clipped
# $\hat x_0$), with its own noise draws and its last step. Write `ddpm_sample(denoiser, diffusion, x_T, generator)`:
# Algorithm 2 as a loop, the way `samplers.ddpm_steps` does it. `denoiser(x, t)` returns the model's $(\hat x_0, \hat\varepsilon)$ for a batch `x` at a
# timestep tensor `t` (`torch.long`, shape `[B]`, all entries equal), with $\hat x_0$ already clipped. With
# `s = diffusion.schedule`, for $t = T-1, \dots, 0$ ($T$ = `diffusion.num_timesteps`):
#
# $$
# x \leftarrow \underbrace{c_1(t)\,\hat x_0 + c_2(t)\,x}_{\tilde\mu_t(\hat x_0,\, x_t)} + \sigma_t z, \qquad
# c_1(t) = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t},\quad c_2(t) = \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t},
# \quad \sigma_t^2 = \tilde\beta_t ,
# $$
#
# stored as `s.posterior_mean_coef1`, `s.posterior_mean_coef2` and `s.posterior_variance` (indexed by $t$). Add
# the noise only for $t > 0$, drawn right after the denoiser call as `torch.randn(x.shape, generator=generator,
# dtype=x.dtype)`: then your loop draws exactly the random numbers the package's sampler draws, and the same
# seed gives the same samples. Return the final $x$. (Eq. 11 with the denoiser's $\hat\varepsilon$ gives the same
# steps: the denoiser recomputes $\hat\varepsilon$ from the clipped $\hat x_0$, so the two forms agree.)
#
# The check compares your loop with `samplers.ddpm` on a 2D toy with a 100-step schedule, and names the usual
# slips. Then the next cell runs **your loop on the digits model** from section 2's seed: 1000 network
# evaluations, and, if your loop is right, the same ten digits as section 2.

# %%
def ddpm_sample(denoiser, diffusion, x_T, generator=None):
    ### BEGIN SOLUTION
    s = diffusion.schedule
    x = x_T
    for t in range(diffusion.num_timesteps - 1, -1, -1):
        x0_hat, _ = denoiser(x, torch.full((x.shape[0],), t))
        mean = s.posterior_mean_coef1[t] * x0_hat + s.posterior_mean_coef2[t] * x
        if t > 0:
            x = mean + s.posterior_variance[t].sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        else:
            x = mean
    return x
    ### END SOLUTION


nb06.check_ddpm_sample(ddpm_sample)

# %%
gen = torch.Generator().manual_seed(0)                    # section 2's seed: the same x_T ...
x_T_run = torch.randn((10, 1, 8, 8), generator=gen)
t0 = time.perf_counter()
with torch.no_grad():                                     # ... and the same 999 draws of z, from your loop
    x_mine = ddpm_sample(make_denoiser(model, diffusion, y=labels), diffusion, x_T_run, gen)
sec_mine = time.perf_counter() - t0
gap = float((x_mine - x_final).abs().max())
acc_mine = metrics.sample_accuracy(x_mine, labels, classifier)

fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
plots.show_images(x_mine, nrow=10, ax=axes[0], title=f"your ddpm_sample: {T} steps in {sec_mine:.1f} s, "
                                                     f"{100 * acc_mine:.0f} % classified as requested")
plots.show_images(x_final, nrow=10, ax=axes[1], title="section 2 (samplers.ddpm_steps), same seed")
fig.tight_layout()
plt.show()
print(f"your loop vs section 2's run: max |difference| = {gap:.1e}")
assert gap < 1e-3, gap


# %% [markdown]
# ### Exercise 2 · One DDIM step, and a sampler of your own
#
# Write `ddim_step(x_t, eps, t, t_prev, alphas_cumprod)`, one deterministic DDIM update ($\eta = 0$) from the
# integer timestep `t` to `t_prev < t`:
#
# $$
# \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon}{\sqrt{\bar\alpha_t}}, \qquad
# x_{\text{prev}} = \sqrt{\bar\alpha_{\text{prev}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{\text{prev}}}\,\hat\varepsilon ,
# $$
#
# where $\bar\alpha_{\text{prev}}$ is `alphas_cumprod[t_prev]`, except for the very last step to the data,
# `t_prev = -1`, where $\bar\alpha_{\text{prev}} = 1$ (careful: `alphas_cumprod[-1]` is Python's *last*
# entry!). After the check, the cell uses your function as a complete 20-step sampler on the digits model and
# compares it with `samplers.ddim`.

# %%
def ddim_step(x_t, eps, t, t_prev, alphas_cumprod):
    ### BEGIN SOLUTION
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    ### END SOLUTION


nb06.check_ddim_step(ddim_step)

# your step as a sampler: the network gives ε̂ (with x̂0 clipped to [-1, 1]), your function moves x
denoiser = make_denoiser(model, diffusion, y=labels)
seq = timestep_sequence(T, 20)                    # 999, 949, ..., 49: the 20 timesteps DDIM visits
x = x_T.clone()
for t, t_prev in zip(seq, seq[1:] + [-1]):
    _, eps = denoiser(x, torch.full((10,), t))
    x = ddim_step(x, eps, t, t_prev, diffusion.schedule.alphas_cumprod.float())
reference = ddim(denoiser, diffusion, x_T, steps=20)
print(f"your 20-step sampler vs samplers.ddim: max |difference| = {(x - reference).abs().max():.1e}")
assert (x - reference).abs().max() < 1e-3

# %%
print(f"notebook run time: {time.perf_counter() - NOTEBOOK_START:.0f} s")

# %% [markdown]
# ## Summary
#
# * **Ancestral sampling** (Algorithm 2) runs $T = 1000$ steps from $x_T \sim \mathcal N(0, I)$. Each step
#   guesses the clean image $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}$, takes the
#   posterior mean $\tilde\mu_t(\hat x_0, x_t)$ (equal to eq. 11) and adds noise $\sigma_t z$; the last step adds
#   none, so the sample is the final guess.
# * Watching $\hat x_0$ shows **coarse to fine**: the class is decided in the noisiest part of the run, long
#   before $x_t$ shows it; the last few hundred steps refine details. The **sampling scrubber** lets you
#   scrub through a run.
# * In 2D with a perfect denoiser, DDPM particles jitter towards the data while deterministic DDIM particles
#   follow smooth paths, and both reach the right distribution.
# * DDIM with 20 steps is dozens of times faster than DDPM's 1000 for samples of the same class accuracy
#   (measured above).
# * Samples are a function of the seed: the same `torch.Generator` seed gives identical samples, different
#   seeds different ones; deterministic DDIM depends on $x_T$ only.
# * Built by you: the ancestral loop, which reproduces section 2's digits from the same seed, and a DDIM step
#   that samples as well as `samplers.ddim` in 20 steps.
#
# ## What comes next
#
# **06 · Fast sampling** explains why DDIM may skip steps (a non-Markovian process with the same marginals),
# adds DPM-Solver++, and measures sample quality and seconds against the number of network evaluations.
#
# **References.** J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020
# (Algorithm 2, eqs. 4, 7, 11). J. Song, C. Meng, S. Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021
# (eq. 12). Y. Song et al., *Score-Based Generative Modeling through Stochastic Differential Equations*, ICLR
# 2021 (the probability-flow ODE).
