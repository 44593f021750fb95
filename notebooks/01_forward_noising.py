# %% [markdown]
# # 01 · The forward process: from data to noise
#
# A diffusion model is built from two processes that run in opposite directions:
#
# 1. the **forward process** *gradually adds Gaussian noise* to a data point, in many small steps, until
#    nothing is left but pure noise, and
# 2. the **reverse process** *learns to undo* each of those small steps, so that starting from pure noise it can
#    walk back to something that looks like data.
#
# The forward process has no parameters and nothing to learn: it is fixed by a sequence of noise variances
# $\beta_1, \dots, \beta_T$ (the *noise schedule*). This notebook is entirely about it. It is worth
# understanding well, because everything the network later learns is defined relative to it.
#
# **What you will learn**
#
# * what $x_t$ looks like as $t$ grows, on real handwritten digits and on a 2D point cloud;
# * the one-step forward kernel $q(x_t \mid x_{t-1})$ and why it collapses to the closed form
#   $q(x_t \mid x_0)$ (eq. 4 of Ho et al. 2020), checked exactly and by simulation;
# * what the mean and variance of $x_t$ are, and why $x_T$ is (almost exactly) $\mathcal N(0, I)$;
# * how the **linear**, **cosine** and **sigmoid** schedules differ: $\bar\alpha_t$, the signal-to-noise ratio,
#   and how fast the information about $x_0$ disappears. You **build the cosine schedule yourself** (Exercise 1),
#   and the rest of the notebook plots and noises digits with yours;
# * a **predict-then-run** question: when signal and noise are equally strong (SNR = 1), can you still tell which
#   digit a noisy image came from? Commit to an answer, then measure it;
# * how to explore all of this interactively with the **noise-step explorer**.
#
# *Run time: well under a minute on a laptop CPU.*

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lite import plots, toys
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.exercises import nb01
from ddpm_lite.schedules import SCHEDULES, NoiseSchedule
from ddpm_lite.widgets import NoiseStepExplorer

plots.setup()                # small figures (72 dpi), grey images, pixel-sharp 8×8 digits
torch.set_num_threads(1)     # tiny tensors: extra threads only add overhead (and stall on a busy CPU)
T = 1000                     # number of diffusion steps, as in Ho et al. (2020)

digits = load_dataset("digits")   # scikit-learn's 8×8 handwritten digits, bundled: works offline
x0_all = digits.images            # B×1×8×8, scaled to [-1, 1]
print(f"{len(digits)} training digits, shape {tuple(x0_all.shape[1:])}, "
      f"values in [{x0_all.min():.0f}, {x0_all.max():.0f}]")
assert x0_all.shape[1:] == (1, 8, 8) and x0_all.min() >= -1 and x0_all.max() <= 1

# %% [markdown]
# ## 1 · One small step at a time
#
# Each forward step shrinks the current image a little and adds a little fresh Gaussian noise
# (Ho et al. 2020, eq. 2):
#
# $$
# q(x_t \mid x_{t-1}) = \mathcal N\!\left(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\right)
# \quad\Longleftrightarrow\quad
# x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon_t,\qquad \varepsilon_t \sim \mathcal N(0, I).
# $$
#
# With Ho et al.'s **linear schedule**, $\beta_t$ grows linearly from $10^{-4}$ to $0.02$ over $T = 1000$ steps.
# The factor $\sqrt{1-\beta_t}$ is what keeps the numbers from blowing up: if $x_{t-1}$ has unit variance, so
# does $x_t$ ($(1-\beta_t)\cdot 1 + \beta_t = 1$). The process is *variance preserving*.
#
# *Indexing.* In `ddpm_lite` (as in Ho et al.'s code) timesteps are 0-based: index `t` is the paper's step
# $t+1$, and valid indices are `0 … T-1`. Below, "$x_t$ at `t = 0`" is therefore already one step of noise.
#
# Here are six digits on their way to noise. Each row keeps **the same** noise $\varepsilon$ for every column
# (we jump straight to each $t$ with the closed form of section 2, which gives the same distribution as taking
# the steps one by one), so you can watch one image dissolve:

# %%
linear = GaussianDiffusion("linear", T)
ts_show = [0, 50, 100, 200, 300, 400, 600, T - 1]
batch = x0_all[:6]
eps = torch.randn(batch.shape, generator=torch.Generator().manual_seed(0))

fig, axes = plt.subplots(1, len(ts_show) + 1, figsize=(1.05 * (len(ts_show) + 1), 5.2))
plots.show_images(batch, nrow=1, ax=axes[0], title="$x_0$")
for ax, t in zip(axes[1:], ts_show):
    x_t = linear.q_sample(batch, torch.full((len(batch),), t), noise=eps)
    plots.show_images(x_t, nrow=1, ax=ax, title=f"t = {t}")
fig.suptitle("linear schedule: the same six digits at growing t (pixel values clipped to [-1, 1] for display)",
             fontsize=10)
plt.show()

# %% [markdown]
# By `t = 300` the digits are hard to read, by `t = 400` they are gone to the eye, and the last 600 steps only
# shuffle noise around. Keep that in mind: it is the main complaint against the linear schedule (section 4).
#
# The same process acts on any data. Here it is on a 2D point cloud, the "two moons" (each point is one
# $x_0 \in \mathbb R^2$, coloured by its moon). Watch the cloud shrink towards the origin and blur into a round
# Gaussian blob:

# %%
points, moon = toys.sample_toy("moons", 2000, generator=torch.Generator().manual_seed(0), return_labels=True)
ts_2d = [0, 50, 100, 200, 400, T - 1]
toy_gen = torch.Generator().manual_seed(1)

fig, axes = plt.subplots(1, len(ts_2d), figsize=(2.3 * len(ts_2d), 2.6))
for ax, t in zip(axes, ts_2d):
    p_t = linear.q_sample(points, torch.full((len(points),), t), generator=toy_gen)
    plots.plot_2d(p_t, ax=ax, c=moon, lim=3.0, title=f"t = {t}")
    ax.set_xticks([-2, 0, 2]); ax.set_yticks([-2, 0, 2])
fig.tight_layout()
plt.show()

# at the last step the cloud is a standard 2D Gaussian: mean 0, covariance I
cov = torch.cov(p_t.T)
print("last step: mean", p_t.mean(0).numpy().round(3), " covariance", cov.numpy().round(3).tolist())
assert p_t.mean(0).abs().max() < 0.07, p_t.mean(0)
assert (cov - torch.eye(2)).abs().max() < 0.1, cov

# %% [markdown]
# ## 2 · Skipping the steps: the closed form $q(x_t \mid x_0)$
#
# Chaining Gaussian steps gives a Gaussian again. Write $\alpha_t = 1 - \beta_t$ and
# $\bar\alpha_t = \prod_{s \le t} \alpha_s$. Then (Ho et al. 2020, eq. 4)
#
# $$
# q(x_t \mid x_0) = \mathcal N\!\left(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\right)
# \quad\Longleftrightarrow\quad
# x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\qquad \varepsilon \sim \mathcal N(0, I).
# $$
#
# *Why.* Given $x_0$, let $x_{t-1}$ have mean $m_{t-1} x_0$ and variance $v_{t-1}$. One step multiplies the mean by
# $\sqrt{\alpha_t}$ and gives variance $\alpha_t v_{t-1} + \beta_t$, i.e. $1 - v_t = \alpha_t (1 - v_{t-1})$.
# Starting from $m = 1$, $v = 0$ this telescopes to $m_t = \sqrt{\bar\alpha_t}$ and $v_t = 1 - \bar\alpha_t$.
#
# This is what makes diffusion models cheap to train: to get a training example at step $t$ we do not run $t$
# steps, we draw one $\varepsilon$ (`GaussianDiffusion.q_sample`). One step of the chain is
# `GaussianDiffusion.q_step`; ᾱ and its friends are precomputed in float64 by `NoiseSchedule`.
#
# First the recursion above, run step by step in float64 and compared with the table of $\bar\alpha_t$:

# %%
sched = linear.schedule                  # NoiseSchedule: every coefficient, float64
m, v = 1.0, 0.0                          # x_0 is given: mean factor 1, variance 0
mean_factor, variance = [], []
for beta in sched.betas.tolist():        # one forward step: mean * sqrt(1 - beta), var * (1 - beta) + beta
    m, v = math.sqrt(1.0 - beta) * m, (1.0 - beta) * v + beta
    mean_factor.append(m)
    variance.append(v)

err_mean = (torch.tensor(mean_factor, dtype=torch.float64) - sched.sqrt_alphas_cumprod).abs().max().item()
err_var = (torch.tensor(variance, dtype=torch.float64) - (1 - sched.alphas_cumprod)).abs().max().item()
print(f"step-by-step recursion vs closed form over all {T} steps: "
      f"max |mean error| = {err_mean:.1e}, max |variance error| = {err_var:.1e}")
print(f"alpha_bar at t = 0: {sched.alphas_cumprod[0]:.6f},  t = {T // 2}: {sched.alphas_cumprod[T // 2]:.4f},  "
      f"t = {T - 1}: {sched.alphas_cumprod[-1]:.2e}")
assert err_mean < 1e-12 and err_var < 1e-12

# %% [markdown]
# Now the same by simulation. We take one digit, make 2000 copies of it, and push all copies through the chain
# $x_{t-1} \to x_t$ one step at a time (`q_step`, 1000 times). Separately we jump to the same $t$ directly with
# `q_sample`. If eq. 4 is right, the two clouds of noisy images have the same per-pixel mean
# $\sqrt{\bar\alpha_t}\,x_0$ and variance $1 - \bar\alpha_t$:

# %%
N = 2000
x_start = x0_all[3:4].expand(N, -1, -1, -1)              # 2000 copies of one digit
check_at = [99, 299, 999]
chain_gen, jump_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)

t0 = time.perf_counter()
x, chain = x_start.clone(), {}
for t in range(T):                                        # T one-step transitions, eq. 2
    x = linear.q_step(x, torch.full((N,), t), generator=chain_gen)
    if t in check_at:
        chain[t] = x.clone()
t_chain = time.perf_counter() - t0
t0 = time.perf_counter()
jump = {t: linear.q_sample(x_start, torch.full((N,), t), generator=jump_gen) for t in check_at}   # eq. 4
t_jump = time.perf_counter() - t0
print(f"{T} steps of the chain: {t_chain:.2f} s;  {len(check_at)} jumps with the closed form: {t_jump * 1e3:.1f} ms\n")

print(" t    alpha_bar   RMS(mean - sqrt(ab) x0)    mean variance over pixels: chain / jump / 1 - ab")
for t in check_at:
    ab = float(sched.alphas_cumprod[t])
    target_mean = math.sqrt(ab) * x_start[0]
    for name, xs in (("chain", chain[t]), ("jump", jump[t])):
        rms = (xs.mean(0) - target_mean).pow(2).mean().sqrt().item()
        assert rms < 0.04, (name, t, rms)                 # Monte Carlo error: about sqrt((1 - ab) / N) = 0.02
    v_chain, v_jump = chain[t].var(0).mean().item(), jump[t].var(0).mean().item()
    print(f"{t:4d}   {ab:.4f}          {(chain[t].mean(0) - target_mean).pow(2).mean().sqrt():.4f} (chain)"
          f"          {v_chain:.3f} / {v_jump:.3f} / {1 - ab:.3f}")
    assert abs(v_chain - (1 - ab)) < 0.02 and abs(v_jump - (1 - ab)) < 0.02, (t, v_chain, v_jump)

# %%
# one pixel, three timesteps: histogram of the chain's samples vs the density that eq. 4 predicts
pixel = int(x_start[0].flatten().argmax())                # a bright pixel of the digit
fig, axes = plt.subplots(1, len(check_at), figsize=(10, 2.6))
for ax, t in zip(axes, check_at):
    ab = float(sched.alphas_cumprod[t])
    mu, sd = math.sqrt(ab) * float(x_start[0].flatten()[pixel]), math.sqrt(1 - ab)
    ax.hist(chain[t].flatten(1)[:, pixel].numpy(), bins=40, density=True, alpha=0.5, label="1000 one-step moves")
    grid = np.linspace(mu - 4 * sd, mu + 4 * sd, 200)
    ax.plot(grid, plots.normal_pdf((grid - mu) / sd) / sd, "k", lw=1.3, label="eq. 4: N(√ᾱ x₀, 1−ᾱ)")
    ax.set(title=f"t = {t}: ᾱ = {ab:.3f}", xlabel="pixel value")
axes[0].legend(fontsize=8, loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3 · What $x_t$ looks like on average
#
# Eq. 4 also tells us the statistics of all pixels of $x_t$ pooled over the dataset. With $\varepsilon$
# independent of $x_0$:
#
# $$
# \mathbb E[x_t] = \sqrt{\bar\alpha_t}\,\mathbb E[x_0], \qquad
# \operatorname{Var}[x_t] = \bar\alpha_t \operatorname{Var}[x_0] + (1 - \bar\alpha_t), \qquad
# \mathbb E[x_t^2] = \bar\alpha_t\,\mathbb E[x_0^2] + (1 - \bar\alpha_t).
# $$
#
# The digits are mostly dark background (pixel value −1), so $\mathbb E[x_0] \approx -0.39$ and
# $\operatorname{Var}[x_0] \approx 0.57$. As $\bar\alpha_t \to 0$, $x_t$ forgets both: its mean goes to 0 and its
# variance to 1. At the last step of the linear schedule $\bar\alpha_{T} \approx 4\cdot 10^{-5}$: the mean of $x_T$
# is off by only $\sqrt{\bar\alpha_T}\,\mathbb E[x_0] \approx -0.003$ and its variance by less than $10^{-4}$, so
# $x_T$ is, for all practical purposes, $\mathcal N(0, I)$ whatever $x_0$ was. That is why sampling can *start*
# from pure noise.

# %%
mean0, var0 = x0_all.mean().item(), x0_all.var().item()
noise_all = torch.randn(x0_all.shape, generator=torch.Generator().manual_seed(4))
print(f"x_0: mean {mean0:+.3f}, variance {var0:.3f}   ({x0_all.numel()} pixel values)\n")
print("   t   alpha_bar |  mean(x_t)  predicted |  var(x_t)  predicted")
for t in [0, 100, 250, 500, 750, T - 1]:
    ab = float(sched.alphas_cumprod[t])
    x_t = linear.q_sample(x0_all, torch.full((len(x0_all),), t), noise=noise_all)
    m_t, v_t = x_t.mean().item(), x_t.var().item()
    m_pred, v_pred = math.sqrt(ab) * mean0, ab * var0 + (1 - ab)
    print(f"{t:4d}    {ab:.4f}  |   {m_t:+.3f}    {m_pred:+.3f}  |   {v_t:.3f}     {v_pred:.3f}")
    assert abs(m_t - m_pred) < 0.01 and abs(v_t - v_pred) < 0.01, (t, m_t, m_pred, v_t, v_pred)

# the last step: standard normal
assert abs(m_t) < 0.01 and abs(v_t - 1) < 0.01, (m_t, v_t)
plots.plot_histogram_vs_normal(x_t, title=f"all pixels of $x_t$ at t = {T - 1}")
plt.show()

# %% [markdown]
# ## 4 · Noise schedules: linear, cosine, sigmoid
#
# The schedule decides *how fast* the signal is replaced by noise. Three common choices, all in
# `ddpm_lite.schedules`:
#
# * **linear** (Ho et al. 2020): $\beta_t$ linear from $10^{-4}$ to $0.02$;
# * **cosine** (Nichol & Dhariwal 2021, eq. 17): $\bar\alpha_t = f(t)/f(0)$ with
#   $f(t) = \cos^2\!\big(\tfrac{t/T + s}{1 + s}\cdot\tfrac{\pi}{2}\big)$, $s = 0.008$;
# * **sigmoid** (Jabri, Fleet & Chen 2022): $\bar\alpha_t$ follows a rescaled sigmoid of $t/T$. With its default
#   parameters (sigmoid from −3 to 3, temperature 1) it is close to cosine; its start, end and temperature move
#   the drop earlier or later. Larger images want a **noisier** schedule, shifted towards more noise (a lower
#   SNR at every $t$), not one that keeps more signal (Chen 2023, *On the Importance of Noise Scheduling for
#   Diffusion Models*): at the same noise level a large image still shows what it is, as the experiment below
#   explains.
#
# A useful single number per step is the **signal-to-noise ratio** (Kingma et al. 2021)
#
# $$
# \mathrm{SNR}(t) = \frac{\bar\alpha_t}{1 - \bar\alpha_t},
# $$
#
# the ratio of the signal's variance to the noise's variance in $x_t$ (`NoiseSchedule.snr`). It spans many orders
# of magnitude, so it is plotted on a log scale; $\log \mathrm{SNR} = 0$ is where signal and noise are equally
# strong.
#
# ### Exercise 1 · Build the cosine schedule (the rest of this notebook uses yours)
#
# Write `my_cosine_betas(T, s=0.008)` returning the cosine schedule's $\beta_t$ for `t = 0 … T-1`, a float64
# tensor of length $T$, from Nichol & Dhariwal's eq. 17:
#
# 1. evaluate $f(t) = \cos^2\!\big(\tfrac{t/T + s}{1 + s}\cdot\tfrac{\pi}{2}\big)$ at the $T + 1$ points
#    $t = 0, 1, \dots, T$ and set $\bar\alpha(t) = f(t)/f(0)$;
# 2. each step's $\beta$ is what takes $\bar\alpha$ from one point to the next:
#    $\beta_t = 1 - \bar\alpha(t+1)/\bar\alpha(t)$ for `t = 0 … T-1`;
# 3. $f(T) = \cos^2(\pi/2) = 0$ makes the last $\beta$ equal to 1, a step that erases everything. Clip $\beta$ at
#    0.999, as the paper does.
#
# The check compares your function with `ddpm_lite.schedules` for $T = 1000$ and $T = 50$. The next cells then
# build `NoiseSchedule(betas=my_cosine_betas(T))` and use it as "the cosine schedule" in every plot and experiment
# of this section.

# %%
def my_cosine_betas(T, s=0.008):
    ### BEGIN SOLUTION
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar_points = f / f[0]
    betas_cos = 1 - alpha_bar_points[1:] / alpha_bar_points[:-1]
    return betas_cos.clamp(max=0.999)
    ### END SOLUTION


nb01.check_cosine_betas(my_cosine_betas)

# %%
schedules = {"linear": NoiseSchedule("linear", T),
             "cosine": NoiseSchedule(betas=my_cosine_betas(T)),   # yours (Exercise 1)
             "sigmoid": NoiseSchedule("sigmoid", T)}
plots.plot_schedules(schedules)
plt.show()

print("schedule   ᾱ at t = 250     500       750       999")
for name, s in schedules.items():
    ab = s.alphas_cumprod
    print(f"{name:8s}   {ab[250]:.3f}         {ab[500]:.3f}     {ab[750]:.3f}     {ab[999]:.1e}")
    assert torch.all(ab[1:] < ab[:-1]) and torch.allclose(s.snr, ab / (1 - ab))
# half-way through, the linear schedule has left less than 8 % of the signal's variance; cosine and sigmoid half
assert schedules["linear"].alphas_cumprod[500] < 0.08
assert abs(schedules["cosine"].alphas_cumprod[500] - 0.5) < 0.02
assert abs(schedules["sigmoid"].alphas_cumprod[500] - 0.5) < 0.02

# %% [markdown]
# ### How fast does the information disappear?
#
# $\bar\alpha_t$ is abstract. A more concrete question: *given only $x_t$, could we still tell which image it
# came from?* Take 256 digits, noise each of them to step $t$, and for every noisy image guess which of the 256
# originals it came from. Since $x_t \sim \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$, the best guess
# is the original $x_0^{(i)}$ that minimises $\lVert x_t - \sqrt{\bar\alpha_t}\,x_0^{(i)} \rVert$. With no
# information left the accuracy falls to chance, $1/256$.
#
# **Predict, then run.** Take the linear schedule at the first step where $\mathrm{SNR}(t) < 1$, i.e. where each
# pixel of $x_t$ holds as much noise variance as signal variance (the cell prints that $t$). What share of the
# 256 noisy digits will this guess trace back to the right original? (a) most of them, 50 % or more; (b) some of
# them, 10 % to 50 %; (c) almost none, under 10 %: with as much noise as signal the digit is lost. Commit to an
# answer before running the cells after it.

# %%
t_snr1 = int(torch.nonzero(schedules["linear"].snr < 1)[0])
print(f"linear schedule: SNR(t) < 1 from t = {t_snr1} on (ᾱ_t = {schedules['linear'].alphas_cumprod[t_snr1]:.3f})")
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "a"
### END SOLUTION
nb01.commit_identify_prediction(prediction)

# %%
x_id = x0_all[:256]
ts_grid = list(range(0, T, 20))
id_gen = torch.Generator().manual_seed(5)

def identification_accuracy(diffusion, t):
    # fraction of noisy images x_t whose nearest scaled original sqrt(ab_t) x_0 is their own x_0
    x_t = diffusion.q_sample(x_id, torch.full((len(x_id),), t), generator=id_gen).flatten(1)
    scaled = diffusion.schedule.sqrt_alphas_cumprod[t].item() * x_id.flatten(1)
    return (torch.cdist(x_t, scaled).argmin(1) == torch.arange(len(x_id))).float().mean().item()

accuracy, half_life = {}, {}
for name in SCHEDULES:
    d = GaussianDiffusion(schedules[name])           # the cosine one is yours
    accuracy[name] = [identification_accuracy(d, t) for t in ts_grid]
    half_life[name] = next(t for t, a in zip(ts_grid, accuracy[name]) if a < 0.5)

fig, ax = plt.subplots(figsize=(6, 3))
for name in SCHEDULES:
    ax.plot(ts_grid, accuracy[name], label=f"{name}: below 50 % from t ≈ {half_life[name]}",
            color=plots.SCHEDULE_COLORS[name])
ax.axhline(1 / len(x_id), color="k", lw=0.8, ls=":", label="chance (1/256)")
ax.set(xlabel="t", ylabel="images identified", title="which of 256 digits did $x_t$ come from?")
ax.legend(fontsize=8)
plt.show()

print({name: half_life[name] for name in SCHEDULES})
assert half_life["linear"] < 400 < half_life["cosine"] and half_life["sigmoid"] > 400

# %%
# the prediction: the linear schedule at SNR = 1, measured on 4 independent draws of the noise (4 × 256 images)
id_gen = torch.Generator().manual_seed(8)
linear_d = GaussianDiffusion(schedules["linear"])
acc_snr1 = sum(identification_accuracy(linear_d, t_snr1) for _ in range(4)) / 4
pair_dist = torch.cdist(x_id.flatten(1), x_id.flatten(1)).fill_diagonal_(float("inf"))
nn_dist = pair_dist.min(1).values.median().item()       # a digit's nearest other digit, typically
nb01.reveal_identify(prediction, acc_snr1, t_snr1, nn_dist, float(schedules["linear"].alphas_cumprod[t_snr1]))
assert acc_snr1 > 0.5, acc_snr1

# %% [markdown]
# With the linear schedule the identity of an 8×8 digit is mostly gone after about 300 of the 1000 steps, so a
# large share of the steps is spent on images that are pure noise for all practical purposes. The cosine and
# sigmoid schedules destroy information more evenly over the whole range. Nichol & Dhariwal (2021) observed the
# same on 32×32 and 64×64 images (the last part of the linear schedule is almost pure noise and contributes
# little) and introduced the cosine schedule for it. (Larger images have more
# redundant pixels and keep their identity longer under the same schedule, so for them the same $t$ is *less*
# destructive. That is why the best schedule depends on the image size, and why larger images need schedules
# shifted towards more noise (Chen 2023; Hoogeboom et al. 2023 shift $\log\mathrm{SNR}$ down by $2\log(d/64)$
# for $d \times d$ images).)
#
# The same digit under the three schedules:

# %%
one = x0_all[7:8].expand(len(ts_show), -1, -1, -1)
eps_one = torch.randn(one[:1].shape, generator=torch.Generator().manual_seed(6)).expand_as(one)
rows = [GaussianDiffusion(schedules[name]).q_sample(one, torch.tensor(ts_show), noise=eps_one) for name in SCHEDULES]
fig, axes = plt.subplots(len(SCHEDULES), 1, figsize=(7, 3.2))
for ax, name, row in zip(axes, SCHEDULES, rows):
    plots.show_images(row, nrow=len(ts_show), ax=ax)
    ax.text(-1, 4.5, name, ha="right", va="center", fontsize=10)
axes[0].set_title("t = " + ", ".join(map(str, ts_show)), fontsize=10)
plt.show()

# %% [markdown]
# ## 5 · The noise-step explorer
#
# Drag the slider to move $t$, and pick a schedule in the dropdown. The widget shows
#
# * **left:** $x_t$ for 16 digits (with one fixed draw of $\varepsilon$, so the pictures change smoothly);
# * **middle:** the histogram of *all* pixel values of $x_t$ (512 digits), against the standard normal density;
# * **right:** $\bar\alpha_t$ of the three schedules, with the current $t$ marked on the selected one.
#
# The line of text underneath compares the empirical mean and variance of $x_t$ with eq. 4's prediction.
# Things to try: find the $t$ where the digits become unreadable under each schedule; watch the histogram turn
# from two spikes (background at −1, ink near +1) into a bell curve; compare where the three schedules reach
# $\bar\alpha_t = 0.5$.
#
# *(The widget needs a running kernel: if you only see a text placeholder, run the cell.)*

# %%
explorer = NoiseStepExplorer(x0_all[:512], schedules=SCHEDULES, T=T, t=250, seed=0, n_show=16)
explorer

# %% [markdown]
# The widget can also be driven from code (handy for checking numbers): its slider is `explorer.slider`, its
# schedule menu `explorer.dropdown`, and `explorer.stats` holds what the text line shows. At the last step every
# schedule gives mean ≈ 0 and variance ≈ 1:

# %%
for name in SCHEDULES:
    explorer.dropdown.value = name
    explorer.slider.value = T - 1
    s = explorer.stats
    print(f"{name:8s} t = {s['t']}: ᾱ = {s['alpha_bar']:.1e}, mean {s['mean']:+.3f}, var {s['var']:.3f} "
          f"(eq. 4: {s['expected_mean']:+.3f}, {s['expected_var']:.3f})")
    assert abs(s["mean"]) < 0.02 and abs(s["var"] - 1) < 0.02, s
    assert abs(s["var"] - s["expected_var"]) < 0.02, s

explorer.dropdown.value, explorer.slider.value = "linear", 250     # back to where it started

# %% [markdown]
# ## 6 · Exercises
#
# Each exercise has a code cell to complete and a check that prints **✅ Correct** or tells you what is wrong.
# Exercise 1 (the cosine schedule) and the predict-then-run question are in §4, where the notebook uses them.
#
# ### Exercise 2 · $\bar\alpha_t$ from $\beta_t$
#
# Given the betas of the linear schedule (a float64 tensor of length $T$), compute the tensor `alpha_bar` with
# $\bar\alpha_t = \prod_{s=0}^{t} (1 - \beta_s)$ for every `t` (0-based). One line of `torch` is enough.

# %%
betas = NoiseSchedule("linear", T).betas
### BEGIN SOLUTION
alpha_bar = torch.cumprod(1 - betas, dim=0)
### END SOLUTION
nb01.check_alpha_bar(alpha_bar, betas)


# %% [markdown]
# ### Exercise 3 · `q_sample` by hand
#
# Write the closed form (eq. 4) yourself: `my_q_sample(x0, t, noise, alphas_cumprod)` gets a batch `x0` of shape
# `[B, 1, 8, 8]`, a vector `t` of `B` timesteps (one per image, `torch.long`), the noise $\varepsilon$ (same shape
# as `x0`) and the table $\bar\alpha$ (length $T$), and returns $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$.
#
# *Hint:* `alphas_cumprod[t]` has shape `[B]`; reshape it to `[B, 1, 1, 1]` so it broadcasts over the pixels.

# %%
def my_q_sample(x0, t, noise, alphas_cumprod):
    ### BEGIN SOLUTION
    ab = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    ### END SOLUTION


nb01.check_q_sample(my_q_sample)

# %% [markdown]
# ### Exercise 4 · Where does the signal lose?
#
# For the **cosine** schedule with $T = 1000$, find the first timestep `t_cross` (0-based) at which noise
# outweighs signal, i.e. $\mathrm{SNR}(t) < 1$. Use `NoiseSchedule("cosine", T).snr`. Then compare with the
# explorer: where does the cosine curve cross $\bar\alpha_t = 0.5$?

# %%
### BEGIN SOLUTION
snr = NoiseSchedule("cosine", T).snr
t_cross = int(torch.nonzero(snr < 1)[0])
### END SOLUTION
nb01.check_snr_crossing(t_cross, schedule="cosine", T=T)

# %% [markdown]
# ## Summary
#
# * The forward process adds Gaussian noise in $T$ small steps,
#   $q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$; it is fixed, nothing is learned.
# * The steps compose into one Gaussian, $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$
#   with $\bar\alpha_t = \prod_{s\le t}(1-\beta_s)$. We checked it exactly (the mean/variance recursion agrees to
#   $10^{-12}$) and by simulation (1000 one-step moves vs one jump). It lets training jump to any $t$ at once.
# * Pooled over pixels, $\mathbb E[x_t] = \sqrt{\bar\alpha_t}\,\mathbb E[x_0]$ and
#   $\operatorname{Var}[x_t] = \bar\alpha_t \operatorname{Var}[x_0] + 1 - \bar\alpha_t$; at the last step $x_T$ is
#   $\mathcal N(0, I)$ for all practical purposes, so sampling can start from pure noise.
# * The schedule sets how fast information disappears. The linear schedule wipes out 8×8 digits after about a
#   third of the steps; cosine and sigmoid spread the destruction over the whole range. $\mathrm{SNR}(t)$ on a
#   log scale is the clearest way to compare schedules. You built the cosine schedule from eq. 17 yourself.
# * Per-pixel SNR understates what survives: at SNR = 1 most of 256 digits can still be told apart, because the
#   evidence adds up over the pixels (the more pixels, the longer an image keeps its identity).
#
# ## What comes next
#
# **02 · q and p, the math** runs the film backwards. If we knew $x_0$, the step back
# $q(x_{t-1} \mid x_t, x_0)$ would be a Gaussian with a closed form (the *posterior*). We do not know $x_0$ when
# sampling, so a network learns to predict it (or the noise $\varepsilon$) from $x_t$: that is the reverse process
# $p_\theta$, its training objective (the ELBO and the simple loss $L_\text{simple}$), and the first learned
# denoiser, on 2D data beside the exact one.
#
# **References.** J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020 (eqs. 2, 4).
# A. Nichol, P. Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, ICML 2021 (cosine schedule).
# A. Jabri, D. Fleet, T. Chen, *Scalable Adaptive Computation for Iterative Generation*, 2022 (sigmoid schedule).
# T. Chen, *On the Importance of Noise Scheduling for Diffusion Models*, 2023 (noisier schedules for larger images).
# E. Hoogeboom, J. Heek, T. Salimans, *simple diffusion: End-to-end diffusion for high resolution images*, ICML 2023
# (shifted schedules).
# D. Kingma, T. Salimans, B. Poole, J. Ho, *Variational Diffusion Models*, NeurIPS 2021 (SNR).
