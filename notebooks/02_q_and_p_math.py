# %% [markdown]
# # 02 · q and p: the maths of DDPM
#
# Notebook 01 ran the film forwards: data → noise, with a fixed recipe $q$. A generative model has to run it
# **backwards**: noise → data. This notebook derives every formula of Ho, Jain & Abbeel (2020) that makes
# that possible, and checks each one numerically against `ddpm_lite`, so no step is taken on faith.
#
# **What you will learn**
#
# * the forward step $q(x_t \mid x_{t-1})$ (eq. 2), and why $t$ steps of it collapse into one Gaussian
#   $q(x_t \mid x_0)$ (eq. 4): derived, then checked by simulation;
# * the **posterior** $q(x_{t-1} \mid x_t, x_0)$ (eqs. 6–7): derived from Bayes' rule, checked on a grid and by
#   Monte Carlo; you will code its coefficients yourself;
# * the **reverse process** $p_\theta(x_{t-1} \mid x_t)$ with its two variance choices $\sigma_t^2 = \beta_t$ or
#   $\tilde\beta_t$. You **write one reverse step yourself** (Exercise 2), and §8 samples with 1000 of your steps;
# * a **predict-then-run** question: which of the two variances gives the tighter likelihood bound?
# * the **variational bound** (ELBO) split into $L_T$, $L_{t-1}$ and $L_0$, measured in bits/dim, and the
#   **simple loss** $L_\text{simple}$ (eq. 14): why DDPM drops the bound's weights and trains better for it;
# * the weighting each loss puts on the steps $t$: the bound's $\lambda_t$, $L_\text{simple}$'s implicit one, and
#   the **min-SNR-γ** weighting (Hang et al. 2023) that the course's `Trainer` uses by default;
# * the **ε, $x_0$ and v parameterisations** and how to convert between them;
# * a small network trained for 15 s on 2D data, side by side with the **exact optimal denoiser**: where does
#   it lose, and how many bits/dim does that cost?
# * how the names in the source material (`perturb_x`, `remove_noise`, `get_losses`, …) map to `ddpm_lite`.
#
# *Run time: about a minute on a laptop CPU (15 s of it training a small network).*
#
# Notation: `ddpm_lite` indexes timesteps from 0, so index `t` is the paper's step $t+1$; index `T-1 = 999` is
# the noisiest. In formulas we use the paper's numbering; in code, the index.

# %%
import math
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ddpm_lite import plots, samplers
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.exercises import nb02
from ddpm_lite.losses import min_snr_weight
from ddpm_lite.toy_mlp import ToyMLP
from ddpm_lite.toys import ExactGMMDenoiser, GaussianMixture
from ddpm_lite.train import TrainConfig

plots.setup()                # small figures (72 dpi)
torch.set_num_threads(1)     # every tensor here is small: extra threads only add overhead on a busy CPU
NOTEBOOK_START = time.perf_counter()

diffusion = GaussianDiffusion("linear", 1000)   # Ho et al.'s schedule: β from 1e-4 to 0.02, T = 1000
s = diffusion.schedule                          # every coefficient of the schedule, in float64
T = diffusion.num_timesteps
print(diffusion)
print(s)

# %% [markdown]
# ## 1 · One forward step: $q(x_t \mid x_{t-1})$ (eq. 2)
#
# The forward process adds a little Gaussian noise at each step and shrinks the signal so that the variance
# stays bounded:
#
# $$
# q(x_t \mid x_{t-1}) = \mathcal N\!\big(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big),
# \qquad\text{i.e.}\qquad x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon_t,\quad \alpha_t = 1-\beta_t .
# $$
#
# `GaussianDiffusion.q_step(x_prev, t)` is exactly this line. Below we run it 1000 times on 10 000 copies of
# two 1D data sets: a single point $x_0 = 0.8$, and a two-point distribution $x_0 = \pm 0.8$. We keep the
# mean and the standard deviation of $x_t$ after every step (float64, so only Monte-Carlo noise is left).

# %%
N = 10_000
gen = torch.Generator().manual_seed(1)
x0_point = torch.full((N, 1), 0.8, dtype=torch.float64)                         # data set 1: x0 = 0.8
x0_pm = 0.8 * torch.where(torch.rand(N, 1, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)  # ±0.8
x0_1d = torch.cat([x0_point, x0_pm], dim=1)                                      # N×2: both at once

x = x0_1d.clone()
means, stds, snapshots = [], [], {}
for i in range(T):                                                               # 1000 steps of eq. 2
    x = diffusion.q_step(x, torch.full((N,), i), generator=gen)
    means.append(x[:, 0].mean().item())
    stds.append(x[:, 0].std().item())
    if i in (49, 249, 999):
        snapshots[i] = x.clone()
means, stds = np.array(means), np.array(stds)
print("after 1000 steps: mean %.4f, std %.4f (x0 = 0.8)" % (means[-1], stds[-1]))

# %% [markdown]
# ## 2 · The closed form $q(x_t \mid x_0)$ (eq. 4)
#
# **Derivation.** Unroll two steps. With independent $\varepsilon_{t}, \varepsilon_{t-1} \sim \mathcal N(0, I)$,
#
# $$
# x_t = \sqrt{\alpha_t}\big(\sqrt{\alpha_{t-1}}\,x_{t-2} + \sqrt{1-\alpha_{t-1}}\,\varepsilon_{t-1}\big)
#       + \sqrt{1-\alpha_t}\,\varepsilon_t .
# $$
#
# The two noise terms are independent Gaussians, so their sum is one Gaussian whose variance is the sum of the
# variances: $\alpha_t(1-\alpha_{t-1}) + (1-\alpha_t) = 1 - \alpha_t\alpha_{t-1}$. Hence
# $x_t = \sqrt{\alpha_t\alpha_{t-1}}\,x_{t-2} + \sqrt{1-\alpha_t\alpha_{t-1}}\,\bar\varepsilon$, the same form
# with $\alpha_t\alpha_{t-1}$ in place of $\alpha_t$. By induction, with $\bar\alpha_t = \prod_{s\le t}\alpha_s$,
#
# $$
# q(x_t \mid x_0) = \mathcal N\!\big(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon .
# $$
#
# This is `diffusion.q_sample(x0, t)` (and `q_mean_variance` gives its mean and variance). It lets training
# jump to any $t$ in one line instead of $t$ steps. **Check:** the curves of the 1000 iterated steps must lie
# on the closed form, and `q_sample` must give the same statistics and the same distribution.

# %%
mean_cf = (s.sqrt_alphas_cumprod * 0.8).numpy()            # √ᾱ_t · x0
std_cf = s.sqrt_one_minus_alphas_cumprod.numpy()           # √(1 − ᾱ_t)
err_mean = np.abs(means - mean_cf).max()
err_std = np.abs(stds - std_cf).max()
print(f"iterated eq. 2 vs closed form eq. 4, worst over all 1000 t: |Δmean| = {err_mean:.4f}, |Δstd| = {err_std:.4f}")

# q_sample jumps straight to t: compare its statistics (and, for ±0.8, the whole distribution) at three t
for i, x_it in snapshots.items():
    x_direct = diffusion.q_sample(x0_1d, torch.full((N,), i), generator=gen)
    print(f"t = {i:3d}: mean {x_it[:, 0].mean():.4f} (iterated) / {x_direct[:, 0].mean():.4f} (q_sample) / "
          f"{mean_cf[i]:.4f} (eq. 4);  var {x_it[:, 0].var():.4f} / {x_direct[:, 0].var():.4f} / {std_cf[i]**2:.4f}")
    q = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)   # quantiles of the ±0.8 data: same distribution?
    dq = (torch.quantile(x_it[:, 1], q) - torch.quantile(x_direct[:, 1], q)).abs().max().item()
    print(f"         x0 = ±0.8: largest gap between the 5 %, 10 %, …, 95 % quantiles: {dq:.3f}")
    assert abs(x_it[:, 0].mean() - x_direct[:, 0].mean()) < 0.04 and abs(x_it[:, 0].var() - x_direct[:, 0].var()) < 0.04
    assert dq < 0.08
assert err_mean < 0.035 and err_std < 0.035, (err_mean, err_std)   # Monte-Carlo noise with N = 10 000: ~0.01

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
tt = np.arange(T)
axes[0].plot(tt, means, lw=2, label="iterated eq. 2: mean")
axes[0].plot(tt, mean_cf, "k--", lw=1, label=r"eq. 4: $\sqrt{\bar\alpha_t}\,x_0$")
axes[0].plot(tt, stds, lw=2, label="iterated eq. 2: std")
axes[0].plot(tt, std_cf, "k:", lw=1, label=r"eq. 4: $\sqrt{1-\bar\alpha_t}$")
axes[0].set(xlabel="t (index)", title=r"$x_0 = 0.8$: 1000 small steps = one jump")
axes[0].legend(fontsize=8)
for ax, i in zip(axes[1:], (49, 249)):
    x_direct = diffusion.q_sample(x0_1d, torch.full((N,), i), generator=gen)
    bins = np.linspace(-2.5, 2.5, 81)
    ax.hist(snapshots[i][:, 1].numpy(), bins=bins, density=True, alpha=0.5, label="iterated eq. 2")
    ax.hist(x_direct[:, 1].numpy(), bins=bins, density=True, histtype="step", lw=1.5, color="k", label="q_sample (eq. 4)")
    ax.set(title=rf"$x_0 = \pm 0.8$, t = {i}", xlabel="$x_t$")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3 · The posterior $q(x_{t-1} \mid x_t, x_0)$ (eqs. 6–7)
#
# Going *backwards* one step is hard in general: $q(x_{t-1} \mid x_t)$ depends on the whole data distribution.
# But if we also know $x_0$, it is a Gaussian in closed form. By Bayes' rule (and the Markov property
# $q(x_t \mid x_{t-1}, x_0) = q(x_t \mid x_{t-1})$):
#
# $$
# q(x_{t-1} \mid x_t, x_0) \;\propto\; \underbrace{q(x_t \mid x_{t-1})}_{\text{eq. 2}}\;
# \underbrace{q(x_{t-1} \mid x_0)}_{\text{eq. 4 at } t-1}
# \;\propto\; \exp\!\Big(-\frac{(x_t - \sqrt{\alpha_t}x_{t-1})^2}{2\beta_t}
# -\frac{(x_{t-1} - \sqrt{\bar\alpha_{t-1}}x_0)^2}{2(1-\bar\alpha_{t-1})}\Big).
# $$
#
# The exponent is quadratic in $x_{t-1}$, so the posterior is Gaussian. Its precision is the sum of the two
# precisions, $\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}} = \frac{1-\bar\alpha_t}{\beta_t(1-\bar\alpha_{t-1})}$,
# and its mean is the precision-weighted combination of $x_t$ and $x_0$:
#
# $$
# q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(x_{t-1};\ \tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\big),\qquad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,
# \qquad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .
# $$
#
# `diffusion.q_posterior_mean_variance(x0, xt, t)` returns $(\tilde\mu_t, \tilde\beta_t, \log\tilde\beta_t)$.
# Two independent checks follow: **Bayes' rule on a grid** (multiply the two densities numerically and
# normalise), and **Monte Carlo** (simulate pairs $(x_{t-1}, x_t)$ from the forward process and regress
# $x_{t-1}$ on $x_t$: the slope, intercept and residual variance must be the coefficients of eq. 7).

# %%
t_post, x0_val, xt_val = 300, 0.5, 0.2            # index t (the paper's step 301), one x0 and one x_t
a_t, beta_t, ab_prev = s.alphas[t_post], s.betas[t_post], s.alphas_cumprod_prev[t_post]

mean_eq7, var_eq7, _ = diffusion.q_posterior_mean_variance(
    torch.tensor([[x0_val]], dtype=torch.float64), torch.tensor([[xt_val]], dtype=torch.float64),
    torch.tensor([t_post]))
mean_eq7, var_eq7 = mean_eq7.item(), var_eq7.item()

# (a) Bayes' rule on a fine grid, in float64
grid = torch.linspace(-2, 2, 400_001, dtype=torch.float64)
log_post = (-(xt_val - a_t.sqrt() * grid) ** 2 / (2 * beta_t)                      # log q(x_t | x_{t-1})
            - (grid - ab_prev.sqrt() * x0_val) ** 2 / (2 * (1 - ab_prev)))         # log q(x_{t-1} | x_0)
w = torch.softmax(log_post, dim=0)
mean_grid = (w * grid).sum().item()
var_grid = (w * (grid - mean_grid) ** 2).sum().item()
print(f"posterior mean: eq. 7 {mean_eq7:.8f}   grid {mean_grid:.8f}")
print(f"posterior var : eq. 7 {var_eq7:.8f}   grid {var_grid:.8f}")
assert abs(mean_grid - mean_eq7) < 1e-7 and abs(var_grid / var_eq7 - 1) < 1e-5

# (b) Monte Carlo: x_{t-1} ~ q(x_{t-1}|x0), then x_t ~ q(x_t|x_{t-1}); least squares x_{t-1} ≈ slope·x_t + intercept
M = 400_000
gen = torch.Generator().manual_seed(3)
x0_mc = torch.full((M, 1), x0_val, dtype=torch.float64)
x_prev = diffusion.q_sample(x0_mc, torch.full((M,), t_post - 1), generator=gen)
x_t = diffusion.q_step(x_prev, torch.full((M,), t_post), generator=gen)
A = torch.cat([x_t, torch.ones_like(x_t)], dim=1)
sol = torch.linalg.lstsq(A, x_prev).solution
slope, intercept = sol[0, 0].item(), sol[1, 0].item()
resid_var = (x_prev - A @ sol).var().item()
c1, c2, bt = s.posterior_mean_coef1[t_post].item(), s.posterior_mean_coef2[t_post].item(), s.posterior_variance[t_post].item()
print(f"slope     {slope:.5f}  vs coef2 = √α_t(1−ᾱ_(t−1))/(1−ᾱ_t) = {c2:.5f}")
print(f"intercept {intercept:.5f}  vs coef1·x0 = √ᾱ_(t−1)β_t/(1−ᾱ_t)·x0 = {c1 * x0_val:.5f}")
print(f"residual variance {resid_var:.6f}  vs β̃_t = {bt:.6f}")
assert abs(slope / c2 - 1) < 0.01 and abs(intercept - c1 * x0_val) < 5e-4 and abs(resid_var / bt - 1) < 0.01

fig, ax = plt.subplots(figsize=(6, 3.2))
near = (x_t[:, 0] - xt_val).abs() < 0.005                                          # condition on x_t ≈ 0.2
ax.hist(x_prev[near, 0].numpy(), bins=60, density=True, alpha=0.5, label=f"Monte Carlo, $x_t \\approx {xt_val}$")
ax.plot(grid.numpy(), (w / (grid[1] - grid[0])).numpy(), "k", lw=1.5, label="Bayes on a grid")
ax.axvline(mean_eq7, color="C1", ls="--", label=r"$\tilde\mu_t$ (eq. 7)")
ax.set(xlim=(mean_eq7 - 5 * math.sqrt(var_eq7), mean_eq7 + 5 * math.sqrt(var_eq7)), xlabel="$x_{t-1}$",
       title=f"q(x_(t-1) | x_t = {xt_val}, x_0 = {x0_val}) at t = {t_post}")
ax.legend(fontsize=8)
plt.show()


# %% [markdown]
# ### Exercise 1 · The posterior mean coefficients
#
# Write `posterior_coefficients(betas)` that returns the two coefficients of eq. 7 for every timestep, as two
# tensors of length $T$:
#
# $$
# \texttt{coef1}_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\ \ (\text{multiplies } x_0),\qquad
# \texttt{coef2}_t = \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\ \ (\text{multiplies } x_t).
# $$
#
# Only `betas` is given: build $\alpha_t$, $\bar\alpha_t$ (`torch.cumprod`) and $\bar\alpha_{t-1}$ yourself. Mind the
# first step: before any noise is added, $\bar\alpha_{t-1}$ is 1. Do not use `NoiseSchedule`'s attributes.

# %%
def posterior_coefficients(betas):
    # betas: [T] tensor of β_t. Return (coef1, coef2), each [T].
    ### BEGIN SOLUTION
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, dim=0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
    coef1 = alpha_bar_prev.sqrt() * betas / (1 - alpha_bar)
    coef2 = alphas.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    ### END SOLUTION
    return coef1, coef2


coef1, coef2 = posterior_coefficients(s.betas)
print("coef1 at t = 0, 300, 999:", coef1[[0, 300, 999]].numpy().round(5))
print("coef2 at t = 0, 300, 999:", coef2[[0, 300, 999]].numpy().round(5))

# %%
nb02.check_posterior_coefficients(posterior_coefficients)

# %% [markdown]
# ## 4 · The reverse process $p_\theta(x_{t-1} \mid x_t)$
#
# To generate we must step backwards *without* knowing $x_0$. DDPM models each backward step as a Gaussian,
#
# $$
# p_\theta(x_{t-1} \mid x_t) = \mathcal N\big(x_{t-1};\ \mu_\theta(x_t, t),\ \sigma_t^2 I\big),
# $$
#
# and makes it imitate the posterior of §3: a network predicts $\hat x_0$ (or the noise $\hat\varepsilon$) from
# $x_t$, and $\mu_\theta$ is the posterior mean with that prediction plugged in, $\mu_\theta = \tilde\mu_t(x_t, \hat x_0)$.
# With $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ this simplifies to eq. 11:
#
# $$
# \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\Big).
# $$
#
# The variance is not learned in DDPM. Ho et al. tried two values with similar samples (§3.2):
# $\sigma_t^2 = \beta_t$ (`variance="fixed_large"`, right if $x_0 \sim \mathcal N(0, I)$) and
# $\sigma_t^2 = \tilde\beta_t$ (`"fixed_small"`, right if $x_0$ is a single point). `p_mean_variance` returns both
# the mean and the variance; `p_sample` adds the noise (Algorithm 2, line 4).
#
# **A perfect model to test with.** For a mixture of Gaussians, every quantity a diffusion model learns has a
# closed form: the noised data $q(x_t)$ is again a mixture, so the best possible noise prediction
# $\mathbb E[\varepsilon \mid x_t]$ can be computed exactly. `ExactGMMDenoiser` wraps it as a model. Our toy: 8
# Gaussians on a ring, radius 0.7, standard deviation 0.07.

# %%
gmm = GaussianMixture.ring(8, radius=0.7, std=0.07)
exact = ExactGMMDenoiser(gmm, s)                      # model(x_t, t) = E[ε | x_t], exactly
small = GaussianDiffusion("linear", T, variance="fixed_small")   # σ_t² = β̃_t
large = GaussianDiffusion("linear", T, variance="fixed_large")   # σ_t² = β_t

gen = torch.Generator().manual_seed(4)
x0_toy = gmm.sample(512, generator=gen)
t_toy = torch.randint(1, T, (512,), generator=gen)
xt_toy = diffusion.q_sample(x0_toy, t_toy, generator=gen)
out_small = small.p_mean_variance(exact, xt_toy, t_toy, clip_denoised=False)
out_large = large.p_mean_variance(exact, xt_toy, t_toy, clip_denoised=False)

# eq. 11 by hand, from the model's ε
eps_hat = exact(xt_toy, t_toy)
col = lambda v: v[t_toy].float()[:, None]
mu_eq11 = (xt_toy - col(s.betas) / col(s.sqrt_one_minus_alphas_cumprod) * eps_hat) / col(s.alphas).sqrt()
err_mu = max((out_small["mean"] - mu_eq11).abs().max().item(), (out_large["mean"] - mu_eq11).abs().max().item())
err_var = max((out_small["variance"] / col(s.posterior_variance) - 1).abs().max().item(),
              (out_large["variance"] / col(s.betas) - 1).abs().max().item())
print(f"p_mean_variance vs eq. 11: max |Δμ| = {err_mu:.2e};  variances β̃_t / β_t: max relative error {err_var:.2e}")
assert err_mu < 1e-4 and err_var < 1e-5

ratio = (s.posterior_variance / s.betas).numpy()
print("β̃_t / β_t at t = 1, 10, 100, 999:", ratio[[1, 10, 100, 999]].round(4))
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].semilogy(s.betas.numpy(), label=r"$\beta_t$ (fixed_large)")
axes[0].semilogy(np.arange(1, T), s.posterior_variance[1:].numpy(), label=r"$\tilde\beta_t$ (fixed_small)")
axes[0].set(xlabel="t (index)", title=r"the two choices of $\sigma_t^2$")
axes[0].legend()
axes[1].plot(np.arange(1, T), ratio[1:])
axes[1].set(xlabel="t (index)", title=r"$\tilde\beta_t / \beta_t = (1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$", ylim=(0, 1.05))
plt.tight_layout()
plt.show()


# %% [markdown]
# The two variances differ only in the first few dozen steps, where $\tilde\beta_t \ll \beta_t$; after that they
# agree to within a percent. They matter for the log-likelihood (next section) more than for the samples.
#
# ### Exercise 2 · One reverse step (§8 samples with it)
#
# Write `reverse_step(model, x_t, t, z, sched)`, one step of Algorithm 2 (line 4): given a batch `x_t`, the
# timestep `t` (a Python `int`, the same for the whole batch, 0-based), fresh noise `z` of the shape of `x_t` and
# the schedule `sched` (a `NoiseSchedule`: `sched.alphas`, `sched.betas`, `sched.alphas_cumprod`,
# `sched.posterior_variance` $= \tilde\beta_t$), return
#
# $$
# x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\Big)
# + \sigma_t z,\qquad \sigma_t^2 = \tilde\beta_t .
# $$
#
# The model wants one timestep per sample: call it as `model(x_t, torch.full((B,), t))`. No clipping. At the last
# step, `t = 0`, $\tilde\beta_0 = 0$, so no noise is added. The check compares your step with
# `p_mean_variance` at several $t$ and names the usual mistakes.

# %%
def reverse_step(model, x_t, t, z, sched):
    ### BEGIN SOLUTION
    eps_hat = model(x_t, torch.full((x_t.shape[0],), t))
    a_t, b_t, ab_t = sched.alphas[t], sched.betas[t], sched.alphas_cumprod[t]
    mean = (x_t - b_t / (1 - ab_t).sqrt() * eps_hat) / a_t.sqrt()
    return mean + sched.posterior_variance[t].sqrt() * z
    ### END SOLUTION


nb02.check_reverse_step(reverse_step)

# %% [markdown]
# ## 5 · The variational bound: $L_T$, $L_{t-1}$, $L_0$ (eq. 5)
#
# Training maximises (a bound on) the likelihood. Because $q$ is fixed and every step is Gaussian, the
# negative log-likelihood is bounded by a sum of simple terms (eq. 5):
#
# $$
# -\log p_\theta(x_0) \;\le\; \mathbb E_q\Big[\underbrace{D_\text{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{L_T}
# + \sum_{t>1} \underbrace{D_\text{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)}_{L_{t-1}}
# \underbrace{-\log p_\theta(x_0\mid x_1)}_{L_0}\Big].
# $$
#
# * $L_T$ compares the end of the forward process with the prior $\mathcal N(0, I)$. It has no parameters and
#   is $\approx 0$ when $\bar\alpha_T \approx 0$ (`prior_bpd`).
# * Each $L_{t-1}$ is a KL between **two Gaussians**, the posterior of §3 and the model of §4, so it has a
#   closed form (`losses.normal_kl`; `vb_terms_bpd` for $t > 0$).
# * $L_0$ is a *discretized* Gaussian decoder (eq. 13): data live on a grid of grey levels, and $L_0$ is minus
#   the log of the probability mass of the right bin (`vb_terms_bpd` at $t = 0$).
#
# `calc_bpd_loop` evaluates every term (one model call per $t$). Dividing nats by $D \ln 2$ gives
# **bits per dimension**, the unit of the DDPM paper (3.75 bits/dim on CIFAR-10). To give the 2D toy a grid,
# we quantise its points to 256 levels per coordinate, like 8-bit pixels. Then the *true* negative
# log-likelihood is known too: $-\log_2 \big(p(x)\,\Delta^2\big)/2$ with bin width $\Delta = 2/255$; no model can
# beat it on average. Here is the bound of the **exact** model with $\sigma_t^2 = \beta_t$ (and, for the question
# below, with $\tilde\beta_t$).
#
# **Predict, then run.** The exact denoiser's bound is computed twice: with $\sigma_t^2 = \beta_t$ and with
# $\sigma_t^2 = \tilde\beta_t$, the variance of the posterior $q(x_{t-1} \mid x_t, x_0)$ of §3. Which gives the
# lower (tighter) bound? (a) $\tilde\beta_t$, the posterior's own variance; (b) $\beta_t$, the larger one; (c) they
# agree within 0.05 bits/dim, since with 1000 small steps the variance hardly matters. Commit before running
# the next cells.

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "b"
### END SOLUTION
nb02.commit_variance_prediction(prediction)

# %%
def quantise(x, levels=256):
    # points in [-1, 1] onto `levels` evenly spaced values, like 8-bit pixels
    return ((x.clamp(-1, 1) + 1) * (levels - 1) / 2).round() / ((levels - 1) / 2) - 1

x0_q = quantise(gmm.sample(128, generator=torch.Generator().manual_seed(5)))
true_bpd = -(gmm.log_prob(x0_q.double()) + 2 * math.log(2 / 255)) / (2 * math.log(2))   # per point

start = time.perf_counter()
elbo = {("exact", v): d.calc_bpd_loop(exact, x0_q, generator=torch.Generator().manual_seed(6))
        for v, d in (("fixed_large", large), ("fixed_small", small))}
e = elbo[("exact", "fixed_large")]
print(f"exact model, σ² = β_t ({time.perf_counter() - start:.1f} s for 2 × {T} steps):")
print(f"  L_T       = {e['prior_bpd'].mean():.2e} bits/dim")
print(f"  Σ L_(t-1) = {e['vb'][:, 1:].sum(1).mean():.3f} bits/dim")
print(f"  L_0       = {e['vb'][:, 0].mean():.3f} bits/dim")
print(f"  total     = {e['total_bpd'].mean():.3f} bits/dim   (true NLL of the quantised data: {true_bpd.mean():.3f})")
gap = (e["total_bpd"].double() - true_bpd).mean().item()
assert e["prior_bpd"].max() < 1e-4                 # L_T ≈ 0: ᾱ_T ≈ 4e-5
assert -0.02 < gap < 0.4, gap                       # a bound: above the true NLL (here by ~3 %)

# %%
# the prediction: both bounds of the exact model, and where their difference comes from
bpd_large, bpd_small = (elbo[("exact", v)]["total_bpd"].mean().item() for v in ("fixed_large", "fixed_small"))
diff_t = (elbo[("exact", "fixed_small")]["vb"] - elbo[("exact", "fixed_large")]["vb"]).mean(0)   # [T] bits/dim
nb02.reveal_variance(prediction, bpd_large, bpd_small, (diff_t[:100].sum() / diff_t.sum()).item())
assert bpd_large < bpd_small - 0.05

# %% [markdown]
# Even a *perfect* denoiser does not reach the true NLL exactly: the bound is loose because each reverse step is
# forced to be Gaussian with a fixed variance, while the true reverse step $q(x_{t-1}\mid x_t)$ is a mixture.
# With 1000 small steps the gap is small.
#
# **Exercise 4** (below, in §9) asks you to compute $L_T$ yourself.

# %% [markdown]
# ## 6 · From the bound to $L_\text{simple}$ (eqs. 12 and 14)
#
# Plug the ε-form of $\mu_\theta$ (eq. 11) into the Gaussian KL. When $\sigma_t^2 = \tilde\beta_t$ the variances
# cancel and only the squared distance between the means is left, and that distance is proportional to the
# error in the predicted noise (eq. 12):
#
# $$
# L_{t-1} = \lambda_t\, \mathbb E\,\big\|\varepsilon - \varepsilon_\theta(x_t, t)\big\|^2 + C_t,\qquad
# \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)},
# $$
#
# with $C_t = \tfrac12\big(\log\tfrac{\sigma_t^2}{\tilde\beta_t} + \tfrac{\tilde\beta_t}{\sigma_t^2} - 1\big)$ per dimension
# (zero for $\sigma_t^2 = \tilde\beta_t$). **Check:** feed `vb_terms_bpd` a "model" whose ε-prediction is the
# true noise plus a known error, and compare with $\lambda_t \cdot$ mean squared error $+ C_t$.

# %%
gen = torch.Generator().manual_seed(7)
B = 256
x0_w = gmm.sample(B, generator=gen).double()
t_w = torch.randint(1, T, (B,), generator=gen)
eps_w = torch.randn(B, 2, generator=gen, dtype=torch.float64)
err_w = 0.1 * torch.randn(B, 2, generator=gen, dtype=torch.float64)        # the model's error in ε
xt_w = diffusion.q_sample(x0_w, t_w, noise=eps_w)
noisy_model = lambda x, t, y=None: eps_w + err_w                           # ε_θ = ε + error

lam, consts = {}, {}
for name, d in (("fixed_small", small), ("fixed_large", large)):
    all_t = torch.arange(T)
    lam[name] = d.vlb_eps_weight(all_t)                                      # λ_t of eq. 12
    consts[name] = d.vlb_constant(all_t)                                     # C_t of eq. 12
    kl_bits = d.vb_terms_bpd(noisy_model, x0_w, xt_w, t_w, clip_denoised=False)["output"]
    formula = (lam[name][t_w] * (err_w ** 2).mean(1) + consts[name][t_w]) / math.log(2)
    rel = ((kl_bits - formula).abs() / formula).max().item()
    print(f"{name}: vb_terms_bpd vs λ_t·MSE + C_t: max relative difference {rel:.1e}")
    assert rel < 1e-6

lam_small = lam["fixed_small"][1:]
print("λ_t (σ² = β̃_t) at t = 1, 10, 100, 999:", lam["fixed_small"][[1, 10, 100, 999]].numpy().round(4))
print(f"λ_1 / λ_999 = {lam_small[0] / lam_small[-1]:.0f}: the bound cares {lam_small[0] / lam_small[-1]:.0f}× more about an "
      "ε-error at the first step than at the last")
assert lam_small[0] / lam_small[-1] > 50

# %% [markdown]
# **Why DDPM trains on $L_\text{simple}$ instead.** The bound weights the noise error by $\lambda_t$, which falls
# by a factor of about 60 from the first steps to the last (and is infinite in spirit at $t = 1$, where $L_0$
# takes over; the plot in §6b shows it). Ho et al. drop the weights (eq. 14):
#
# $$
# L_\text{simple} = \mathbb E_{t \sim \mathcal U\{1..T\},\ x_0,\ \varepsilon}\ \big\|\varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big)\big\|^2 .
# $$
#
# Relative to the bound, this *down-weights the easy small-$t$ steps* (removing a little noise from an almost
# clean image) and *up-weights the hard large-$t$ steps*, where the network must decide what the image is.
# That trade gives much better samples (FID 3.17 on CIFAR-10) at the price of a slightly worse bound than
# optimising eq. 5 directly. `diffusion.training_losses` computes $L_\text{simple}$ per sample (Algorithm 1)
# for a `GaussianDiffusion` built without `min_snr_gamma`, like this notebook's `diffusion`; the bound is then
# only used for evaluation.
#
# ### 6b · Every loss is a weighting over $t$: $\lambda_t$, $L_\text{simple}$ and min-SNR-γ
#
# The bound, $L_\text{simple}$ and the losses used in practice differ only in how much the ε-error of each step
# counts. In ε-units $L_\text{simple}$ is flat (weight 1) and the bound uses $\lambda_t$. In units of the
# *image* the picture flips: the model's $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$
# (§7) errs by $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$ times its ε-error, so with $\mathrm{SNR}_t = \bar\alpha_t/(1-\bar\alpha_t)$
#
# $$
# \big\|\varepsilon - \hat\varepsilon\big\|^2 = \mathrm{SNR}_t\,\big\|x_0 - \hat x_0\big\|^2 .
# $$
#
# That is $L_\text{simple}$'s **implicit weighting**: an error in the predicted image counts $\mathrm{SNR}_t$ times,
# about $10^4$ at the first step and $4\cdot10^{-5}$ at the last. The almost clean steps, where the image is nearly
# given, dominate the image-space loss.
#
# **Min-SNR-γ** (Hang et al. 2023) clips that image-space weight at $\gamma$: the $x_0$-error counts
# $\min(\mathrm{SNR}_t, \gamma)$ times. For an ε-model this is the ε-loss with weight (`losses.min_snr_weight`)
#
# $$
# L_{\text{min-SNR-}\gamma} = \mathbb E_{t, x_0, \varepsilon}\ \frac{\min(\mathrm{SNR}_t, \gamma)}{\mathrm{SNR}_t}\,\big\|\varepsilon - \varepsilon_\theta(x_t, t)\big\|^2 .
# $$
#
# Noisy steps ($\mathrm{SNR}_t \le \gamma$) keep $L_\text{simple}$'s weight 1; the cleaner steps are down-weighted by
# $\gamma/\mathrm{SNR}_t$, so their gradients, which conflict with those of the noisy steps,
# slow training less (Hang et al. treat the timesteps as tasks of a multi-task problem; with $\gamma = 5$ they
# report about 3.4× faster convergence on ImageNet). So, relative to the bound, $L_\text{simple}$ already
# down-weights the small-$t$ terms, and min-SNR-γ down-weights the low-noise (high-SNR) steps further.
#
# **This is what the course's `Trainer` optimises.** `TrainConfig(min_snr_gamma="auto")` picks γ = 1 for the 8×8
# digits (tuned for a one-minute CPU run, `ddpm_lite.train.RECIPES`) and Hang et al.'s γ = 5 otherwise;
# `min_snr_gamma=None` trains on plain $L_\text{simple}$. The loss curves of notebook 04 are therefore the
# min-SNR-γ-weighted ε-loss, not $L_\text{simple}$; `GaussianDiffusion` says which one it computes in its
# `repr` and in `loss_label`. All four weightings in one plot (λ_t scaled to mean 1, since only its shape
# matters for training; the others as they are):

# %%
snr = s.snr                                                      # SNR_t = ᾱ_t / (1 − ᾱ_t), float64
gammas = (5.0, 1.0)
w_min_snr = {g: min_snr_weight(snr, g) for g in gammas}         # min(SNR_t, γ) / SNR_t, the ε-loss weight
ts_w = np.arange(1, T)
fig, ax = plt.subplots(figsize=(7, 3.6))
for name, label, style in (("fixed_small", r"bound $\lambda_t$, $\sigma_t^2=\tilde\beta_t$ (scaled to mean 1)", "C0-"),
                           ("fixed_large", r"bound $\lambda_t$, $\sigma_t^2=\beta_t$ (scaled to mean 1)", "C0:")):
    w_t = lam[name][1:]
    ax.semilogy(ts_w, (w_t / w_t.mean()).numpy(), style, label=label)
ax.axhline(1.0, color="k", ls="--", lw=1, label=r"$L_\mathrm{simple}$: 1 at every step")
for g, color in zip(gammas, ("C2", "C3")):
    ax.semilogy(ts_w, w_min_snr[g][1:].numpy(), color=color,
                label=rf"min-SNR-$\gamma$, $\gamma = {g:g}$: $\min(\mathrm{{SNR}}_t, \gamma)/\mathrm{{SNR}}_t$")
ax.set(xlabel="t (index)", ylabel=r"weight of $\|\varepsilon-\varepsilon_\theta\|^2$",
       title="how much the ε-error of each step counts, per loss")
ax.legend(fontsize=8, loc="lower right")
plt.show()

for g in gammas:
    knee = int((snr <= g).nonzero()[0])
    print(f"γ = {g:g}: weight 1 from index t = {knee} on (SNR_t ≤ γ); at t = 1, 10, 100: "
          + ", ".join(f"{w:.1e}" for w in w_min_snr[g][[1, 10, 100]].tolist()))

# check: a diffusion with min_snr_gamma computes exactly min_snr_weight × each sample's L_simple
weighted = GaussianDiffusion("linear", 1000, min_snr_gamma=1.0)
gen = torch.Generator().manual_seed(13)
x0_c, eps_c = gmm.sample(8, generator=gen), torch.randn(8, 2, generator=gen)
t_c = torch.tensor([1, 10, 100, 200, 300, 500, 800, 999])
some_model = lambda x, t, y=None: 0.5 * x                        # any ε-model will do
plain_c = diffusion.training_losses(some_model, x0_c, t=t_c, noise=eps_c)["loss"]
weighted_c = weighted.training_losses(some_model, x0_c, t=t_c, noise=eps_c)["loss"]
assert torch.allclose(weighted_c, plain_c * min_snr_weight(snr[t_c], 1.0).float())
assert w_min_snr[5.0][1] < 2e-3 and w_min_snr[5.0][-1] == 1.0 and w_min_snr[1.0][1] < w_min_snr[5.0][1]
print(f"{diffusion}\n  computes {diffusion.loss_label}\n{weighted}\n  computes {weighted.loss_label}")
print("Trainer's default γ: digits", TrainConfig(dataset="digits").resolved().min_snr_gamma,
      "| mnist", TrainConfig(dataset="mnist").resolved().min_snr_gamma)

# %% [markdown]
# ## 7 · What the network predicts: ε, $x_0$ or v
#
# Given $x_t$, knowing one of ε and $x_0$ gives the other, because $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$:
#
# $$
# \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon}{\sqrt{\bar\alpha_t}}\ \ (\texttt{predict\_x0\_from\_eps}),\qquad
# \hat\varepsilon = \frac{x_t - \sqrt{\bar\alpha_t}\,\hat x_0}{\sqrt{1-\bar\alpha_t}}\ \ (\texttt{predict\_eps\_from\_x0}).
# $$
#
# A third target, **v** (Salimans & Ho 2022), mixes the two: $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$
# (`get_v`), with $x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v$ and
# $\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v$. All three describe the same model, but an
# equal squared error in each target means different things: per unit of ε-error, the $x_0$-error is
# $1/\mathrm{SNR}_t$ times as large and the v-error $1 + 1/\mathrm{SNR}_t$ times
# ($\mathrm{SNR}_t = \bar\alpha_t/(1-\bar\alpha_t)$). So the choice of target is also a choice of loss weighting
# over $t$, like $\lambda_t$ above. ε is DDPM's choice; v is popular because it stays well scaled at both ends.

# %%
t_all = torch.arange(T)
gen = torch.Generator().manual_seed(8)
x0_p = gmm.sample(T, generator=gen).double()            # one point per timestep, float64
eps_p = torch.randn(T, 2, generator=gen, dtype=torch.float64)
xt_p = diffusion.q_sample(x0_p, t_all, noise=eps_p)
v_p = diffusion.get_v(x0_p, eps_p, t_all)
checks = {
    "predict_x0_from_eps": (diffusion.predict_x0_from_eps(xt_p, t_all, eps_p), x0_p),
    "predict_eps_from_x0": (diffusion.predict_eps_from_x0(xt_p, t_all, x0_p), eps_p),
    "predict_x0_from_v": (diffusion.predict_x0_from_v(xt_p, t_all, v_p), x0_p),
    "predict_eps_from_v": (diffusion.predict_eps_from_v(xt_p, t_all, v_p), eps_p),
}
for name, (got, want) in checks.items():
    print(f"{name:20s} max error over all 1000 t: {(got - want).abs().max():.1e}")
    assert (got - want).abs().max() < 1e-9

# the exact model's optimal ε and optimal x0 are one prediction in two parameterisations (Tweedie)
xt_f = xt_p.float()
x0_from_eps = diffusion.predict_x0_from_eps(xt_f, t_all, exact(xt_f, t_all))
x0_direct = exact.predict_x0(xt_f, t_all)
gap_p = (x0_from_eps - x0_direct).abs()[:900].max().item()
print(f"exact model: x0 from its ε vs its E[x0|x_t], t < 900: max |Δ| = {gap_p:.1e}")
assert gap_p < 1e-3

# the same prediction error, measured in each target
snr = s.snr[t_all][:, None]
d_eps = 0.1 * torch.randn(T, 2, generator=gen, dtype=torch.float64)
d_x0 = diffusion.predict_x0_from_eps(xt_p, t_all, eps_p + d_eps) - x0_p
d_v = diffusion.get_v(x0_p + d_x0, eps_p + d_eps, t_all) - v_p
assert torch.allclose(d_x0 ** 2, d_eps ** 2 / snr) and torch.allclose(d_v ** 2, d_eps ** 2 * (1 + 1 / snr))
print("x0-error² = ε-error² / SNR and v-error² = ε-error² · (1 + 1/SNR): checked at every t")


# %% [markdown]
# ### Exercise 3 · Converting between parameterisations
#
# Write `eps_to_x0(x_t, eps, alpha_bar)` (eq. 4 solved for $x_0$) and `x0_to_v(x0, eps, alpha_bar)` (the v target).
# `alpha_bar` is $\bar\alpha_t$ per sample, already shaped to broadcast (e.g. `[B, 1, 1, 1]` for images, `[B, 1]`
# for points). Use only tensor arithmetic, not `diffusion`'s methods.

# %%
def eps_to_x0(x_t, eps, alpha_bar):
    ### BEGIN SOLUTION
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    ### END SOLUTION


def x0_to_v(x0, eps, alpha_bar):
    ### BEGIN SOLUTION
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    ### END SOLUTION


ab_p = s.alphas_cumprod[:, None]                       # [T, 1]: broadcasts over the two coordinates
print("x0 recovered from (x_t, ε) at t = 0, 500, 999:", eps_to_x0(xt_p, eps_p, ab_p)[[0, 500, 999]].numpy().round(4))
print("v at t = 0, 500, 999:", x0_to_v(x0_p, eps_p, ab_p)[[0, 500, 999]].numpy().round(4))

# %%
nb02.check_eps_to_x0(eps_to_x0)
nb02.check_x0_to_v(x0_to_v)

# %% [markdown]
# ## 8 · A learned denoiser beside the exact one (2D)
#
# Now train a real network on the ring with $L_\text{simple}$ (Algorithm 1; this notebook's `diffusion` has no
# min-SNR weighting): draw $x_0$, $t$ and ε, form $x_t$ with eq. 4, regress ε. The model is `ToyMLP`, a small residual MLP with a sinusoidal time embedding. We give it
# 15 seconds (at most 1500 steps). Since the exact model is the minimiser of $L_\text{simple}$, the difference
# between the two losses is *exactly* what the network has not yet learned:
# $\mathbb E\|\varepsilon - \varepsilon_\theta\|^2 = \mathbb E\|\varepsilon - \varepsilon^*\|^2 + \mathbb E\|\varepsilon^* - \varepsilon_\theta\|^2$.

# %%
TRAIN_SECONDS, TRAIN_STEPS, LR = 15.0, 1500, 3e-3
torch.manual_seed(0)
model = ToyMLP(dim=2, hidden=64, num_blocks=3)
opt = torch.optim.AdamW(model.parameters(), lr=LR)
gen = torch.Generator().manual_seed(0)
losses, start = [], time.perf_counter()
for step in range(TRAIN_STEPS):
    progress = max(step / TRAIN_STEPS, (time.perf_counter() - start) / TRAIN_SECONDS)
    if progress >= 1:
        break
    for group in opt.param_groups:                     # short warm-up, then cosine decay to 10 %
        group["lr"] = LR * min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
    x0_b = gmm.sample(256, generator=gen)                                   # x0 ~ data
    loss = diffusion.training_losses(model, x0_b, generator=gen)["loss"].mean()   # t, ε, x_t, ‖ε − ε_θ‖²
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
model.eval()
train_seconds = time.perf_counter() - start
print(f"{len(losses)} steps in {train_seconds:.1f} s; L_simple over the last 100 steps: {np.mean(losses[-100:]):.4f}")

# %%
gen = torch.Generator().manual_seed(9)
n_eval = 8000
x0_e = gmm.sample(n_eval, generator=gen)
t_e = torch.randint(0, T, (n_eval,), generator=gen)
eps_e = torch.randn(n_eval, 2, generator=gen)
xt_e = diffusion.q_sample(x0_e, t_e, noise=eps_e)
with torch.no_grad():
    eps_star, eps_theta = exact(xt_e, t_e), model(xt_e, t_e)
se_exact = ((eps_star - eps_e) ** 2).mean(1)
se_model = ((eps_theta - eps_e) ** 2).mean(1)
excess = ((eps_theta - eps_star) ** 2).mean(1)
print(f"L_simple: exact model {se_exact.mean():.4f} (the minimum)   learned {se_model.mean():.4f}   "
      f"excess E‖ε* − ε_θ‖²/D = {excess.mean():.4f}")
assert se_exact.mean() < se_model.mean() < 1.3 * se_exact.mean()

# per-t curves, binned over t
edges = np.linspace(0, T, 21).astype(int)
centres = (edges[:-1] + edges[1:]) / 2
binned = lambda v: np.array([v[(t_e >= a) & (t_e < b)].mean().item() for a, b in zip(edges[:-1], edges[1:])])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
axes[0].semilogy(centres, binned(se_exact), "k-o", ms=3, label=r"exact $\varepsilon^*$ (irreducible)")
axes[0].semilogy(centres, binned(se_model), "C0-o", ms=3, label=r"learned $\varepsilon_\theta$")
axes[0].semilogy(centres, binned(excess), "C1--", label=r"excess $\|\varepsilon^*-\varepsilon_\theta\|^2$")
axes[0].set(xlabel="t (index)", title="ε-prediction error per dimension")
axes[0].legend(fontsize=8)
axes[1].semilogy(plots.smooth(losses, 0.95))
axes[1].set(xlabel="step", title="training loss (smoothed)")
plt.tight_layout()
plt.show()

# %% [markdown]
# At small $t$ even the perfect model's error is close to 1: the noise added so far is tiny and cannot be told
# apart from the data's own spread, so ε is unpredictable. At large $t$, $x_t$ *is* almost the noise, and ε is
# easy. The learned model's *excess* error (dashed) is largest at **small** $t$: there the exact denoiser knows
# the precise width of each mode (0.07) and the network, after a few hundred steps, does not yet. Those are
# exactly the steps that $L_\text{simple}$ weights *less* than the bound does (§6).
#
# Now sample both with ancestral sampling (Algorithm 2: 1000 steps of $p_\theta$, $\sigma_t^2 = \tilde\beta_t$),
# from the same starting noise, with **your** `reverse_step` of Exercise 2 (the package's version is
# `samplers.sample(model, diffusion, shape, sampler="ddpm")`).

# %%
@torch.no_grad()
def ancestral_sample(model, x_T, generator):
    x = x_T
    for t in reversed(range(T)):                      # t = T-1, ..., 0: Algorithm 2 with your step
        x = reverse_step(model, x, t, torch.randn(x.shape, generator=generator), s)
    return x


n_s = 500
x_T = torch.randn(n_s, 2, generator=torch.Generator().manual_seed(10))
start = time.perf_counter()
samples = {name: ancestral_sample(m, x_T, torch.Generator().manual_seed(11))
           for name, m in (("exact", exact), ("learned", model))}
print(f"sampled 2 × {n_s} points with {T} steps each in {time.perf_counter() - start:.1f} s")

data_s = gmm.sample(n_s, generator=torch.Generator().manual_seed(12))
near_mode = lambda x: (torch.cdist(x, gmm.means).min(1).values < 3 * 0.07).float().mean().item()
stats = {"data": data_s, **samples}
for name, x in stats.items():
    counts = torch.bincount(gmm.responsibilities(x).argmax(1), minlength=8).tolist()
    print(f"{name:8s} within 3σ of a mode: {near_mode(x):.3f}   mean log p(x): {gmm.log_prob(x).mean():6.3f}   "
          f"points per mode: {counts}")
assert near_mode(samples["exact"]) > 0.95 and near_mode(samples["learned"]) > 0.4
assert abs(gmm.log_prob(samples["exact"]).mean() - gmm.log_prob(data_s).mean()) < 0.2

fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
for ax, (name, x) in zip(axes, stats.items()):
    plots.plot_2d(x, ax=ax, lim=1.2, s=3, title={"data": "data", "exact": "exact denoiser",
                                                  "learned": f"ToyMLP, {len(losses)} steps"}[name])
plt.tight_layout()
plt.show()

# %% [markdown]
# The exact denoiser reproduces the data: the only error left is the Gaussian form of each reverse step, which
# is negligible with 1000 steps. The network after 15 s has learned the coarse structure (a ring, with every
# mode getting its share of points) but not the fine one: its modes are blurred into each other, the visible
# consequence of its error at small $t$, where the last steps should sharpen each point onto its mode. Training
# longer (notebook 04) closes the gap.

# %% [markdown]
# ## 9 · Bits per dimension: exact vs learned
#
# The same bound as in §5, now for the learned model too, and for both variance choices of the exact model. Each
# $L_{t-1}$ term shows *where* a model loses likelihood.

# %%
start = time.perf_counter()
elbo[("learned", "fixed_large")] = large.calc_bpd_loop(model, x0_q, generator=torch.Generator().manual_seed(6))
print(f"learned model's bound in {time.perf_counter() - start:.1f} s")
extra = (elbo[("learned", "fixed_large")]["vb"] - elbo[("exact", "fixed_large")]["vb"]).mean(0)   # [T] bits/dim
share_early = (extra[:100].sum() / extra.sum()).item()
bpd = {k: v["total_bpd"].mean().item() for k, v in elbo.items()}
print(f"true NLL of the quantised data     {true_bpd.mean():.3f} bits/dim")
for (who, var), value in bpd.items():
    e = elbo[(who, var)]
    print(f"{who:7s} model, σ² = {'β_t ' if var == 'fixed_large' else 'β̃_t'}:   {value:.3f} bits/dim   "
          f"(L_0 = {e['vb'][:, 0].mean():.3f}, Σ L_(t-1) = {e['vb'][:, 1:].sum(1).mean():.3f})")
assert true_bpd.mean() - 0.02 < bpd[("exact", "fixed_large")] < bpd[("exact", "fixed_small")]
assert bpd[("exact", "fixed_large")] < bpd[("learned", "fixed_large")] < bpd[("exact", "fixed_large")] + 2.0
print(f"learned − exact = {extra.sum():.3f} bits/dim, of which {share_early:.0%} in the first 100 of 1000 steps "
      f"(L_0 alone: {extra[0]:.3f})")

fig, ax = plt.subplots(figsize=(6.5, 3.2))
for key, style in ((("exact", "fixed_large"), "k-"), (("exact", "fixed_small"), "k:"), (("learned", "fixed_large"), "C0-")):
    sigma_label = r"$\sigma_t^2=\beta_t$" if key[1] == "fixed_large" else r"$\sigma_t^2=\tilde\beta_t$"
    ax.loglog(np.arange(1, T), elbo[key]["vb"][:, 1:].mean(0).numpy(), style, lw=1, label=f"{key[0]}, {sigma_label}")
ax.set(xlabel="t (index, log scale)", ylabel="bits/dim", title=r"per-step terms $L_{t-1}$ of the bound")
ax.legend()
plt.show()


# %% [markdown]
# * The exact model's bound is close to the true NLL. With $\sigma_t^2 = \beta_t$ it is tighter than with
#   $\tilde\beta_t$ here: the $\tilde\beta_t$ model pays in the first steps, where $\tilde\beta_t \ll \beta_t$ and its
#   overconfident Gaussian steps are penalised hardest.
# * The learned model loses almost all of its extra bits at small $t$, where $\lambda_t$ is large: exactly the
#   terms that $L_\text{simple}$ down-weights. To $L_\text{simple}$ those errors are cheap; to the bound they are
#   expensive. A good sampler and a good likelihood model are related but different goals.
# * $L_0$ is a large share for 2D data: the last step must put mass on the right one of 256 bins.
#
# ### Exercise 4 · The prior term $L_T$
#
# Write `prior_bpd(x0, alpha_bar_T)` returning $L_T = D_\text{KL}\big(\mathcal N(\sqrt{\bar\alpha_T}x_0, (1-\bar\alpha_T)I)\,\|\,\mathcal N(0, I)\big)$
# per sample, in **bits per dimension**. For one dimension,
# $D_\text{KL}\big(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, 1)\big) = \tfrac12\big(\mu^2 + \sigma^2 - 1 - \log\sigma^2\big)$ nats.
# Average over every dimension except the batch dimension, and convert nats to bits. `alpha_bar_T` is a 0-d tensor.

# %%
def prior_bpd(x0, alpha_bar_T):
    ### BEGIN SOLUTION
    kl = 0.5 * (alpha_bar_T * x0 ** 2 + (1 - alpha_bar_T) - 1 - torch.log(1 - alpha_bar_T))
    return kl.mean(dim=tuple(range(1, x0.ndim))) / math.log(2)
    ### END SOLUTION


print("L_T of the first 4 toy points (bits/dim):", prior_bpd(x0_q[:4].double(), s.alphas_cumprod[-1]).numpy())

# %%
nb02.check_prior_bpd(prior_bpd)

# %% [markdown]
# ## 10 · From the source material's names to `ddpm_lite`
#
# The blog post this course starts from reads a public DDPM repository whose `GaussianDiffusion` class uses its
# own names. The table maps each to `ddpm_lite` and to the paper (`d` is a `GaussianDiffusion`, `s = d.schedule`;
# indices are 0-based in both codes).
#
# | source material | `ddpm_lite` | paper |
# |---|---|---|
# | buffer `betas` | `s.betas` | $\beta_t$ |
# | buffer `alphas` | `s.alphas` | $\alpha_t = 1-\beta_t$ |
# | buffer `alphas_cumprod` | `s.alphas_cumprod` | $\bar\alpha_t$ |
# | buffer `sqrt_alphas_cumprod` | `s.sqrt_alphas_cumprod` | $\sqrt{\bar\alpha_t}$ |
# | buffer `sqrt_one_minus_alphas_cumprod` | `s.sqrt_one_minus_alphas_cumprod` | $\sqrt{1-\bar\alpha_t}$ |
# | buffer `reciprocal_sqrt_alphas` | `1 / s.alphas.sqrt()` (not stored) | $1/\sqrt{\alpha_t}$ in eq. 11 |
# | buffer `remove_noise_coeff` | `s.betas / s.sqrt_one_minus_alphas_cumprod` (not stored) | $\beta_t/\sqrt{1-\bar\alpha_t}$ in eq. 11 |
# | buffer `sigma` | `(0.5 * d.model_log_variance(t, x)).exp()` with `variance="fixed_large"` | $\sigma_t = \sqrt{\beta_t}$ (§3.2) |
# | `perturb_x(x, t, noise)` | `d.q_sample(x0, t, noise)` | eq. 4 |
# | `remove_noise(x, t, y)` | `d.p_mean_variance(model, x, t, y, clip_denoised=False)["mean"]` | $\mu_\theta$, eq. 11 |
# | `sample(batch_size, device, y)` | `samplers.sample(model, d, shape, sampler="ddpm", y=y)`; one step: `d.p_sample` | Algorithm 2 |
# | `get_losses(x, t, y)` | `d.training_losses(model, x0, t, y=y)["loss"]` (per sample; take `.mean()`) | $L_\text{simple}$, eq. 14 (if `d.min_snr_gamma` is None) |
# | `forward(x, y)` (draws $t$) | `d.training_losses(model, x0, y=y)` (draws $t$ when `t=None`) | Algorithm 1 |
#
# `ddpm_lite` also has what that class leaves out: the posterior (`q_posterior_mean_variance`), the
# $\tilde\beta_t$ variance, the $x_0$/v parameterisations and the bound in bits/dim. **Check** the two rows that
# are "not stored": eq. 11 written with them gives `p_mean_variance`'s mean.

# %%
reciprocal_sqrt_alphas = 1 / s.alphas.sqrt()
remove_noise_coeff = s.betas / s.sqrt_one_minus_alphas_cumprod
sigma = s.betas.sqrt()
with torch.no_grad():
    eps_hat = model(xt_toy, t_toy)
by_names = col(reciprocal_sqrt_alphas) * (xt_toy - col(remove_noise_coeff) * eps_hat)
ours = large.p_mean_variance(model, xt_toy, t_toy, clip_denoised=False)
diff_mean = (by_names - ours["mean"]).abs().max().item()
diff_sigma = (col(sigma) - (0.5 * ours["log_variance"]).exp()).abs().max().item()
print(f"eq. 11 from the source's buffers vs p_mean_variance: max |Δμ| = {diff_mean:.1e}, max |Δσ| = {diff_sigma:.1e}")
assert diff_mean < 1e-4 and diff_sigma < 1e-6

# %% [markdown]
# ## Summary
#
# * **Forward.** $q(x_t \mid x_{t-1})$ (eq. 2) composes into $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$
#   (eq. 4): 1000 iterated steps and one `q_sample` agree to Monte-Carlo precision.
# * **Posterior.** $q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)$ (eqs. 6–7), confirmed by Bayes'
#   rule on a grid (to $10^{-7}$) and by regression on simulated pairs.
# * **Reverse.** $p_\theta$ plugs a predicted $\hat x_0$ (or $\hat\varepsilon$) into the posterior mean (eq. 11), with
#   $\sigma_t^2 = \beta_t$ or $\tilde\beta_t$. You wrote that step and §8 sampled the ring with 1000 of them. For
#   the likelihood bound the larger $\beta_t$ won here: the true reverse step is never narrower than
#   $\tilde\beta_t$, and at small $t$ it is about $\beta_t$.
# * **Objective.** The bound $L_T + \sum L_{t-1} + L_0$ (eq. 5) is a sum of Gaussian KLs; each $L_{t-1}$ is a
#   $\lambda_t$-weighted ε-error (eq. 12). $L_\text{simple}$ (eq. 14) sets $\lambda_t = 1$: better samples, slightly
#   worse bound. In image units $L_\text{simple}$ weights step $t$ by $\mathrm{SNR}_t$; min-SNR-γ clips that at γ,
#   i.e. multiplies the ε-loss by $\min(\mathrm{SNR}_t, \gamma)/\mathrm{SNR}_t$. The `Trainer` uses it by default
#   (γ = 1 for digits, 5 otherwise).
# * **Parameterisations.** ε, $x_0$ and v are interchangeable given $x_t$; their squared errors differ by
#   $1/\mathrm{SNR}_t$ factors, so each implies its own loss weighting.
# * **2D.** The exact GMM denoiser is the floor for $L_\text{simple}$ and sits close to the true NLL in bits/dim;
#   a 15-second ToyMLP gets within about 5 % of its $L_\text{simple}$ but blurs the modes: its excess error, and
#   almost all of its extra bits/dim, sit at small $t$, the steps $L_\text{simple}$ down-weights.
#
# ## What comes next
#
# **03 · The denoising network** opens up the $\varepsilon_\theta$ that §8 treated as a black box: the U-Net, its
# time embedding, residual blocks, skip connections and attention, piece by piece.
#
# **04 · The training loop** turns §8's few lines into a real trainer for images: the eight steps of a
# training iteration, EMA of the weights, saving, loading and resuming, and the classic ways training fails. The
# `Trainer` you will use there runs Algorithm 1 with the min-SNR-γ-weighted ε-loss of §6b (γ = 1 for digits),
# not plain $L_\text{simple}$, unless you pass `min_snr_gamma=None`.
#
# **References.** J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020 (eqs. 2–14,
# Algorithms 1–2). T. Salimans, J. Ho, *Progressive Distillation for Fast Sampling of Diffusion Models*, ICLR 2022
# (v-parameterisation). A. Nichol, P. Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, ICML 2021
# (the variance choices and the bound). T. Hang, S. Gu, C. Li, J. Bao, D. Chen, H. Hu, X. Geng, B. Guo,
# *Efficient Diffusion Training via Min-SNR Weighting Strategy*, ICCV 2023 (min-SNR-γ). B. Efron, *Tweedie's formula and selection bias*, JASA 2011.

# %%
print(f"notebook ran in {time.perf_counter() - NOTEBOOK_START:.0f} s")
