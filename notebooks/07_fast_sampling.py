# %% [markdown]
# # 07 · Fast sampling: DDIM and DPM-Solver++
#
# The DDPM sampler of notebook 06 walks back from noise one small step at a time: **one network evaluation
# per step, $T = 1000$ of them per sample**. The source material ends its DDPM section on exactly this
# weakness: *sampling is slow because it removes noise step by step*. This notebook shows why that many
# steps are needed by the ancestral sampler, and how two ideas get the same trained network to produce
# samples of the same quality in **10–50 evaluations**, with no retraining:
#
# * **DDIM** (Song, Meng & Ermon 2021) keeps DDPM's training objective but samples from a different,
#   non-Markovian process with the same marginals, which may skip timesteps and may be deterministic;
# * **DPM-Solver++** (Lu et al. 2022) reads deterministic sampling as solving an ordinary differential
#   equation and uses a second-order solver built for it.
#
# **What you will learn**
#
# * why ancestral sampling takes (about) $T$ network calls, measured on this machine;
# * DDIM as a family of processes indexed by $\eta$, all with the marginals $q(x_t \mid x_0)$ of DDPM; that
#   $\eta = 1$ gives back DDPM's variance exactly and $\eta = 0$ a deterministic map from noise to data;
# * how to choose the timesteps a few-step sampler visits (*spacing*), and a classic pitfall;
# * DPM-Solver++(2M) as an ODE solver, and why DDIM is its first-order special case;
# * the measured trade-off: class accuracy, Fréchet distance and seconds against the number of network
#   evaluations (NFE) for DDPM-style, DDIM and DPM-Solver++ sampling;
# * with an exact denoiser on 2D toy data, how a sampler's error splits into discretisation error and model
#   error, and where adding steps stops paying;
# * a widget to try any sampler and step count on the same noise;
# * by building it: you write σ(η), the DDIM step and the trailing spacing, then put them together into a
#   **DDIM sampler of your own** that the notebook runs on the digits model beside the package's; and you predict
#   what more steps buy with a learned network before §7 measures it.
#
# We use the trained class-conditional digits model that ships with the course (`assets/checkpoints/digits`)
# and the digits classifier of `ddpm_lite.metrics` to measure sample quality.
#
# *Run time: about a minute on a 2-core laptop CPU (all of it sampling for the measurements of section 5).*

# %%
# Settings for the measurements of section 5 (sized so the notebook runs in about a minute on 2 CPU cores).
# They use N_EVAL samples (N_EVAL // 10 of each digit), all starting from the same noise x_T. More samples
# give steadier numbers: on a GPU try N_EVAL = 2000.
N_EVAL = 60
ETA1_STEPS = (2, 3, 5, 10)              # step counts (= network evaluations) for DDIM η=1 (DDPM's update)
DDIM_STEPS = (2, 3, 5, 10, 20, 50)      # ... for deterministic DDIM
DPM_STEPS = (2, 3, 5, 10, 20)           # ... for DPM-Solver++(2M)

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lite import metrics, plots, samplers, toys
from ddpm_lite.checkpoint import from_pretrained
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.exercises import nb07
from ddpm_lite.oracle import error_decomposition, fit_toy_denoiser, sample_points
from ddpm_lite.widgets import SamplerExplorer

plots.setup()                  # small figures (72 dpi), grey images, pixel-sharp 8×8 digits
torch.set_num_threads(1)       # small tensors: extra threads only add overhead (and stall on a busy CPU)
NOTEBOOK_START = time.perf_counter()

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
CHECKPOINT = REPO / "assets" / "checkpoints" / "digits"
model, diffusion = from_pretrained(CHECKPOINT)        # the EMA weights, eval mode, on the CPU
classifier = metrics.load_classifier("digits")        # a small CNN trained on real digits (99 % held out)
T = diffusion.num_timesteps
alpha_bar = diffusion.schedule.alphas_cumprod          # ᾱ_t, float64, t = 0 … T−1
print(f"{diffusion}; model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
assert T == 1000 and model.num_classes == 10

# the same N_EVAL starting noises x_T and labels (one tenth of each digit) for every measurement of section 5
labels = torch.arange(10).repeat(N_EVAL // 10)
x_T = torch.randn(N_EVAL, 1, 8, 8, generator=torch.Generator().manual_seed(0))

# %% [markdown]
# ## 1 · Why ancestral sampling needs about $T$ network calls
#
# Ancestral sampling (Ho et al. 2020, Algorithm 2) runs the learned reverse chain
# $x_T \to x_{T-1} \to \dots \to x_0$, and every arrow is one call of the network $\varepsilon_\theta$:
#
# $$
# x_{t-1} = \tilde\mu_t\big(x_t, \hat x_0(x_t)\big) + \sigma_t z,\qquad
# \hat x_0(x_t) = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}},\qquad z \sim \mathcal N(0, I).
# $$
#
# Why not take bigger steps along the same chain? Because each step models $p_\theta(x_{t-1} \mid x_t)$ as a
# **Gaussian**, and the true reverse conditional $q(x_{t-1} \mid x_t)$ is close to a Gaussian only when the
# forward step that it undoes is small ($\beta_t \ll 1$; Feller 1949, Sohl-Dickstein et al. 2015). Over a
# large jump, $q(x_{t-k} \mid x_t)$ is as complicated as the data distribution itself (think of a jump
# from pure noise straight to $x_0$: it would have to be the whole digits distribution). The Markov chain of
# DDPM is trained step by step, so it has to be sampled step by step: $T$ evaluations.
#
# The cost is easy to measure. One network evaluation on a batch of `N_EVAL` digits:

# %%
y = labels
with torch.no_grad():
    model(x_T, torch.full((N_EVAL,), T - 1), y)                     # warm-up
    t0 = time.perf_counter()
    for _ in range(5):
        model(x_T, torch.full((N_EVAL,), T // 2), y)
sec_per_nfe = (time.perf_counter() - t0) / 5
print(f"one network evaluation on {N_EVAL} samples: {1000 * sec_per_nfe:.1f} ms")
print(f"ancestral DDPM, {T} evaluations: about {T * sec_per_nfe:.0f} s for {N_EVAL} samples "
      f"on this machine; 50 evaluations would take {50 * sec_per_nfe:.1f} s")

# %% [markdown]
# On a GPU the same ratio holds: the network is the whole cost, so **sampling time is proportional to the
# number of network evaluations (NFE)**. The rest of the notebook is about getting the NFE down from
# $T$ to a few dozen without changing the network.

# %% [markdown]
# ## 2 · DDIM: same marginals, different process
#
# **The key observation** (Song, Meng & Ermon 2021, §3). DDPM's loss ($L_\text{simple}$, or the
# min-SNR-γ-weighted version the course's `Trainer` uses) only ever uses the
# marginals $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$: it noises $x_0$
# straight to $x_t$ and asks the network for the noise. It never uses the Markov chain
# $q(x_t \mid x_{t-1})$ itself. So any other forward process with the **same marginals** leads to the same
# loss and the same trained network, and we are free to pick one that is easier to sample.
#
# **The non-Markovian family.** Song et al. define, for any choice of standard deviations $\sigma_t \ge 0$,
#
# $$
# q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal N\!\Big(\sqrt{\bar\alpha_{t-1}}\,x_0
#   + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1-\bar\alpha_t}},\ \sigma_t^2 I\Big)
# \qquad \text{(eq. 7)}
# $$
#
# and the "forward" direction follows from Bayes' rule; it now depends on $x_0$ too (non-Markovian). If
# $x_t$ has the right marginal, $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$, then the
# fraction is just $\varepsilon$ and
#
# $$
# x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,x_0 + \underbrace{\sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\varepsilon + \sigma_t z}_{\text{variance } (1-\bar\alpha_{t-1}-\sigma_t^2) + \sigma_t^2 \;=\; 1-\bar\alpha_{t-1}},
# $$
#
# which again has the right marginal, **whatever $\sigma_t$ is**. Nothing in that argument needs $t-1$ to be
# the step right before $t$: it holds for any earlier timestep $s < t$. That is what lets DDIM skip steps.
#
# **The sampler** (eq. 12) replaces $x_0$ and $\varepsilon$ by the network's predictions:
#
# $$
# x_{s} = \sqrt{\bar\alpha_{s}}\;\hat x_0 \;+\; \sqrt{1-\bar\alpha_{s}-\sigma^2}\;\hat\varepsilon \;+\; \sigma z,
# \qquad \hat\varepsilon = \varepsilon_\theta(x_t, t),\quad
# \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon}{\sqrt{\bar\alpha_t}},
# $$
#
# "predicted $x_0$", "direction pointing to $x_t$", "random noise", in the paper's words. The noise level is
# set by one number $\eta \in [0, 1]$ (eq. 16):
#
# $$
# \sigma(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_{s}}{1-\bar\alpha_t}}\;\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{s}}}.
# $$
#
# In `ddpm_lite` these are `samplers.ddim_sigma` and `samplers.ddim_steps`. Let's check the marginal claim
# numerically, with an *oracle* denoiser that knows the true $x_0$ (so $\hat x_0 = x_0$, $\hat\varepsilon = \varepsilon$).
# We draw 20 000 noisy copies $x_{T-1} \sim q(x_{T-1} \mid x_0)$ of one digit and run DDIM with 5 steps
# ($t = 999 \to 799 \to 599 \to 399 \to 199 \to 0$, jumps of 200). At every visited $t$ the copies should
# have mean $\sqrt{\bar\alpha_t}\,x_0$ and variance $1-\bar\alpha_t$, for every $\eta$:

# %%
x0_one = load_dataset("digits").images[:1].double()                 # one real digit, 1×1×8×8
n_draws = 20000
x0_rep = x0_one.expand(n_draws, -1, -1, -1)
gen = torch.Generator().manual_seed(1)
x_start = diffusion.q_sample(x0_rep, torch.full((n_draws,), T - 1), generator=gen)   # x_{T−1} ~ q(·|x0)


def oracle(x, t):                     # a denoiser that knows x0: x̂0 = x0, ε̂ = the noise actually in x
    return x0_rep, diffusion.predict_eps_from_x0(x, t, x0_rep)


for eta in (0.0, 0.5, 1.0):
    worst_mean = worst_var = 0.0
    for step in samplers.ddim_steps(oracle, diffusion, x_start, steps=5, eta=eta, spacing="trailing",
                                    generator=gen):
        if step.t < 0:
            break                     # the last step lands on x0 itself
        a = float(alpha_bar[step.t])
        worst_mean = max(worst_mean, float((step.x.mean(0) - a ** 0.5 * x0_one[0]).abs().max()))
        worst_var = max(worst_var, float((step.x.var(0) - (1 - a)).abs().max()))
    print(f"η = {eta:.1f}: at t = 799, 599, 399, 199 the largest per-pixel error of the mean is {worst_mean:.3f}, "
          f"of the variance {worst_var:.3f} (Monte-Carlo noise with {n_draws} draws: about 0.03)")
    assert worst_mean < 0.05 and worst_var < 0.06

# %% [markdown]
# Three different processes (three values of $\eta$), one marginal. $\eta$ decides how the variance
# $1-\bar\alpha_s$ is split between the deterministic "direction" term and fresh noise.
#
# **$\eta = 1$ is DDPM.** On consecutive steps ($s = t-1$), $\sigma(1)^2$ equals DDPM's posterior variance
# $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ (eq. 7 of Ho et al.) — the
# $\sqrt{1-\bar\alpha_t/\bar\alpha_{t-1}}$ factor is $\sqrt{\beta_t}$ — and the DDIM update is then exactly
# the ancestral step (the test suite checks that the two samplers give identical trajectories). Checked for
# every $t$ here:

# %%
sig2 = torch.tensor([samplers.ddim_sigma(float(alpha_bar[t]), float(alpha_bar[t - 1]), 1.0) ** 2
                     for t in range(1, T)], dtype=torch.float64)
beta_tilde = diffusion.schedule.posterior_variance[1:]
rel_err = float(((sig2 - beta_tilde).abs() / beta_tilde).max())
print(f"max relative difference between σ(η=1)² and β̃_t over t = 1 … {T - 1}: {rel_err:.2e}")
assert rel_err < 1e-9
etas = [0.0, 0.25, 0.5, 0.75, 1.0]
t_demo, s_demo = 500, 450
print(f"a 50-step jump t = {t_demo} → {s_demo}: " + ", ".join(
    f"σ(η={e}) = {samplers.ddim_sigma(float(alpha_bar[t_demo]), float(alpha_bar[s_demo]), e):.4f}" for e in etas))


# %% [markdown]
# **$\eta = 0$ is DDIM proper**: $\sigma = 0$, no noise is added, and sampling becomes a *deterministic*
# function of $x_T$. The same $x_T$ always gives the same digit, nearby $x_T$ give similar digits, and, as
# section 4 shows, the sampler is a discretisation of an ODE, which is what makes big steps work.
#
# ### Exercise 1 · the DDIM noise level
#
# Write `my_ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)` (floats in, a float out) for eq. 16 above.
# The check compares it with `samplers.ddim_sigma` and, at $\eta = 1$, with DDPM's $\tilde\beta_t$.

# %%
def my_ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    ### BEGIN SOLUTION
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t)) ** 0.5 * (1 - alpha_bar_t / alpha_bar_prev) ** 0.5
    ### END SOLUTION


nb07.check_ddim_sigma(my_ddim_sigma)


# %% [markdown]
# ### Exercise 2 · one DDIM step with noise
#
# Write `my_ddim_step(x0_hat, eps_hat, alpha_bar_prev, sigma, z)`: the generalised DDIM update
# $x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1-\bar\alpha_s-\sigma^2}\,\hat\varepsilon + \sigma z$
# (tensors `x0_hat`, `eps_hat`, `z`; floats `alpha_bar_prev` $=\bar\alpha_s$ and `sigma`). The check runs it
# against the first step of `samplers.ddim_steps` for $\eta = 0, 0.5, 1$.

# %%
def my_ddim_step(x0_hat, eps_hat, alpha_bar_prev, sigma, z):
    ### BEGIN SOLUTION
    return (alpha_bar_prev ** 0.5 * x0_hat + (1 - alpha_bar_prev - sigma ** 2) ** 0.5 * eps_hat
            + sigma * z)
    ### END SOLUTION


nb07.check_ddim_step(my_ddim_step)

# %% [markdown]
# ## 3 · Which timesteps? Spacing and its pitfalls
#
# A sampler with $S$ steps visits a decreasing sub-sequence $\tau_1 > \tau_2 > \dots > \tau_S$ of the $T$
# training timesteps and finishes at the data ($\bar\alpha := 1$). `samplers.timestep_sequence(T, S, spacing)`
# offers four choices (0-based indices, so the noisiest training step is $t = T-1$):
#
# | spacing | visits | used by |
# |---|---|---|
# | `linspace` | round(linspace(0, T−1, S)), both ends | early DDIM code, `diffusers` "linspace" |
# | `leading` | $0, k, 2k, \dots, (S-1)k$ with $k = T/S$ | DDIM's original code, Stable Diffusion's default |
# | `trailing` | $T-1, T-1-k, \dots$ | Lin et al. (2023)'s fix; this package's DDIM default |
# | `logsnr` | uniform in $\lambda = \log(\alpha_t/\sigma_t)$ | DPM-Solver's recommendation; its default here |

# %%
fig, axes = plt.subplots(2, 1, figsize=(8.5, 4.6))
plots.plot_timestep_spacings(T, 10, alphas_cumprod=alpha_bar, ax=axes[0])
plots.plot_timestep_spacings(T, 5, alphas_cumprod=alpha_bar, ax=axes[1])
fig.tight_layout()
plt.show()

for spacing in samplers.SPACINGS:
    seq = samplers.timestep_sequence(T, 10, spacing, alpha_bar)
    print(f"{spacing:>9}: first t = {seq[0]:3d} (√ᾱ = {alpha_bar[seq[0]] ** 0.5:.4f}, the signal the sampler "
          f"assumes is left in x_T), last t = {seq[-1]:3d}")
lead = samplers.timestep_sequence(T, 10, "leading")
assert T - 1 not in lead and max(lead) == T - T // 10


# %% [markdown]
# **The pitfall of `leading`.** It never visits $t = T-1$: with $S = 10$ the first step treats pure noise
# $x_T \sim \mathcal N(0, I)$ as if it were $x_{900}$. With this linear schedule $\bar\alpha_{900}$ is tiny, so
# the mismatch is small here; with Stable Diffusion's "scaled linear" schedule it is not (the model is handed
# an $x_t$ that still should contain visible signal, and cannot generate very bright or very dark images;
# Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed"). `leading` also spends
# a step at $t = 0$, where almost no noise is left, and none at the noisiest end, where the coarse shape of
# the sample is decided. `trailing` starts at $T-1$ and ends at $t = k-1$ before the final jump to $x_0$.
#
# `logsnr` packs its steps into the low-noise end: in the linear schedule half of the $\lambda$ range lies
# below $t \approx 300$, and with 10 steps four of them fall below $t = 100$. Multistep ODE solvers want
# steps of similar size in $\lambda$ (next section).
#
# ### Exercise 3 · trailing spacing
#
# Write `my_trailing(T, steps)`: the list of `steps` timestep indices, noisiest first, that `trailing`
# visits: $\mathrm{round}(T - kT/S) - 1$ for $k = 0, \dots, S-1$.

# %%
def my_trailing(T, steps):
    ### BEGIN SOLUTION
    return [int(round(T - k * T / steps)) - 1 for k in range(steps)]
    ### END SOLUTION


nb07.check_trailing_timesteps(my_trailing)


# %% [markdown]
# ### Exercise 4 · a DDIM sampler of your own
#
# Put the three pieces together. Write `my_ddim(denoiser, diffusion, x_T, steps, eta, generator)`, a whole DDIM
# sampler: visit the timesteps `my_trailing(T, steps)` and then finish with one more step to $t_\text{prev} = -1$,
# the data, where $\bar\alpha_\text{prev} = 1$. At each step from $t$ to $t_\text{prev}$, ask the denoiser for
# $(\hat x_0, \hat\varepsilon)$ = `denoiser(x, t)` (`t` a `torch.long` tensor of shape `[B]`), compute σ with
# `my_ddim_sigma` for that jump, and move with `my_ddim_step`. Take $\bar\alpha$ from
# `diffusion.schedule.alphas_cumprod` (as floats) and $T$ from `diffusion.num_timesteps`. Where σ > 0 draw the
# noise as `torch.randn(x.shape, generator=generator, dtype=x.dtype)` after the denoiser call (elsewhere any `z`
# will do, e.g. zeros): then your sampler draws the random numbers the package's does, and a seed gives the same
# samples.
#
# The check compares your sampler with `samplers.ddim` on a 2D toy for η = 0, 0.5 and 1. The next cell runs it on
# the digits model beside the package's sampler.

# %%
def my_ddim(denoiser, diffusion, x_T, steps, eta=0.0, generator=None):
    ### BEGIN SOLUTION
    ab = diffusion.schedule.alphas_cumprod
    seq = my_trailing(diffusion.num_timesteps, steps)
    x = x_T
    for t, t_prev in zip(seq, seq[1:] + [-1]):
        x0_hat, eps_hat = denoiser(x, torch.full((x.shape[0],), t))
        a_t = float(ab[t])
        a_prev = float(ab[t_prev]) if t_prev >= 0 else 1.0
        sigma = my_ddim_sigma(a_t, a_prev, eta)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype) if sigma > 0 else torch.zeros_like(x)
        x = my_ddim_step(x0_hat, eps_hat, a_prev, sigma, z)
    return x
    ### END SOLUTION


nb07.check_ddim_sampler(my_ddim)

# %%
# your sampler on the digits model, beside the package's: ten noises x_T (labels 0–9), 10 steps, the same seed
den_digits = samplers.make_denoiser(model, diffusion, y=labels[:10])
yours = {}
for eta in (0.0, 1.0):
    with torch.no_grad():
        mine = my_ddim(den_digits, diffusion, x_T[:10], 10, eta, torch.Generator().manual_seed(1))
    package = samplers.ddim(den_digits, diffusion, x_T[:10], steps=10, eta=eta,
                            generator=torch.Generator().manual_seed(1))
    yours[eta] = (mine, package)
    print(f"η = {eta}: your my_ddim vs samplers.ddim, 10 steps: max |difference| = "
          f"{float((mine - package).abs().max()):.1e}")
    assert float((mine - package).abs().max()) < 1e-4
ax = plots.show_class_grid(torch.cat([yours[0.0][0], yours[0.0][1], yours[1.0][0], yours[1.0][1]]), n_rows=4,
                           row_labels=["my_ddim, η = 0", "samplers.ddim, η = 0", "my_ddim, η = 1",
                                       "samplers.ddim, η = 1"],
                           title="10 steps from the same x_T and seed", size_per_image=0.6)
plt.show()

# %% [markdown]
# ## 4 · The ODE view and DPM-Solver++(2M)
#
# With $\eta = 0$, write $\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1-\bar\alpha_t}$ and divide the
# DDIM step by $\alpha_s$:
#
# $$
# \frac{x_s}{\alpha_s} = \frac{x_t}{\alpha_t} + \Big(\frac{\sigma_s}{\alpha_s} - \frac{\sigma_t}{\alpha_t}\Big)\,\hat\varepsilon(x_t, t).
# $$
#
# That is one **Euler step** of the ODE $\mathrm d\bar x / \mathrm d\bar\sigma = \varepsilon_\theta$ in the
# variables $\bar x = x/\alpha$, $\bar\sigma = \sigma/\alpha$: the *probability-flow ODE* of the diffusion
# (Song et al. 2021, §4.3), whose solutions carry $\mathcal N(0, I)$ at $t = T$ to the data distribution at
# $t = 0$. Fast sampling is then numerical integration, and better integrators need fewer steps.
#
# **DPM-Solver++** (Lu et al. 2022) solves the same ODE in the *log-SNR time* $\lambda_t = \log(\alpha_t/\sigma_t)$
# with the network in **data-prediction** form $\hat x_0(x_\lambda, \lambda)$. The linear part of the ODE is
# integrated exactly, leaving only the network term to approximate:
#
# $$
# x_{t_i} = \frac{\sigma_{t_i}}{\sigma_{t_{i-1}}}\,x_{t_{i-1}} + \sigma_{t_i}\int_{\lambda_{t_{i-1}}}^{\lambda_{t_i}} e^{\lambda}\,\hat x_0(x_\lambda, \lambda)\,\mathrm d\lambda
# \;\approx\; \frac{\sigma_{t_i}}{\sigma_{t_{i-1}}}\,x_{t_{i-1}} - \alpha_{t_i}\big(e^{-h_i} - 1\big)\,D_i,
# \qquad h_i = \lambda_{t_i} - \lambda_{t_{i-1}}.
# $$
#
# * **First order**, $D_i = \hat x_0(t_{i-1})$ (hold $\hat x_0$ constant over the step): this is *exactly*
#   the DDIM step (expand $e^{-h_i} = \alpha_{t_{i-1}}\sigma_{t_i}/(\sigma_{t_{i-1}}\alpha_{t_i})$ and
#   compare). DDIM is first-order DPM-Solver++.
# * **2M, second order multistep**: reuse the previous step's prediction to extrapolate $\hat x_0$ linearly
#   in $\lambda$, $D_i = (1 + \tfrac{1}{2r_i})\,\hat x_0(t_{i-1}) - \tfrac{1}{2r_i}\,\hat x_0(t_{i-2})$ with
#   $r_i = h_{i-1}/h_i$. Still **one network evaluation per step**, but second-order accurate.
#
# The extrapolation assumes steps of similar size in $\lambda$, hence the `logsnr` spacing. The
# `ddpm_lite` implementation is `samplers.dpm_solver_pp_2m_steps`. A check of the first bullet on the trained
# model: the first DPM-Solver++ step (which has no previous prediction, so it is first order) and the first
# DDIM step land on the same $x$:

# %%
den = samplers.make_denoiser(model, diffusion, y=labels[:10])
first_dpm = next(samplers.dpm_solver_pp_2m_steps(den, diffusion, x_T[:10], steps=10, spacing="logsnr"))
first_ddim = next(samplers.ddim_steps(den, diffusion, x_T[:10], steps=10, eta=0.0, spacing="logsnr"))
gap = float((first_dpm.x - first_ddim.x).abs().max())
print(f"t = {first_ddim.t}: max |DPM-Solver++ first step − DDIM step| = {gap:.2e}")
assert gap < 1e-4

# %% [markdown]
# ## 5 · Measured: quality and seconds against network evaluations
#
# Now the real comparison, all from the same `N_EVAL` starting noises $x_T$ and labels (one tenth of each
# digit), without guidance:
#
# * **DDPM-style**: ancestral sampling with DDPM's variance, i.e. DDIM with $\eta = 1$ ("DDIM η=1"), which is
#   exactly DDPM at all $T$ steps and DDPM on a sub-sequence at fewer;
# * **DDIM** ($\eta = 0$, `trailing`);
# * **DPM-Solver++(2M)** (`logsnr`).
#
# Quality is measured with the digits classifier of `ddpm_lite.metrics`: **class accuracy** (does a sample
# generated for label 3 look like a 3?) and the **Fréchet distance** between the classifier's features of
# the samples and of real training digits (lower is better; this is *not* FID, which uses Inception
# features). FD is biased upwards at small sample sizes, so for scale we also measure `N_EVAL` real *test*
# digits the same way (a model that reproduces its training digits well can even land a little below that
# line).
#
# **What about full 1000-step DDPM?** Its update is exactly the η = 1 step (section 2), so it costs the same
# per evaluation, and it needs 1000 of them: for `N_EVAL` samples that is the time printed in section 1, far
# beyond this notebook's two-minute budget on a CPU (even 2 samples take half a minute on a busy 2-core
# machine, because at tiny batches the fixed cost per call dominates). So we do **not** run it here:
# its point on the time plot is the median measured seconds per evaluation × 1000 (an extrapolation, marked
# as such); the η = 1 runs show how DDPM's own update behaves at fewer steps. Notebook 06 runs the real
# 1000-step sampler on ten digits.

# %%
real_train = load_dataset("digits", split="train").images
real_test = load_dataset("digits", split="test").images
fd_floor = metrics.feature_frechet_distance(real_test[:N_EVAL], real_train, classifier)
acc_real = metrics.sample_accuracy(real_test[:N_EVAL], load_dataset("digits", split="test").labels[:N_EVAL],
                                   classifier)
RUNS = [("DDIM η=1", "ddim", 1.0, s) for s in ETA1_STEPS] + \
       [("DDIM", "ddim", 0.0, s) for s in DDIM_STEPS] + \
       [("DPM-Solver++(2M)", "dpmpp2m", 0.0, s) for s in DPM_STEPS]


def run(sampler, eta, steps, n=N_EVAL):
    start = time.perf_counter()
    x = samplers.sample(model, diffusion, (n, 1, 8, 8), sampler=sampler, steps=steps, eta=eta, y=labels[:n],
                        x_T=x_T[:n], generator=torch.Generator().manual_seed(1))
    return x, time.perf_counter() - start


results, samples = [], {}
for name, sampler, eta, steps in RUNS:
    x, sec = run(sampler, eta, steps)
    samples[(name, steps)] = x
    results.append(dict(sampler=name, nfe=steps, seconds=sec, accuracy=metrics.sample_accuracy(x, labels, classifier),
                        fd=metrics.feature_frechet_distance(x, real_train, classifier)))

# DDPM at all T steps, not run: the median measured time per evaluation (every update above costs one network
# call on N_EVAL samples, as DDPM's does), times T
sec_per_nfe_median = float(np.median([r["seconds"] / r["nfe"] for r in results]))
results.append(dict(sampler="DDPM", nfe=T, seconds=sec_per_nfe_median * T, accuracy=None, fd=None))

print(f"{'sampler':>17} {'NFE':>5} {'seconds':>8} {'accuracy':>9} {'FD':>7}")
for r in results:
    acc = "" if r["accuracy"] is None else f"{100 * r['accuracy']:8.1f}%"
    fd = "" if r["fd"] is None else f"{r['fd']:7.2f}"
    print(f"{r['sampler']:>17} {r['nfe']:5d} {r['seconds']:8.2f} {acc:>9} {fd:>7}")
print(f"{'real test digits':>17} {'':5} {'':8} {100 * acc_real:8.1f}% {fd_floor:7.2f}   (for scale)")
print(f"(DDPM's {T}-step time is extrapolated: {1000 * sec_per_nfe_median:.0f} ms per evaluation × {T}; not run)")

# %%
fig = plots.plot_sampler_benchmark(results, floor=fd_floor, floor_label="real test digits")
fig.axes[0].axhline(100 * acc_real, color="k", ls=":", lw=1, label="real test digits")
fig.axes[0].legend(fontsize=8)
fig.suptitle(f"{N_EVAL} samples from the same noise (DDPM at {T} steps: time extrapolated, not run)", fontsize=10,
             y=1.03)
plt.show()

# %%
by = {(r["sampler"], r["nfe"]): r for r in results}
measured = [r for r in results if r["accuracy"] is not None]
best = max(measured, key=lambda r: r["accuracy"])
ddim50 = by[("DDIM", 50)]
per_nfe = [r["seconds"] / r["nfe"] for r in measured]
print(f"best accuracy: {100 * best['accuracy']:.0f}% ({best['sampler']}, {best['nfe']} NFE); "
      f"DDIM at 50 NFE: {100 * ddim50['accuracy']:.0f}%, FD {ddim50['fd']:.2f}, {ddim50['seconds']:.1f} s "
      f"(1000-step DDPM: about {by[('DDPM', T)]['seconds']:.0f} s)")
print(f"seconds per evaluation over all runs: {1000 * min(per_nfe):.0f}–{1000 * max(per_nfe):.0f} ms")
few = min(DDIM_STEPS)
print(f"DDIM FD at {few} NFE: {by[('DDIM', few)]['fd']:.2f}, at 10 NFE: {by[('DDIM', 10)]['fd']:.2f}")
# DDIM with 50 evaluations (1/20 of DDPM's) is within a few points of the best accuracy measured here,
# with an FD at the level of real held-out digits
assert ddim50["accuracy"] >= best["accuracy"] - 0.05, (ddim50, best)
assert ddim50["fd"] < 1.5 * fd_floor, (ddim50, fd_floor)
# too few steps do hurt: the knee of the curve
assert by[("DDIM", few)]["fd"] > 1.5 * by[("DDIM", 10)]["fd"]

# %% [markdown]
# What the measurements say (the exact numbers above vary a little between machines and runs):
#
# * **Seconds follow NFE.** All runs cost about the same per network evaluation (up to the noise of a shared
#   machine), so the time plot is close to a straight line: the samplers' own arithmetic is negligible next
#   to the network. DDIM at 50 evaluations takes about 1/20 of the time of 1000-step DDPM.
# * **A handful of steps is enough on this model.** From about 5–10 evaluations on, every sampler is at the
#   level of real held-out digits in accuracy and FD, and DDIM at 50 is within a few points of the best.
#   Below that (2–3 evaluations) quality drops sharply: each step then has to bridge most of the noise
#   range, and a single $\hat x_0$ from pure noise is a blurry class average. DPM-Solver++ suffers most at
#   2 steps: with 2 steps uniform in log-SNR it visits $t = 999$ and $t = 0$, so it jumps from pure noise
#   almost to the data in one (first-order) step; the spacing that suits it at 10 steps fails at 2.
# * **Past the knee, the samplers differ by a few samples** out of `N_EVAL` (one sample is 100/`N_EVAL`
#   points of accuracy), not a significant difference at this sample size. 8×8 digits are an easy target;
#   on CIFAR-10, Song et al. (2021, Table 1) do see large gaps: FID 13.36 / 6.84 / 4.67 / 4.16 for DDIM
#   (η = 0) at 10 / 20 / 50 / 100 steps, against 41.07 / 18.36 / 8.01 / 5.78 for η = 1. On our model the stochastic sampler is about as good as
#   the deterministic ones at equal NFE: fresh noise at each step also washes out errors of earlier steps
#   (Karras et al. 2022, §4), which matters for a small network. To see how the solvers really differ, we
#   compare the samples themselves.
#
# **Under the real digits' line: is the model copying?** DDIM's FD lands at (or even under) the line of real
# held-out digits. A model that had memorised its 1,442 training digits would score exactly like that, so look
# directly: for every sample, its **nearest training digit** in pixel space (`metrics.nearest_neighbours`,
# Euclidean distance over the 64 pixels), against the same distance for held-out real digits, which are new
# handwriting by construction. Copies would sit near distance 0, far left of the real digits.

# %%
x50 = samples[("DDIM", 50)]
nn_samples = metrics.nearest_neighbours(x50, real_train)
nn_real = metrics.nearest_neighbours(real_test[:N_EVAL], real_train)
fig, axes = plt.subplots(1, 2, figsize=(10, 2.9), gridspec_kw={"width_ratios": [1, 1.5]})
bins = np.linspace(0, float(max(nn_samples.distances.max(), nn_real.distances.max())) * 1.05, 30)
axes[0].hist(nn_real.distances.numpy(), bins=bins, alpha=0.6, label="held-out real digits")
axes[0].hist(nn_samples.distances.numpy(), bins=bins, alpha=0.6, label="DDIM-50 samples")
axes[0].set_xlabel("distance to the nearest training digit")
axes[0].legend(fontsize=8)
plots.show_class_grid(torch.cat([x50[:10], real_train[nn_samples.indices[:10]]]), n_rows=2, ax=axes[1],
                      row_labels=["sample", "nearest train"])
plt.show()
med_s, med_r = float(nn_samples.distances.median()), float(nn_real.distances.median())
close = float((nn_samples.distances < 0.5 * med_r).float().mean())
print(f"median distance to the nearest training digit: samples {med_s:.2f}, held-out real digits {med_r:.2f}; "
      f"samples closer than half the real median: {close:.0%}")
assert med_s > 0.6 * med_r, (med_s, med_r)   # no wholesale copying
assert close < 0.1, close

# %% [markdown]
# The samples' nearest training digits are as far away as a new real digit's (the two medians agree to about
# 1%): each sample is *a* 3, not *that* 3 from the training set, and none sits anywhere near a copy. An FD at
# the real digits' line comes from samples that are as typical as real handwriting, not from copying. Carlini et al. (2023) ran the same nearest-neighbour test on Stable Diffusion and did
# find memorised images, mostly ones duplicated many times in its training data; a 1,442-image dataset
# seen hundreds of times each is exactly where to look.
#
# ## 6 · The same noise through different samplers
#
# Because DDIM and DPM-Solver++ are deterministic maps from $x_T$ to $x_0$, the *same* $x_T$ gives nearly
# the *same* digit whatever the solver and step count once there are enough steps: they approximate the
# same ODE solution. The stochastic $\eta = 1$ sampler draws fresh noise at every step, so it ends up
# elsewhere. Rows: samplers; columns: the first ten noises (labels 0–9):

# %%
rows = [("DDIM η=1", 3), ("DDIM η=1", 10), ("DDIM", 3), ("DDIM", 10), ("DDIM", 50),
        ("DPM-Solver++(2M)", 3), ("DPM-Solver++(2M)", 10), ("DPM-Solver++(2M)", max(DPM_STEPS))]
grid = torch.cat([samples[k][:10] for k in rows])
ax = plots.show_class_grid(grid, n_rows=len(rows), row_labels=[f"{n}, {s} NFE" for n, s in rows],
                           title="one x_T per column, labels 0–9", size_per_image=0.6)   # readable digits
plt.show()

ref = samples[("DPM-Solver++(2M)", max(DPM_STEPS))]
dist = {k: float((samples[k] - ref).abs().mean()) for k in samples}
for k in samples:
    print(f"{k[0]:>17} {k[1]:4d} NFE: mean |x0 − x0 of DPM-Solver++ at {max(DPM_STEPS)} NFE| = {dist[k]:.3f}")
# the deterministic samplers converge to the same images (DDIM at 50 NFE agrees with DPM-Solver++) ...
assert dist[("DDIM", 50)] < 0.03
# ... DPM-Solver++ gets there in fewer evaluations than DDIM (10 instead of about 50) ...
assert dist[("DPM-Solver++(2M)", 10)] < dist[("DDIM", 10)] / 2
assert dist[("DPM-Solver++(2M)", 10)] < 2 * dist[("DDIM", 50)]
# ... and the stochastic sampler ends up elsewhere
assert min(dist[k] for k in samples if k[0] == "DDIM η=1") > 5 * dist[("DDIM", 50)]

# %% [markdown]
# Read the distances as a convergence study: measured against DPM-Solver++ at the most steps (DDIM at 50
# agrees with it to about 0.01, so this is the common limit of both solvers, not a DPM-Solver-specific
# answer), DDIM's error shrinks roughly in proportion to $1/\text{NFE}$ (first order), DPM-Solver++'s much
# faster (second order): **DPM-Solver++ at 10 evaluations is about as close to the converged images as DDIM
# at 50.** That is the payoff of a higher-order solver, and it is invisible in the accuracy and FD columns on
# an easy dataset, where both are already good enough. The stochastic η = 1 sampler draws new noise at every
# step and ends at different digits for the same $x_T$: still good digits, just not the same ones.

# %% [markdown]
# ## 7 · Discretisation error or model error? An exact oracle in 2D
#
# A sample from a trained network and a few-step sampler is wrong for two reasons, which the digits
# measurements of section 5 cannot tell apart:
#
# * **discretisation error**: the sampler replaces the continuous reverse process (the probability-flow ODE
#   of section 4) by $S$ steps;
# * **model error**: the network's $\varepsilon_\theta(x_t, t)$ is not the true $\mathbb E[\varepsilon \mid x_t]$.
#
# For a Gaussian mixture the true $\mathbb E[\varepsilon \mid x_t]$ is known in closed form
# (`toys.ExactGMMDenoiser`, notebook 02 §8), so the two errors can be measured one at a time:
#
# | run | its error |
# |---|---|
# | exact denoiser, $S$ steps | discretisation only |
# | learned denoiser, 200 steps | model only (200 steps make discretisation negligible: checked below, the exact denoiser there sits at the sampling floor) |
# | learned denoiser, $S$ steps | both |
#
# The data is the ring of notebook 02 (8 Gaussians, radius 0.7, standard deviation 0.07) with the digits
# model's schedule (linear, $T = 1000$). The learned denoiser is a `ToyMLP` trained for 600 steps
# (`ddpm_lite.oracle.fit_toy_denoiser`, a few seconds): deliberately imperfect, like every real network.
#
# **The distance.** To compare a cloud of samples $a$ with data samples $b$ we use the *sliced Wasserstein
# distance* (`metrics.sliced_wasserstein`; Rabin et al. 2011, Bonneel et al. 2015),
#
# $$
# \mathrm{SW}_2(a, b) = \Big(\mathbb E_{\theta}\; W_2^2\big(\theta^\top a,\ \theta^\top b\big)\Big)^{1/2},
# $$
#
# the optimal-transport distance $W_2$ between the 1D projections on a direction $\theta$ (in 1D it simply
# pairs the sorted values), averaged over directions. It is in the units of $x$: shifting a cloud by $s$ moves
# it by $|s|/\sqrt 2$ in 2D. Between two finite samples of the same distribution it is not 0 but about
# $1/\sqrt n$ small, so every table also shows that **floor**: two independent samples of the data.
#
# As for digits, $\hat x_0$ is clipped to $[-1, 1]$ at every step (`threshold="static"`; the ring lies well
# inside the square). The end of this section shows why that matters for the learned model.
#
# **Predict, then run.** With the *exact* denoiser, more DDIM steps bring the samples ever closer to the data,
# down to the floor. With the *learned* network, what will going from 20 to 50 DDIM steps do to the samples'
# distance to the data? (a) it keeps falling, down to about where the exact denoiser gets with 50 steps; (b) it
# barely falls: it levels off at an error set by the network, well above the exact denoiser's; (c) it rises:
# more steps pile up more of the network's errors. Commit to an answer before running the cells below.

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "b"
### END SOLUTION
nb07.commit_plateau_prediction(prediction)

# %%
ORACLE_STEPS = (2, 3, 5, 10, 20, 50)     # step counts (= NFE) of DDIM and DPM-Solver++ on the 2D toy
ring = toys.GaussianMixture.ring(8, radius=0.7, std=0.07)
toy_diffusion = GaussianDiffusion("linear", T)          # the digits model's schedule: linear, T = 1000
start = time.perf_counter()
toy_model = fit_toy_denoiser(ring, toy_diffusion, steps=600, seed=0)   # a ToyMLP, 600 AdamW steps
train_seconds = time.perf_counter() - start
start = time.perf_counter()
dec = error_decomposition(ring, toy_diffusion, toy_model, sampler_names=("ddim", "dpmpp2m"),
                          steps=ORACLE_STEPS, many_steps=200, n=2000, threshold="static")
print(f"ToyMLP trained in {train_seconds:.1f} s; all the sampling below: {time.perf_counter() - start:.1f} s")
print(dec.table())

# %%
names = {"ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)"}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, (key, name) in zip(axes, names.items()):
    rows = [r for r in dec.rows if r["sampler"] == key]
    nfe = [r["steps"] for r in rows]
    ax.loglog(nfe, [r["discretisation"] for r in rows], "C0-o", label="exact denoiser: discretisation error")
    ax.loglog(nfe, [r["total"] for r in rows], "C1--s", label="learned denoiser: total error")
    ax.axhline(dec.model_error[key], color="C1", lw=1, label=f"learned, {dec.many_steps} steps: model error")
    ax.axhline(dec.floor, color="k", ls=":", lw=1, label="floor (data vs data)")
    ax.set(xlabel="network evaluations (NFE)", title=name)
    ax.minorticks_off()
    ax.set_xticks(ORACLE_STEPS, [str(k) for k in ORACLE_STEPS])
    ax.set_yticks([0.02, 0.05, 0.1, 0.2, 0.5], ["0.02", "0.05", "0.1", "0.2", "0.5"])
axes[0].set_ylabel("sliced Wasserstein SW₂ to the data")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# what the errors look like, from the same x_T: discretisation only (exact denoiser, 5 NFE) and model only
# (learned denoiser, 200 NFE)
x_T_toy = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
exact_toy = toys.ExactGMMDenoiser(ring, toy_diffusion.schedule)
clouds = {"data": ring.sample(2000, generator=torch.Generator().manual_seed(1)),
          "exact, DDIM 5 NFE": sample_points(exact_toy, toy_diffusion, x_T_toy, "ddim", 5, threshold="static"),
          "exact, DPM-Solver++ 5 NFE": sample_points(exact_toy, toy_diffusion, x_T_toy, "dpmpp2m", 5,
                                                     threshold="static"),
          "learned, DDIM 200 NFE": sample_points(toy_model, toy_diffusion, x_T_toy, "ddim", 200, threshold="static")}
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
for ax, (name, x) in zip(axes, clouds.items()):
    plots.plot_2d(x, ax=ax, lim=1.0, s=2, title=name)
fig.tight_layout()
plt.show()

# %%
by = {(r["sampler"], r["steps"]): r for r in dec.rows}


def crossover(key):
    """The fewest NFE at which the exact sampler's discretisation error is below the model error."""
    return min(s for s in ORACLE_STEPS if by[(key, s)]["discretisation"] < dec.model_error[key])


for key, name in names.items():
    print(f"{name}: discretisation error falls below the model error ({dec.model_error[key]:.3f}) at "
          f"{crossover(key)} NFE; at {max(ORACLE_STEPS)} NFE the learned sampler's total error is "
          f"{by[(key, max(ORACLE_STEPS))]['total']:.3f}")
# 200 steps with the exact denoiser reach the floor: the "model error" runs have no discretisation error left
assert all(v < 1.5 * dec.floor for v in dec.exact_many.values()), (dec.exact_many, dec.floor)
# the learned model is measurably imperfect
assert all(v > 2 * dec.floor for v in dec.model_error.values()), (dec.model_error, dec.floor)
for key in names:
    # few steps: discretisation dominates, the learned sampler is about as far off as the exact one
    assert abs(by[(key, 3)]["total"] - by[(key, 3)]["discretisation"]) < 0.3 * by[(key, 3)]["discretisation"]
    # many steps: what is left is the model error
    assert abs(by[(key, max(ORACLE_STEPS))]["total"] - dec.model_error[key]) < 0.15 * dec.model_error[key]
    assert by[(key, 2)]["discretisation"] > 5 * by[(key, max(ORACLE_STEPS))]["discretisation"]
# the second-order solver gets its discretisation error under the model error in fewer steps
assert crossover("dpmpp2m") < crossover("ddim")
nb07.reveal_plateau(prediction, by[("ddim", 20)]["total"], by[("ddim", 50)]["total"],
                    by[("ddim", 50)]["discretisation"])

# %% [markdown]
# Read each panel from the left:
#
# * **Few steps: the sampler is the bottleneck.** The learned model's error (dashed) sits on top of the
#   exact denoiser's (solid): a perfect network would not do better with this sampler at this NFE. Here a
#   better solver or more steps help; a better network does not. In the scatter plots, 5 DDIM steps blur
#   the ring into a disc even with the exact denoiser: the last step jumps from $t = 199$, where the noise
#   ($\sqrt{1-\bar\alpha_t} \approx 0.6$) is larger than the gaps between the modes, straight to
#   $\mathbb E[x_0 \mid x_t]$, an average over modes. DPM-Solver++ with the same 5 evaluations resolves them.
# * **Many steps: the network is the bottleneck.** Once the discretisation error is below the model error
#   (the horizontal line), more steps buy nothing: the learned samples converge to the learned model's ODE
#   solution, which is not the data (its modes are smeared along the ring: "learned, DDIM 200 NFE"). Only a
#   better model helps.
# * **The crossover** is where to stop adding steps. DPM-Solver++ reaches it in fewer evaluations than DDIM
#   (second order against first, section 4). A better-trained model lowers the red line and moves the
#   crossover to more steps: the payoff of a high-order solver grows with the quality of the network.
#   Errors do not simply add (a distance is not a variance), but they are bounded by the sum: by the triangle
#   inequality the total error is at most the learned sampler's own discretisation error plus the model error.
#
# **Why clip $\hat x_0$?** Without the clipping the exact denoiser samples the same, but a few of the learned
# model's samples run away:

# %%
free = {name: sample_points(m, toy_diffusion, x_T_toy, "ddim", 50)          # threshold=None
        for name, m in (("exact", exact_toy), ("learned", toy_model))}
runaway = free["learned"].norm(dim=1) > 2                                            # the ring has radius 0.7
print(f"DDIM, 50 steps, no clipping: {int((free['exact'].norm(dim=1) > 2).sum())} exact and {int(runaway.sum())} "
      f"learned samples of {len(x_T_toy)} end beyond |x| = 2"
      + (f" (as far as |x| = {float(free['learned'].norm(dim=1).max()):.0f}); their starting noise has "
         f"|x_T| ≥ {float(x_T_toy[runaway].norm(dim=1).min()):.1f}" if runaway.any() else ""))
print(f"1/√ᾱ at t = {T - 1}: {float(toy_diffusion.schedule.alphas_cumprod[-1]) ** -0.5:.0f}")
assert int((free["exact"].norm(dim=1) > 2).sum()) == 0

# %% [markdown]
# The runaways all start in the outer tail of $x_T \sim \mathcal N(0, I)$, where the network has seen few
# training points at $t \approx T$. There its $\hat\varepsilon$ is off by a little, and
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ multiplies that little by
# $1/\sqrt{\bar\alpha_t}$ (printed above). The first steps then aim at a wildly wrong $\hat x_0$, and the
# deterministic sampler follows it to the end. Clipping $\hat x_0$ to the data range repairs exactly this, one
# reason the image samplers clip by default; it is a model error that clipping hides, not a discretisation
# error (more steps do not help).

# %% [markdown]
# ## 8 · Try it: the sampler explorer
#
# Pick a sampler and a number of steps. Every choice starts from the same ten noises (one per digit), is
# sampled once (timed) and cached; the right panel collects the seconds of every run so far against its
# NFE. Try DDIM vs DPM-Solver++ at 2, 3 and 10 steps, and then the ancestral DDPM (all 1000 steps: it
# takes a while, which is the point).

# %%
explorer = SamplerExplorer(model, diffusion, n=10, steps=(2, 3, 5, 10, 20, 50, 100), sampler="dpmpp2m", step=10)
explorer

# %%
# the widget is driven from code as well (this is how the tests use it)
explorer.slider.value = 5
print(explorer.info.value.replace("<code>", "").replace("</code>", ""))
assert explorer.run("dpmpp2m", 5)["nfe"] == 5 and explorer.sample_calls == 2

# %% [markdown]
# ## Summary
#
# * Ancestral sampling evaluates the network once per step, and its steps must be small because each models
#   the reverse of a small Gaussian step: $T = 1000$ evaluations, and **time ∝ NFE**.
# * DDPM's training only uses the marginals $q(x_t \mid x_0)$. **DDIM** samples a non-Markovian process with
#   the same marginals, so the same network works with any sub-sequence of timesteps. Its noise level
#   $\sigma(\eta)$ interpolates between deterministic sampling ($\eta = 0$) and DDPM's posterior variance
#   ($\eta = 1$, checked to $10^{-9}$).
# * The timesteps matter: `leading` spacing never visits $t = T-1$; `trailing` does; `logsnr` suits
#   multistep solvers.
# * Deterministic DDIM is the Euler method for the probability-flow ODE, and the first-order case of
#   **DPM-Solver++**; its second-order multistep version (2M) converges to the same samples in fewer
#   evaluations.
# * Measured here: time ∝ NFE; on this model every sampler reaches the quality of real held-out digits by
#   5–10 evaluations, and DDIM at 50 is within a few points of the best accuracy at 1/20 of DDPM's cost.
#   The solvers differ in how fast they converge to the same images: DPM-Solver++(2M) at 10 evaluations is
#   as close to the converged samples as DDIM at 50.
# * With an exact denoiser (a 2D Gaussian mixture) a sampler's error splits into **discretisation error**
#   (exact denoiser, $S$ steps) and **model error** (learned denoiser, many steps). With few steps the
#   sampler dominates; past the crossover (on the toy: about 20 NFE for DDIM, 5 for DPM-Solver++) only a
#   better network helps.
# * Built by you: σ(η), the DDIM step and the trailing spacing make a whole DDIM sampler that reproduces
#   `samplers.ddim` on the digits model, deterministic (η = 0) and stochastic (η = 1).
#
# ## What comes next
#
# **[07 · Guidance](08_guidance.ipynb)** uses these fast samplers to study classifier-free guidance: how the
# guidance weight trades diversity for fidelity (measured), what large weights do to $\hat x_0$, and static
# clipping against Imagen's dynamic thresholding. It closes the DDPM part of the course. The next part moves
# from pixels and class labels to latents and text: **[08 · Latent diffusion](09_latent_diffusion.ipynb)** (the
# core of Stable Diffusion) runs samplers like these in the compressed latent space of an autoencoder; text
# conditioning with CLIP, text-to-image and personalisation with DreamBooth follow (not published yet).
#
# **References.** J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020
# (Algorithm 2). J. Song, C. Meng, S. Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021 (eqs. 7, 12, 16;
# Table 1). C. Lu, Y. Zhou, F. Bao, J. Chen, C. Li, J. Zhu, *DPM-Solver++: Fast Solver for Guided Sampling
# of Diffusion Probabilistic Models*, 2022 (Algorithm 2). Y. Song et al., *Score-Based Generative Modeling
# through Stochastic Differential Equations*, ICLR 2021 (the probability-flow ODE). S. Lin, B. Liu, J. Li,
# X. Yang, *Common Diffusion Noise Schedules and Sample Steps are Flawed*, WACV 2024 (trailing spacing).
# J. Sohl-Dickstein et al., *Deep Unsupervised Learning using Nonequilibrium Thermodynamics*, ICML 2015.
# T. Karras, M. Aittala, T. Aila, S. Laine, *Elucidating the Design Space of Diffusion-Based Generative
# Models*, NeurIPS 2022 (§4, stochastic sampling). J. Rabin, G. Peyré, J. Delon, M. Bernot, *Wasserstein Barycenter
# and its Application to Texture Mixing*, SSVM 2011, and N. Bonneel, J. Rabin, G. Peyré, H. Pfister, *Sliced and
# Radon Wasserstein Barycenters of Measures*, JMIV 2015 (the sliced Wasserstein distance).

# %%
elapsed = time.perf_counter() - NOTEBOOK_START
print(f"notebook run time: {elapsed:.0f} s")
