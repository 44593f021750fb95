# %% [markdown]
# # 09 · Latent diffusion: the same diffusion, in an autoencoder's latent space
#
# Every model so far denoised **pixels**. That is fine for 8×8 digits; it is not for photographs. A U-Net
# step costs roughly in proportion to the number of pixels it processes, and a sampler runs it 20–1000 times per
# image. Rombach et al. (2022) observed that most of those pixels' bits describe detail we hardly see, and
# split the job in two: an **autoencoder** compresses images into a small *latent* once, and an ordinary
# diffusion model learns the distribution of the latents. That is **latent diffusion**, the "LDM" behind
# Stable Diffusion.
#
# **What you will learn**
#
# * why a latent space: the cost of a U-Net step grows with the pixels, and *perceptual* compression (dropping
#   invisible detail) can be separated from *semantic* compression (what the generative model learns);
# * the first stage, a small KL-regularised autoencoder (`AutoencoderKL`): reconstructions, what a 4×7×7
#   latent looks like, what its reconstruction error and KL are, and the reparameterised sample (you write it,
#   and draw the autoencoder's samples with it);
# * the **latent scale factor**: why diffusion needs latents of unit variance (you measure it with your own
#   function), and what goes wrong without it (you predict where first);
# * that latent diffusion is the *very same* `GaussianDiffusion`, `UNet` and samplers, on 4×7×7 instead of
#   1×28×28, and what it buys: parameters, GFLOPs, images/s and quality, measured side by side;
# * image-to-image (SDEdit) with a strength slider (you write which timesteps it runs, then run an edit by hand
#   with them), and inpainting half a digit, in latent space;
# * how the pieces map to Stable Diffusion's (VAE, U-Net, scheduler, text encoder) and their real sizes.
#
# Models: the course ships two class-conditional models of the 28×28 `mnist5k` digits, trained with the
# command line (README, "latent diffusion from the command line"): `mnist5k` in pixel space and
# `mnist5k-latent` in the latent space of the autoencoder `mnist5k-autoencoder` (stored inside it).
#
# *Run time: about a minute on a 2-core laptop CPU (most of it sampling the pixel model for section 5).*

# %%
# Settings. The checkpoints ship with the course (assets/checkpoints/): a 28×28 pixel-space model and a latent
# one whose folder also holds its autoencoder (checkpoint/autoencoder/). Point these at your own runs
# (`python -m ddpm_lite train ... --out runs/NAME`, then runs/NAME) to study those instead.
PIXEL_CHECKPOINT = "assets/checkpoints/mnist5k"
LATENT_CHECKPOINT = "assets/checkpoints/mnist5k-latent"
N_COMPARE = 100          # samples per model for the speed and quality comparison (10 of each digit); GPU: 1000
STEPS = 20               # DDIM steps for sampling and editing (benchmarks/latent.py uses 50)
TRAIN_BATCH = 32         # batch of the training-speed measurement (forward + backward + AdamW)

# %%
import copy
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lite import checkpoint, editing, latent, metrics, plots, samplers
from ddpm_lite.autoencoder import measure_scale_factor
from ddpm_lite.data import load_dataset
from ddpm_lite.exercises import nb09
from ddpm_lite.unet import UNet
from ddpm_lite.widgets import Img2ImgExplorer

plots.setup()                  # small figures (72 dpi), grey images
torch.set_num_threads(2)       # two threads: 15–30 % faster than one on a 2-core CPU
NOTEBOOK_START = time.perf_counter()

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
pixel_model, pixel_diffusion = checkpoint.from_pretrained(REPO / PIXEL_CHECKPOINT)    # EMA weights, eval mode
latent_model, latent_diffusion = checkpoint.from_pretrained(REPO / LATENT_CHECKPOINT)
ae = checkpoint.load_autoencoder(REPO / LATENT_CHECKPOINT)                           # the frozen first stage
classifier = metrics.load_classifier("mnist5k")     # a small CNN trained on real 28×28 digits


def n_params(module):
    return sum(p.numel() for p in module.parameters())


print(f"pixel model: {n_params(pixel_model) / 1e6:.2f}M parameters; latent model: {n_params(latent_model) / 1e6:.2f}M "
      f"+ autoencoder {n_params(ae) / 1e6:.2f}M")
test = load_dataset("mnist5k", split="test")        # real digits none of the models was trained on (sorted by class)
shuffle = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))[:200]
x_test, y_test = test.images[shuffle], test.labels[shuffle]

# %% [markdown]
# ## 1 · Why a latent space?
#
# **The cost.** A convolution costs (kernel size × channels in × channels out) multiply-adds *per pixel*, so a
# U-Net's cost per step grows linearly with the number of pixels (attention, quadratically). Counting the
# floating-point operations (FLOPs) of one forward pass of the pixel model's architecture, built at a few image sizes:

# %%
def gflops(model, x, y):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(x.shape[0], dtype=torch.long), y)
    return counter.get_total_flops() / 1e9


cfg = dict(pixel_model.config)
sizes = (14, 28, 56)
cost = {s: gflops(UNet(**{**cfg, "image_size": s, "attention_resolutions": ()}), torch.zeros(1, 1, s, s),
                  torch.zeros(1, dtype=torch.long)) for s in sizes}
for s in sizes:
    print(f"{s:3d}×{s:<3d} = {s * s:5d} pixels: {cost[s]:6.3f} GFLOPs per image per step "
          f"({cost[s] / cost[28]:.2f}× the 28×28 cost)")
assert 3.5 < cost[56] / cost[28] < 4.5        # 4× the pixels, 4× the cost (attention left out here)

# %% [markdown]
# At Stable Diffusion's 512×512 (three colours each) that is $\approx 334\times$ the pixels of a 28×28 digit, for every one of the
# sampler's steps. The latent of an autoencoder with downsampling factor $f$ has $f^2$ times fewer positions
# (SD: $f = 8$, 512×512×3 → 64×64×4, 48× fewer numbers).
#
# **What may be thrown away.** LDM's Figure 2 plots how many bits a likelihood model spends against how much
# the image changes (rate against distortion): most of the bits of an image go into **imperceptible detail**
# (the exact value of every pixel), and only a few into the **semantic** content (which digit, its shape and
# style). Rombach et al. therefore split learning in two stages:
#
# 1. **perceptual compression**: an autoencoder removes the high-frequency detail that the eye barely sees,
#    keeping images that *look* the same; trained once, then frozen;
# 2. **semantic compression**: the diffusion model learns the distribution of the latents, the part of the
#    problem that is about *content*, at a fraction of the cost per step.
#
# The same U-Net code does the second stage; only its input changes. Let's look at the first stage.
#
# ## 2 · The first stage: a KL-regularised autoencoder
#
# `AutoencoderKL` maps an image $x$ (1×28×28) to a Gaussian $q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma^2(x))$
# over a latent of $c = 4$ channels at 7×7 positions ($f = 4$: two stride-2 convolutions), and decodes a
# latent back to an image. It is trained (LDM §3, App. G) to minimise
#
# $$
# \mathcal L = \big\lVert x - D(z)\big\rVert_1 + \beta\,\mathrm{KL}\big(q(z\mid x)\,\Vert\,\mathcal N(0, I)\big),
# \qquad z = \mu + \sigma \odot \varepsilon,\ \varepsilon \sim \mathcal N(0, I),
# $$
#
# with a tiny KL weight ($\beta = 10^{-6}$): the KL term is not there to make a generative model out of the
# autoencoder (a VAE), only to keep the latent from drifting to arbitrary scales. Reconstructions of held-out
# digits, and their error:

# %%
with torch.no_grad():
    posterior = ae.encode(x_test)                               # q(z | x): .mean, .logvar, .std, .sample(), .kl()
    recon = ae.decode(posterior.mean).clamp(-1, 1)              # D(μ): what latent diffusion's decoder sees
err = (recon - x_test).abs()
show = slice(0, 12)
ax = plots.show_class_grid(torch.cat([x_test[show], recon[show], (4 * err[show]).clamp(0, 1) * 2 - 1]), n_rows=3,
                           row_labels=["input", "reconstruction", "|error| × 4"], size_per_image=0.7,
                           title=f"{ae.config['channels']} channels, latent {tuple(ae.latent_shape)}")
plt.show()

l1 = float(err.mean())                                          # images in [-1, 1]
psnr = float(10 * torch.log10(4 / (recon - x_test).pow(2).mean()))   # peak-to-peak range 2 → peak² = 4
acc_real = metrics.sample_accuracy(x_test, y_test, classifier)
acc_recon = metrics.sample_accuracy(recon, y_test, classifier)
print(f"mean |x − D(E(x))| = {l1:.4f} per pixel (range [-1, 1]), PSNR {psnr:.1f} dB")
print(f"classifier accuracy on the {len(x_test)} real digits: {acc_real:.1%}, on their reconstructions: {acc_recon:.1%}")
assert l1 < 0.04, l1                                             # ≈ 1 % of the range per pixel
assert acc_recon >= acc_real - 0.03, (acc_recon, acc_real)    # the content survives the compression

# %% [markdown]
# The reconstructions are hard to tell from the inputs; what is lost (the error, shown 4× brighter) sits on
# the strokes' edges, i.e. high-frequency detail, and the classifier reads the reconstructions as well as
# the originals: the perceptual compression keeps the content.
#
# **The latent as an image.** Each digit becomes 4 × 7 × 7 = 196 numbers instead of 784 pixels. Its four
# channels still look like a coarse, 7×7 version of the digit (the encoder is a stack of local convolutions,
# so the latent keeps the image's layout; this is what lets a U-Net work on it):

# %%
fig = plots.plot_latent_channels(posterior.mean[:4] * ae.scale_factor, x_test[:4])
plt.show()

# %% [markdown]
# **What $c$ and the KL weight trade.** The autoencoder's two knobs set how much it may keep. More latent
# channels $c$ (or a smaller $f$) keep more detail but leave the diffusion model a bigger space to learn; a
# larger $\beta$ pulls $q(z\mid x)$ towards $\mathcal N(0, I)$, i.e. makes the latent noisier and carry less
# information about $x$. For a diagonal Gaussian the KL has a closed form (Kingma & Welling 2014, App. B),
# summed over the $c\,h\,w$ latent dimensions:
#
# $$
# \mathrm{KL}\big(\mathcal N(\mu, \operatorname{diag}\sigma^2)\,\Vert\,\mathcal N(0, I)\big) = \tfrac12 \sum_j \big(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2\big).
# $$
#
# It is (an upper bound on) how many nats the latent carries about the image. The numbers of our autoencoder:

# %%
kl = posterior.kl()                                             # one value per image, in nats
sigma = posterior.std
print(f"latent: {ae.latent_shape[0]}×{ae.latent_shape[1]}×{ae.latent_shape[2]} = {int(np.prod(ae.latent_shape))} numbers "
      f"for 784 pixels ({784 / np.prod(ae.latent_shape):.0f}× fewer)")
print(f"KL per image: {float(kl.mean()):.0f} nats = {float(kl.mean()) / np.log(2):.0f} bits "
      f"(β · KL = {1e-6 * float(kl.mean()):.1e} against an L1 term of {784 * l1:.1f} per image)")
print(f"posterior std σ: median {float(sigma.median()):.3f}, against a spread of the means of {float(posterior.mean.std()):.2f}")
assert float(sigma.median()) < 0.2 * float(posterior.mean.std())   # with a tiny β, q(z|x) is nearly a point

# %% [markdown]
# With $\beta = 10^{-6}$ the KL term is negligible in the loss, so the encoder keeps $\sigma$ small: the latent
# is nearly deterministic, and the autoencoder spends its 196 numbers on reconstruction. With a large $\beta$
# (a VAE's $\beta = 1$) the KL would dominate, $\sigma$ would grow towards 1 and reconstructions would blur:
# good for sampling *from the autoencoder*, bad for a first stage whose decoder must reproduce detail.
#
# ### Exercise 1 · the reparameterised sample and its KL
#
# Write `my_reparam_kl(mean, logvar, eps)` for tensors [B, c, h, w]: return `(z, kl)` with
# $z = \mu + \sigma \odot \varepsilon$, $\sigma = \exp(\tfrac12 \log\sigma^2)$ (the encoder outputs the
# log-variance), and `kl` the closed form above, **one value per image** (shape [B]).

# %%
def my_reparam_kl(mean, logvar, eps):
    ### BEGIN SOLUTION
    std = torch.exp(0.5 * logvar)
    z = mean + std * eps
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    return z, kl
    ### END SOLUTION


nb09.check_reparam_kl(my_reparam_kl)

# %% [markdown]
# Your function on our autoencoder's posterior of the 200 test digits: samples $z \sim q(z \mid x)$ and their
# KL. The package's `DiagonalGaussian` (what `ae.encode` returns) draws the same samples with `.sample()` from
# the same generator, and `.kl()` gives the same KL:

# %%
eps_post = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))
z_sample, kl_mine = my_reparam_kl(posterior.mean, posterior.logvar, eps_post)
print(f"|z − μ| on average {float((z_sample - posterior.mean).abs().mean()):.3f} (σ is small); "
      f"KL of the first three test digits: {[round(v, 1) for v in kl_mine[:3].tolist()]} nats")
assert torch.allclose(z_sample, posterior.sample(torch.Generator().manual_seed(0)), atol=1e-6)
assert torch.allclose(kl_mine, posterior.kl(), rtol=1e-5)

# %% [markdown]
# ## 3 · The latent scale factor
#
# The noise schedule was designed for data of about unit variance: pixels in [−1, 1]. The forward process
#
# $$
# q(z_t \mid z_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\, z_0,\ (1-\bar\alpha_t) I\big)
# $$
#
# adds noise of a *fixed* size, so the share of $\operatorname{Var}(z_t)$ that is still signal is
# $s^2\bar\alpha_t / (s^2\bar\alpha_t + 1 - \bar\alpha_t)$ for data of standard deviation $s$. An
# autoencoder's latents have whatever scale its training gave them. LDM (§4.3.2, App. G) therefore multiplies
# them by a **scale factor**, 1 / std of the latents over the training data, before diffusion, and divides
# by it before decoding: $x = D(z_0 / \text{scale})$. Stable Diffusion's 0.18215 is this number for its VAE.
#
# ### Exercise 2 · measure the scale factor
#
# Write `my_scale_factor(latents)`: one number such that `my_scale_factor(latents) * latents` has standard
# deviation 1. The next cell measures our autoencoder's scale factor with it.

# %%
def my_scale_factor(latents):
    ### BEGIN SOLUTION
    return 1.0 / latents.std()
    ### END SOLUTION


nb09.check_scale_factor(my_scale_factor)

# %%
train_x = load_dataset("mnist5k").images[:1000]
with torch.no_grad():
    z_raw = ae.encode(train_x).sample(torch.Generator().manual_seed(0))     # unscaled latents z ~ q(z|x)
mine = float(my_scale_factor(z_raw))                                        # your function
package = measure_scale_factor(ae, train_x, generator=torch.Generator().manual_seed(0))   # the package's 1 / std
assert abs(mine / package - 1) < 1e-4, (mine, package)
print(f"raw latents: std {float(z_raw.std()):.3f}; scale factor from these 1000 digits {mine:.4f}, the autoencoder's "
      f"(measured on all 4000 training digits) {ae.scale_factor:.4f}; scaled std {float((ae.scale_factor * z_raw).std()):.3f}")
assert abs(mine / ae.scale_factor - 1) < 0.05
assert abs(float((ae.scale_factor * z_raw).std()) - 1) < 0.1

# %% [markdown]
# **What goes wrong without it.** With a KL weight this small, nothing pins down the scale of the latents: ours
# come out with the std printed above, Stable Diffusion's VAE with std ≈ 5.5 (= 1/0.18215). Data much wider
# than the noise keeps its signal through the whole forward process: $z_T$ is *not* pure noise, while sampling
# starts from $\mathcal N(0, I)$, an $z_T$ the model never saw in training. Data much narrower drowns early,
# and most timesteps are spent on what is already pure noise. The share of signal in $z_t$:

# %%
ax = plots.plot_signal_fraction(latent_diffusion, {"scaled latents": 1.0, "raw latents": 1 / ae.scale_factor,
                                                   "SD's raw VAE latents": 5.5, "too narrow": 0.2})
ax.axhline(0.01, color="k", lw=0.8, ls=":")
ax.set_title("share of Var(z_t) that is signal, s²ᾱ_t / (s²ᾱ_t + 1 − ᾱ_t)", fontsize=10)
plt.show()
ab_T = float(latent_diffusion.schedule.alphas_cumprod[-1])
left = {s: s * s * ab_T / (s * s * ab_T + 1 - ab_T) for s in (1.0, 5.5)}
print(f"signal share left at t = T−1: {left[1.0]:.1e} for std 1, {left[5.5]:.1e} for std 5.5")
assert left[5.5] > 25 * left[1.0]

# %% [markdown]
# **Predict, then run.** The latent model was trained on *scaled* latents. Hand it latents at the wrong scale,
# $m$ times the right one, and ask it for the noise: take 50 encoded test digits $z_0$, noise $m z_0$ to
# $z_t = \sqrt{\bar\alpha_t}\,m z_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ and measure the model's error
# $\lVert\hat\varepsilon - \varepsilon\rVert^2$ at several $t$, for $m = 3$ (latents too wide), $m = 0.3$ (too
# narrow) and $m = 1$. Before running: with latents 3× too wide, where will the model's noise error be
# largest? (a) at large $t$, near $T$: there $z_T$ still holds signal (the plot above), which the model never
# saw at that noise level; (b) at small $t$, where there is little noise: the extra signal is taken for noise;
# (c) about equally at every $t$. Commit to an answer first.

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "b"
### END SOLUTION
nb09.commit_scale_prediction(prediction)

# %%
z50, y50 = latent.encode_images(ae, x_test[:50]), y_test[:50]      # scale_factor · μ(x): the training scale
eps = torch.randn(z50.shape, generator=torch.Generator().manual_seed(3))
ts = [20, 50, 100, 200, 350, 500, 700, 999]
eps_err = {}
with torch.no_grad():
    for m in (0.3, 1.0, 3.0):
        eps_err[m] = [float((latent_model(latent_diffusion.q_sample(m * z50, torch.full((50,), t), noise=eps),
                                          torch.full((50,), t), y50) - eps).pow(2).mean()) for t in ts]
fig, ax = plt.subplots(figsize=(6, 3))
for m, errs in eps_err.items():
    ax.plot(ts, errs, "o-", label=f"m = {m:g}" + (" (the training scale)" if m == 1 else ""))
ax.set(xlabel="timestep t", ylabel="mean (ε̂ − ε)²", yscale="log", title="the latent model's noise error at scale m")
ax.legend(fontsize=8)
plt.show()
mean_err = {m: float(np.mean(e)) for m, e in eps_err.items()}
print("mean ε error over these t:", ", ".join(f"m = {m:g}: {e:.3f}" for m, e in mean_err.items()))
assert mean_err[1.0] < 0.5 * min(mean_err[0.3], mean_err[3.0])
nb09.reveal_scale_error(prediction, ts, eps_err[3.0], eps_err[1.0])

# %% [markdown]
# At the training scale the error is small everywhere. **Too wide** ($m = 3$): at small and medium $t$ the
# model reads the extra signal as noise and its $\hat\varepsilon$ is far off; only near $t = T$, where even
# 3× the signal is drowned, does it recover. **Too narrow** ($m = 0.3$) goes wrong at the same end, for the
# mirror reason: the model expects more signal than there is and takes part of the noise for it; again the
# error is largest at the low-noise end, where the details are decided. A sampler
# built on these predictions goes wrong the same way. What it does to an edit (SDEdit from $t_0 \approx T/2$,
# section 6) with an autoencoder whose scale factor is off by $m$:

# %%
x_ten, y_ten = x_test[:10], y_test[:10]
noise = torch.randn((10, *ae.latent_shape), generator=torch.Generator().manual_seed(3))
wrong = {}
for m in (0.3, 1.0, 3.0):
    ae_m = copy.deepcopy(ae)
    ae_m.set_scale_factor(m * ae.scale_factor)                 # encode to m·z, decode z / m: a wrong scale factor
    wrong[m] = latent.img2img(latent_model, latent_diffusion, ae_m, x_ten, 0.5, steps=STEPS, y=y_ten, noise=noise)
plots.show_class_grid(torch.cat([x_ten] + list(wrong.values())), n_rows=4, size_per_image=0.6,
                      row_labels=["input"] + [f"m = {m:g}" for m in wrong], title="SDEdit, strength 0.5, at scale m")
plt.show()
for m, x in wrong.items():
    print(f"m = {m:g}: mean |result − input| {float((x - x_ten).abs().mean()):.3f}, "
          f"classified as the input's digit {metrics.sample_accuracy(x, y_ten, classifier):.0%}")

# %% [markdown]
# With the right scale ($m = 1$) the edit redraws the digits in the model's style (strength 0.5 allows some
# changes of shape). Too wide ($m = 3$): the noise added at $t_0$ hides less of the input, so the result
# stays closer to it (the smallest distance), but the model subtracts part of the signal as "noise": strokes
# come out faded, grey and speckled. Too narrow ($m = 0.3$): the input is buried deeper than the model
# assumes, and it redraws more freely, with bolder strokes and changed shapes. The scale factor is one
# number; a wrong one breaks training and sampling alike.
#
# ## 4 · Diffusion in latent space: the very same code
#
# Nothing in `GaussianDiffusion`, the `UNet` or the samplers knows whether it sees pixels or latents; only
# the shapes differ. Two details change (`ddpm_lite.latent`): no clipping of $\hat z_0$ to [−1, 1] (latents are
# not bounded, they have unit *variance*), and the training set is encoded once, up front.

# %%
for name, net, dif in (("pixel", pixel_model, pixel_diffusion), ("latent", latent_model, latent_diffusion)):
    c = net.config
    print(f"{name:>6}: {dif}\n        UNet on {c['in_channels']}×{c['image_size']}×{c['image_size']}, base channels "
          f"{c['base_channels']}, mults {c['channel_mults']}, attention at {c['attention_resolutions']}")
assert type(pixel_diffusion) is type(latent_diffusion) and type(pixel_model) is type(latent_model)   # the same classes
assert pixel_diffusion.num_timesteps == latent_diffusion.num_timesteps == 1000
labels = torch.arange(10).repeat(N_COMPARE // 10)
gen = torch.Generator().manual_seed(0)
t0 = time.perf_counter()
z0 = latent.sample_latents(latent_model, latent_diffusion, (N_COMPARE, *ae.latent_shape), steps=STEPS, y=labels,
                           generator=gen)                          # samplers.sample_steps, threshold None
t_latent_z = time.perf_counter() - t0
x_latent = latent.decode_latents(ae, z0)                          # D(z / scale_factor), clamped to [-1, 1]
t_latent = time.perf_counter() - t0
print(f"{N_COMPARE} latents {tuple(z0.shape[1:])} (std {float(z0.std()):.2f}) in {t_latent_z:.1f} s, decoded to "
      f"{tuple(x_latent.shape[1:])} in {t_latent - t_latent_z:.2f} s")
by_class = x_latent[torch.argsort(labels, stable=True)].reshape(10, -1, 1, 28, 28)[:, :8]   # 8 per digit
plots.show_class_grid(by_class.reshape(-1, 1, 28, 28), n_rows=10, size_per_image=0.45,
                      title=f"latent model, DDIM-{STEPS}, no guidance")
plt.show()

# %% [markdown]
# ## 5 · Pixel vs latent, side by side
#
# Same data, same diffusion, same sampler; one model works on 784 pixels, the other on 196 latent numbers and
# pays for a decoder pass per image (and an encoder pass per training image, done once). Measured here, at
# small sizes (on a shared CPU the seconds are noisy; `benchmarks/latent.py` measures at batch 100 and
# DDIM-50):

# %%
def train_images_per_s(model, diffusion, x, y, steps=2):
    """Training throughput of a copy of `model`: ε-loss forward + backward + AdamW step, median of `steps`."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):                                    # the first step warms up, untimed
        t0 = time.perf_counter()
        loss = diffusion.training_losses(net, x, y=y)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return x.shape[0] / float(np.median(times[1:]))


yb = torch.arange(TRAIN_BATCH) % 10
zb = latent.encode_images(ae, train_x[:TRAIN_BATCH])               # pre-encoded, as the Trainer does
t0 = time.perf_counter()
x_pixel = samplers.sample(pixel_model, pixel_diffusion, (N_COMPARE, 1, 28, 28), steps=STEPS, y=labels,
                          generator=torch.Generator().manual_seed(0))
t_pixel = time.perf_counter() - t0
one = torch.zeros(1, dtype=torch.long)
rows = {
    "pixel": dict(params=n_params(pixel_model), gflops=gflops(pixel_model, torch.zeros(1, 1, 28, 28), one),
                  train=train_images_per_s(pixel_model, pixel_diffusion, train_x[:TRAIN_BATCH], yb),
                  sample=N_COMPARE / t_pixel, accuracy=metrics.sample_accuracy(x_pixel, labels, classifier)),
    "latent": dict(params=n_params(latent_model), gflops=gflops(latent_model, torch.zeros(1, *ae.latent_shape), one),
                   train=train_images_per_s(latent_model, latent_diffusion, zb, yb),
                   sample=N_COMPARE / t_latent, accuracy=metrics.sample_accuracy(x_latent, labels, classifier)),
}
with torch.no_grad(), FlopCounterMode(display=False) as counter:
    ae.decode(torch.zeros(1, *ae.latent_shape))
dec_gflops = counter.get_total_flops() / 1e9
for name, r in rows.items():
    r["sample_gflops"] = STEPS * r["gflops"] + (dec_gflops if name == "latent" else 0.0)
print(f"{'':>7} {'U-Net params':>12} {'GFLOPs/step':>11} {f'GFLOPs/sample (DDIM-{STEPS})':>25} {'train img/s':>11} "
      f"{'sample img/s':>12} {'accuracy':>8}")
for name, r in rows.items():
    print(f"{name:>7} {r['params'] / 1e6:11.2f}M {r['gflops']:11.3f} {r['sample_gflops']:25.2f} {r['train']:11.0f} "
          f"{r['sample']:12.1f} {r['accuracy']:8.1%}")
print(f"(latent: + autoencoder {n_params(ae) / 1e6:.2f}M parameters, decoder {dec_gflops:.3f} GFLOPs per image, "
      f"counted in its GFLOPs/sample and img/s; real test digits: {acc_real:.1%})")

# %%
fig, axes = plt.subplots(1, 4, figsize=(10, 2.6))
for ax, (key, title) in zip(axes, [("sample_gflops", f"GFLOPs per sample (DDIM-{STEPS})"), ("train", "training img/s"),
                                   ("sample", "sampling img/s"), ("accuracy", "class accuracy")]):
    ax.bar(list(rows), [rows[k][key] for k in rows], color=["#1f77b4", "#ff7f0e"])
    ax.set_title(title, fontsize=10)
axes[3].axhline(acc_real, color="k", ls=":", lw=1)
fig.tight_layout()
plt.show()
speedup = rows["latent"]["sample"] / rows["pixel"]["sample"]
print(f"latent sampling is {speedup:.1f}× faster; training {rows['latent']['train'] / rows['pixel']['train']:.1f}× faster")
assert rows["latent"]["gflops"] < rows["pixel"]["gflops"] / 2
assert speedup > 1.3, speedup
assert rows["latent"]["accuracy"] >= 0.9, rows["latent"]["accuracy"]

# %% [markdown]
# The latent U-Net has twice the pixel one's parameters (48 and 96 channels at 7×7 and 4×4), but each step
# processes 7×7 positions instead of 28×28: about 2.3× fewer FLOPs per step, so faster training and sampling.
# The gap is this small because the pixel model was designed to be cheap at full resolution: 16 channels at
# 28×28, 64 only at 7×7 (its predecessor, 32 channels at 28×28, cost 2.6× the FLOPs for the same accuracy). A
# pixel U-Net at 512×512 cannot be that thin at full resolution and still draw detail. The decoder pass,
# once per image, costs about as much as a few latent U-Net steps and barely shows in a 20-step run. Quality
# is bounded by the autoencoder: the latent model can only produce what the decoder can draw (the
# reconstructions of section 2). Both models' samples are classified as their digit 9 times in 10 or more
# (real digits: 99 %); with 100 samples, one sample is one point, so a gap of a few points is within noise
# (`benchmarks/latent.py` measures 500). At 28×28 the savings are a factor of about 2; at 512×512, with 64×
# fewer positions, they are what makes Stable Diffusion trainable at all.
#
# ## 6 · Image-to-image: SDEdit strength
#
# SDEdit (Meng et al. 2022) edits an image with a model that was never trained to edit: noise the input to
# an intermediate $t_0$ with the forward process, $z_{t_0} \sim q(z_{t_0}\mid z_\text{input})$, and run the ordinary
# sampler from there. The **strength** $s \in [0, 1]$ says how far: with a sampler of $S$ steps
# $\tau_1 > \dots > \tau_S$, SDEdit runs the last $\mathrm{round}(s\,S)$ of them. $s = 0$ keeps the input,
# $s = 1$ starts from pure noise and ignores it. In latent space the input is encoded first and the result decoded.
#
# ### Exercise 3 · SDEdit's timesteps
#
# Write `my_sdedit_timesteps(seq, strength)`: given the sampler's timestep list `seq` (noisiest first), return
# the timesteps SDEdit runs, in the same order (an empty list at strength 0).

# %%
def my_sdedit_timesteps(seq, strength):
    ### BEGIN SOLUTION
    n = round(strength * len(seq))
    return seq[len(seq) - n:]
    ### END SOLUTION


nb09.check_sdedit_timesteps(my_sdedit_timesteps)

# %% [markdown]
# **An edit by hand, with your timesteps.** Three test digits edited towards other digits at strength 0.6:
# encode them, noise the latents to the first of your timesteps, $z_{t_0} = \sqrt{\bar\alpha_{t_0}}\,z + \sqrt{1 - \bar\alpha_{t_0}}\,\varepsilon$,
# run one DDIM update (`samplers.ddim_update`) from each of your timesteps to the next (the last to the data,
# $-1$), decode. It must give exactly what the package's `latent.img2img` gives from the same noise:

# %%
seq = editing.sampler_timesteps(latent_diffusion, "ddim", STEPS)
run = my_sdedit_timesteps(seq, 0.6)
print(f"DDIM-{STEPS} visits {seq[:4]} … {seq[-2:]}; at strength 0.6 your SDEdit runs {run[:3]} … {run[-2:]} "
      f"({len(run)} steps)")
x_edit, y_edit = x_test[[0, 1, 2]], torch.tensor([8, 0, 5])
noise_edit = torch.randn((3, *ae.latent_shape), generator=torch.Generator().manual_seed(4))
denoiser = samplers.make_denoiser(latent_model, latent_diffusion, y=y_edit, threshold=None)   # latents: no clipping
with torch.no_grad():
    z = latent_diffusion.q_sample(latent.encode_images(ae, x_edit), torch.full((3,), run[0]), noise=noise_edit)
    for t, t_prev in zip(run, run[1:] + [-1]):
        z, _, _ = samplers.ddim_update(denoiser, latent_diffusion, z, t, t_prev)
    by_hand = latent.decode_latents(ae, z)
package = latent.img2img(latent_model, latent_diffusion, ae, x_edit, 0.6, steps=STEPS, y=y_edit, noise=noise_edit)
plots.show_class_grid(torch.cat([x_edit, by_hand]), n_rows=2, size_per_image=0.7,
                      row_labels=["input", f"→ {y_edit.tolist()}"])
plt.show()
print(f"largest difference from latent.img2img: {float((by_hand - package).abs().max()):.1e}")
assert torch.allclose(by_hand, package, atol=1e-5)

# %% [markdown]
# **The strength explorer** (`latent.img2img` at six strengths). Six test digits, each edited towards *another* digit (the class label of the
# edit, shown in the info line), at six strengths, all from the same noise. Slide from "same image" to
# "new image": where does the input stop mattering? The right panel is the mean distance from the input.

# %%
pick = [int((y_test == d).nonzero()[0]) for d in (1, 3, 4, 5, 7, 9)]
targets = torch.tensor([7, 8, 9, 6, 1, 4])
explorer = Img2ImgExplorer(latent_model, latent_diffusion, x_test[pick], autoencoder=ae, labels=targets,
                           strengths=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), steps=STEPS, classifier=classifier)
explorer

# %%
# the widget from code: how many edits read as the requested digit at each strength
for s in explorer.strengths:
    print(f"strength {s:.1f}: mean |result − input| {explorer.distance(s):.3f}, classified as the target: "
          f"{explorer.accuracy(s):.0%}")
explorer.slider.value = 0.6
assert explorer.edit_calls == 6 and explorer.accuracy(1.0) > explorer.accuracy(0.0)
assert explorer.distance(1.0) > explorer.distance(0.2)

# %% [markdown]
# At small strengths only details change and the digit stays what it was (the strength-0 result is the
# autoencoder's reconstruction). Around the middle the edit keeps the input's position, thickness and slant
# but takes the requested class; at strength 1 the input is gone. That trade-off, faithfulness against
# editability, is the one knob of every img2img pipeline.
#
# ## 7 · Inpainting half a digit
#
# RePaint (Lugmayr et al. 2022): at every step, the region to keep is replaced by the input noised to the same
# level, so the model only fills in the rest. In latent space the pixel mask becomes a 7×7 one (a latent
# position is kept only if every pixel it covers is kept), and after decoding the kept pixels are pasted back.
# Keep the left half and let the model draw the right half; then keep the top half:

# %%
x_in, y_in = x_test[10:20], y_test[10:20]
left = torch.zeros(1, 1, 28, 28)
left[..., :14] = 1
top = torch.zeros(1, 1, 28, 28)
top[..., :14, :] = 1
fills = {}
for name, mask in (("left kept", left), ("top kept", top)):
    fills[name] = latent.inpaint(latent_model, latent_diffusion, ae, x_in, mask, steps=STEPS, y=y_in,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(fills[name] * mask, x_in * mask)          # the kept pixels are exactly the input's
shown = [x_in * left, fills["left kept"], x_in * top, fills["top kept"], x_in]       # the hole shown grey (0)
plots.show_class_grid(torch.cat(shown), n_rows=5, size_per_image=0.6,
                      row_labels=["kept: left", "filled", "kept: top", "filled", "original"])
plt.show()
print("latent mask of 'left kept' (1 = kept):\n", latent.latent_mask(ae, left)[0, 0].int().numpy())
for name, x in fills.items():
    print(f"{name}: classified as the original digit {metrics.sample_accuracy(x, y_in, classifier):.0%}")
assert min(metrics.sample_accuracy(x, y_in, classifier) for x in fills.values()) >= 0.6

# %% [markdown]
# The filled halves continue the strokes of the kept ones and complete the requested digit. The seam sits where the
# decoder's fill meets the pasted pixels: latent position 3 covers pixels 12–15, which straddle the cut, so the model
# redraws it.
#
# ## 8 · How this maps to Stable Diffusion
#
# Stable Diffusion v1 is this notebook's recipe at scale, with text instead of class labels:
#
# | part | this notebook | Stable Diffusion v1 |
# |---|---|---|
# | autoencoder (first stage) | `AutoencoderKL`, $f = 4$, $c = 4$: 1×28×28 → 4×7×7 (4× fewer numbers), ≈ 0.46M parameters | VAE, $f = 8$, $c = 4$: 3×512×512 → 4×64×64 (48× fewer), ≈ 84M parameters |
# | latent scale factor | measured: 1 / std of the latents (printed in section 3) | 0.18215 |
# | denoiser | `UNet` (preset `latent`), ≈ 1.5M parameters | U-Net, ≈ 860M parameters, cross-attention to the text |
# | scheduler / sampler | `GaussianDiffusion` (linear β, $T = 1000$) + DDIM, 20 steps | $T = 1000$ (scaled-linear β) + PNDM / DDIM, ≈ 50 steps |
# | conditioning | class label → embedding (10 classes + a null class, classifier-free guidance) | prompt → CLIP ViT-L/14 text encoder (≈ 123M parameters), 77 tokens × 768 |
#
# The parts are trained separately: the VAE first, then the U-Net on its frozen latents, with a frozen,
# pretrained text encoder. Every piece of this notebook carries over: the latent scale factor, sampling
# without clipping, decoding once at the end, img2img by strength and inpainting with a latent mask.

# %%
sd_pixels, sd_latent = 3 * 512 * 512, 4 * 64 * 64
ours = int(np.prod(ae.image_shape)) / int(np.prod(ae.latent_shape))
print(f"compression: ours {ours:.0f}×, Stable Diffusion {sd_pixels / sd_latent:.0f}× fewer numbers per image")
assert ours == 4 and sd_pixels // sd_latent == 48

# %% [markdown]
# ## Summary
#
# * A U-Net step costs in proportion to the pixels it sees. Latent diffusion first compresses images with an
#   autoencoder (*perceptual* compression: drop detail the eye barely sees) and runs diffusion on the latent
#   (*semantic* compression), here 1×28×28 → 4×7×7.
# * The first stage is a KL-regularised autoencoder trained with L1 reconstruction + $\beta$ KL, $\beta = 10^{-6}$:
#   the latent stays nearly deterministic and reconstructs held-out digits that classify as well as the
#   originals. Its samples use the reparameterisation $z = \mu + \sigma \odot \varepsilon$.
# * The **scale factor** (1 / std of the latents) gives the diffusion unit-variance data, as its noise
#   schedule assumes; at the wrong scale, $z_T$ keeps signal or the data drowns early, and the model
#   denoises wrongly.
# * Latent diffusion is the same `GaussianDiffusion`, `UNet` and samplers, without clipping, plus one decoder
#   pass: fewer FLOPs per step, faster training and sampling, with quality bounded by the autoencoder.
# * SDEdit's strength picks how many of the sampler's last steps run; inpainting keeps a latent mask and
#   pastes the known pixels back.
#
# ## What comes next
#
# The class label gives way to **text**. Notebook 10 trains the text encoder from scratch, a CLIP on captioned
# digits; the notebook after it feeds that encoder's per-token states to the U-Net through cross-attention, with
# classifier-free guidance on prompts, the last piece of Stable Diffusion's diagram in section 8.
#
# **References.** R. Rombach, A. Blattmann, D. Lorenz, P. Esser, B. Ommer, *High-Resolution Image Synthesis
# with Latent Diffusion Models*, CVPR 2022 (Fig. 2, §3, §4.3.2, App. G). D. P. Kingma, M. Welling,
# *Auto-Encoding Variational Bayes*, ICLR 2014 (§2.4, App. B). C. Meng et al., *SDEdit: Guided Image Synthesis
# and Editing with Stochastic Differential Equations*, ICLR 2022. A. Lugmayr et al., *RePaint: Inpainting using
# Denoising Diffusion Probabilistic Models*, CVPR 2022. J. Song, C. Meng, S. Ermon, *Denoising Diffusion
# Implicit Models*, ICLR 2021. A. Radford et al., *Learning Transferable Visual Models From Natural Language
# Supervision*, ICML 2021 (CLIP).

# %%
elapsed = time.perf_counter() - NOTEBOOK_START
print(f"notebook run time: {elapsed:.0f} s")
