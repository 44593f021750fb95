# %% [markdown]
# # 03 · The denoising network: a U-Net, piece by piece
#
# Notebook 02 ended with a network $\varepsilon_\theta(x_t, t)$ that must tell which noise was mixed into an
# image, at every noise level. Every DDPM codebase uses the same kind of network for it: a **U-Net**
# (Ronneberger et al. 2015) in the style of Ho et al. (2020, Appendix B), which itself follows PixelCNN++ and
# Wide ResNets. This notebook opens it up, using `ddpm_lite.unet`'s own classes, so that the training loop of
# notebook 04 trains a network you have taken apart and put back together.
#
# **What you will learn**
#
# * how the timestep enters: the **sinusoidal time embedding** (you write it, and the trained model then runs
#   with yours) and the MLP after it;
# * the **ResBlock**: GroupNorm, SiLU, convolutions, the time added in the middle, a residual path (you write
#   its forward pass; the trained model then runs every block with yours);
# * the **down path, the middle and the up path** with every shape printed, and the **skip connections** that
#   give the U its name;
# * **self-attention** at the coarsest level, and why only there;
# * the **zero-initialised output** (predict first what an untrained network outputs);
# * **parameters and FLOPs per part**, and the **receptive field** of one output pixel;
# * the whole forward pass written out in a dozen lines, matching the preset to the last bit.
#
# *Run time: about 20 seconds on a 2-core laptop CPU.*
#
# ## The network in one picture
#
# ```
# x_t ─conv_in─► [ResBlock (+Attention)] ─► Downsample ─► … ─►  middle: ResBlock ─ Attention ─ ResBlock
#                   │ each output saved                                      │
#                   ▼ (skip connections)                                     ▼
# ε̂  ◄─conv_out─ [ResBlock on concat(h, skip) (+Attention)] ◄─ Upsample ◄─ …
#                      ▲
# t ─ sinusoidal embedding ─ MLP ─► emb ─► added inside every ResBlock (with the class embedding, notebook 05)
# ```
#
# The input and output have the same shape: the network predicts one noise value per pixel.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ddpm_lite import plots, unet
from ddpm_lite.checkpoint import from_pretrained
from ddpm_lite.exercises import nb03
from ddpm_lite.samplers import sample
from ddpm_lite.unet import PRESETS, Attention, Downsample, ResBlock, Upsample, UNet, timestep_embedding, unet_preset

plots.setup()
torch.set_num_threads(1)
torch.set_grad_enabled(False)
NOTEBOOK_START = time.perf_counter()

REPO = Path.cwd() if (Path.cwd() / "ddpm_lite").exists() else Path.cwd().parent
digits_model, digits_diffusion = from_pretrained(REPO / "assets" / "checkpoints" / "digits")    # 8×8, trained
mnist_model, mnist_diffusion = from_pretrained(REPO / "assets" / "checkpoints" / "mnist5k")     # 28×28, trained
print("digits preset:", PRESETS["digits"])
print("mnist5k preset:", PRESETS["mnist5k"])

# %% [markdown]
# ## 1 · The time embedding
#
# The network must know *how* noisy its input is: at $t = 10$ it should remove a faint haze, at $t = 900$
# guess a whole digit. A single number $t$ is a poor input for a network, so it is first spread over many
# features of different frequencies, the **sinusoidal embedding** of the Transformer (Vaswani et al. 2017,
# §3.5), with $d$ features and $h = d/2$:
#
# $$
# \omega_i = \exp\!\Big(-\ln(10000)\,\frac{i}{h}\Big),\quad i = 0, \dots, h-1, \qquad
# \operatorname{emb}(t) = \big[\sin(t\,\omega_0), \dots, \sin(t\,\omega_{h-1}),\; \cos(t\,\omega_0), \dots, \cos(t\,\omega_{h-1})\big].
# $$
#
# The fast features ($\omega_0 = 1$) separate neighbouring timesteps; the slow ones (down to $\omega \approx
# 10^{-4}$) change smoothly across the whole range. A two-layer MLP (`time_mlp`) then turns this into the
# vector `emb` that every ResBlock receives.

# %%
t_all = torch.arange(1000)
emb_all = timestep_embedding(t_all, 32)
cos_sim = F.normalize(emb_all, dim=1) @ F.normalize(emb_all, dim=1).T
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
im = axes[0].imshow(emb_all.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
axes[0].set_xlabel("timestep t")
axes[0].set_ylabel("feature (sin: 0–15, cos: 16–31)")
axes[0].set_title("timestep_embedding(t, 32)", fontsize=10)
fig.colorbar(im, ax=axes[0])
im = axes[1].imshow(cos_sim, cmap="viridis", origin="lower")
axes[1].set_xlabel("timestep t")
axes[1].set_ylabel("timestep t′")
axes[1].set_title("cosine similarity of the embeddings of t and t′", fontsize=10)
fig.colorbar(im, ax=axes[1])
plt.tight_layout()
plt.show()
near, far = float(cos_sim[500, 505]), float(cos_sim[500, 900])
print(f"similarity of t = 500 with t = 505: {near:.3f}, with t = 900: {far:.3f}")
assert near > far

# %% [markdown]
# Nearby timesteps get similar embeddings, distant ones different: the diagonal band on the right.
#
# ### Exercise 1 · the time embedding
#
# Write `my_timestep_embedding(t, dim)`: `t` is a [B] tensor of integer timesteps, `dim` even; return the
# [B, dim] embedding above (sines first, then cosines). The check compares it with the package's; then the
# trained digits model runs with *your* function in place of its own.

# %%
def my_timestep_embedding(t, dim):
    ### BEGIN SOLUTION
    half = dim // 2
    freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    ### END SOLUTION


nb03.check_time_embedding(my_timestep_embedding)

# %%
x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
labels = torch.arange(10)
reference = sample(digits_model, digits_diffusion, x_T.shape, steps=20, y=labels, x_T=x_T)
own, unet.timestep_embedding = unet.timestep_embedding, my_timestep_embedding    # swap in yours...
try:
    yours = sample(digits_model, digits_diffusion, x_T.shape, steps=20, y=labels, x_T=x_T)
finally:
    unet.timestep_embedding = own                                                 # ...and back
print(f"largest difference between the samples with the package's embedding and yours: "
      f"{float((yours - reference).abs().max()):.1e}")
plots.show_images(yours, nrow=10, title="the trained digits model, sampling with your time embedding")
plt.show()
assert torch.allclose(yours, reference, atol=1e-4)

# %% [markdown]
# ## 2 · The ResBlock
#
# Each ResBlock (Ho et al.'s `resnet_block`) maps a feature map $h$ with $C_\text{in}$ channels to one with
# $C_\text{out}$, and is where the time enters:
#
# $$
# \begin{aligned}
# a &= \operatorname{conv}_1\big(\operatorname{SiLU}(\operatorname{GN}_1(x))\big) \\
# b &= \operatorname{conv}_2\Big(\operatorname{dropout}\big(\operatorname{SiLU}\big(\operatorname{GN}_2(a + W_e\,\operatorname{SiLU}(\text{emb}))\big)\big)\Big) \\
# \text{out} &= \operatorname{skip}(x) + b
# \end{aligned}
# $$
#
# GN is GroupNorm (batch statistics play no role, which suits small batches), SiLU is $x\,\sigma(x)$, the
# convolutions are 3×3, $W_e$ (`emb_proj`) projects the embedding to one number per channel, added at every
# position, and `skip` is the identity, or a 1×1 convolution when the channel count changes.

# %%
block = digits_model.down[0][0]
print(block)
print("its input:", digits_model.base_channels, "channels; its output:", block.conv2.out_channels)

# %% [markdown]
# ### Exercise 2 · a ResBlock's forward pass
#
# Write `my_resblock_forward(block, x, emb)` using the block's own layers (`block.norm1`, `block.conv1`,
# `block.emb_proj`, `block.norm2`, `block.dropout`, `block.conv2`, `block.skip`) and `F.silu`. `x` is
# [B, C_in, H, W], `emb` is [B, emb_dim]; the projected embedding has shape [B, C_out] and must be broadcast
# over H and W. The trained model then runs every one of its ResBlocks with your function.

# %%
def my_resblock_forward(block, x, emb):
    ### BEGIN SOLUTION
    h = block.conv1(F.silu(block.norm1(x)))
    h = h + block.emb_proj(F.silu(emb))[:, :, None, None]
    h = block.conv2(block.dropout(F.silu(block.norm2(h))))
    return block.skip(x) + h
    ### END SOLUTION


nb03.check_resblock_forward(my_resblock_forward)

# %%
original_forward = ResBlock.forward
ResBlock.forward = my_resblock_forward                     # every ResBlock of every model now runs your code
try:
    yours = sample(digits_model, digits_diffusion, x_T.shape, steps=20, y=labels, x_T=x_T)
finally:
    ResBlock.forward = original_forward
print(f"largest difference from the package's ResBlocks: {float((yours - reference).abs().max()):.1e}")
assert torch.allclose(yours, reference, atol=1e-4)

# %% [markdown]
# ## 3 · Down, middle, up: every shape
#
# The 28×28 `mnist5k` preset has three levels (28, 14, 7) with 16, 32 and 64 channels. On the way down,
# every block's output is pushed on a stack; on the way up, every block first concatenates the top of the stack
# to its input (the **skip connection**), so fine detail from the high-resolution levels reaches the output
# directly, while the coarse levels decide what the digit is. Forward hooks print each module's output shape:

# %%
shapes = []
hooks = []
for name, module in mnist_model.named_modules():
    if isinstance(module, (ResBlock, Attention, Downsample, Upsample)) or name in ("conv_in", "conv_out"):
        hooks.append(module.register_forward_hook(
            lambda m, inputs, out, name=name: shapes.append((name, type(m).__name__, tuple(inputs[0].shape),
                                                             tuple(out.shape)))))
mnist_model(torch.randn(1, 1, 28, 28), torch.tensor([500]), torch.tensor([3]))
for h in hooks:
    h.remove()
for name, kind, shape_in, shape_out in shapes:
    print(f"{name:14s} {kind:11s} {str(shape_in):18s} -> {shape_out}")

# %% [markdown]
# Read the `up` lines: their inputs have more channels than the previous output (64 + 64 = 128, then 64 + 32 =
# 96, …): that is the skip connection, concatenated along the channel axis. There is one more up block per
# level than down blocks, because the stack also holds the outputs of `conv_in` and of each `Downsample`.
#
# ## 4 · Self-attention at the coarsest level
#
# A 3×3 convolution mixes only neighbouring positions. **Self-attention** (`Attention`) lets every position
# read every other one, in one step: each of the $HW$ positions forms a query, key and value (1×1 convolutions),
# and attends to all positions, softmax$(QK^\top/\sqrt d)V$, with a residual connection around it. Its cost
# grows with $(HW)^2$: at 7×7 that is 2,401 pairs, at 28×28 it would be 614,656. So attention sits only
# where the map is small (`attention_resolutions=(7,)`), as the DDPM CIFAR-10 model put it at 16×16 of 32×32.

# %%
attn = mnist_model.down[-1][1] if len(mnist_model.down[-1]) > 1 else mnist_model.mid[1]
for size in (7, 14, 28):
    print(f"attention over a {size}×{size} map: {(size * size) ** 2:>9,} query-key pairs per head")
print(attn)

# %% [markdown]
# ## 5 · The zero-initialised output
#
# **Predict, then run.** Build a fresh, untrained `digits` U-Net and give it a random $x_t$. What will it
# output? (a) random values of about unit size, like noise; (b) exactly zero, for every input; (c) a copy of
# $x_t$. Commit to an answer first.

# %%
prediction = None  # "a", "b" or "c"
### BEGIN SOLUTION
prediction = "b"
### END SOLUTION
nb03.commit_init_prediction(prediction)

# %%
torch.manual_seed(0)
fresh = unet_preset("digits")
x_t = torch.randn(4, 1, 8, 8)
out = fresh(x_t, torch.tensor([10, 200, 500, 999]), torch.tensor([0, 1, 2, 3]))
nb03.reveal_init(prediction, out, x_t)
block0 = fresh.down[0][0]
h = torch.randn(2, fresh.base_channels, 8, 8)
print("every untrained ResBlock is the identity on its skip path:",
      torch.equal(block0(h, torch.randn(2, 4 * fresh.base_channels)), block0.skip(h)))

# %% [markdown]
# ## 6 · Parameters and FLOPs per part
#
# Where do the parameters and the computation go? `FlopCounterMode` counts the multiply-adds of one forward pass
# (as 2 FLOPs each) per module.

# %%
from torch.utils.flop_counter import FlopCounterMode

PARTS = ("time_mlp", "class_emb", "conv_in", "down", "mid", "up", "norm_out", "conv_out")


def parts_table(model, shape):
    params = {p: sum(q.numel() for q in getattr(model, p).parameters()) if getattr(model, p, None) is not None else 0
              for p in PARTS}
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *shape), torch.tensor([500]), torch.tensor([3]))
    by_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}

    def part_flops(part):  # a ModuleList is never called itself: add up its outermost called modules
        names = [k for k in by_module if k == f"UNet.{part}" or k.startswith(f"UNet.{part}.")]
        outer = [k for k in names if not any(k != o and k.startswith(o + ".") for o in names)]
        return sum(by_module[k] for k in outer)

    return params, {p: part_flops(p) for p in PARTS}, counter.get_total_flops()


fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for ax, (name, model, shape) in zip(axes, (("digits (8×8)", digits_model, (1, 8, 8)),
                                           ("mnist5k (28×28)", mnist_model, (1, 28, 28)))):
    params, flops, total = parts_table(model, shape)
    n = sum(params.values())
    print(f"{name}: {n / 1e6:.2f}M parameters, {total / 1e6:.1f} MFLOPs per image")
    for p in PARTS:
        print(f"   {p:9s} {params[p] / 1e3:8.1f}k params ({params[p] / n:5.1%})   {flops[p] / 1e6:7.2f} MFLOPs "
              f"({flops[p] / total:5.1%})")
    xs = np.arange(len(PARTS))
    ax.bar(xs - 0.2, [params[p] / n for p in PARTS], 0.4, label="parameters")
    ax.bar(xs + 0.2, [flops[p] / total for p in PARTS], 0.4, label="FLOPs")
    ax.set_xticks(xs, PARTS, rotation=30, fontsize=8)
    ax.set_title(name, fontsize=10)
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
params, flops, total = parts_table(mnist_model, (1, 28, 28))
assert sum(params.values()) == sum(p.numel() for p in mnist_model.parameters())
assert abs(sum(flops.values()) - total) < 1e-6 * total   # every FLOP is in exactly one part

# %% [markdown]
# The up path holds most of the parameters and most of the computation: its blocks read the concatenated,
# wider inputs, there is one more block per level, and its last blocks run at full resolution, where every 3×3
# convolution is applied at all 784 positions. The time MLP and the class embedding cost almost nothing: the
# conditioning is cheap, the image processing is not.
#
# ## 7 · The receptive field
#
# Which input pixels can change one output pixel? Backpropagate from the centre pixel of the trained 28×28
# model's output to its input: the gradient is non-zero exactly on the pixels it depends on.

# %%
with torch.enable_grad():
    x_in = torch.randn(1, 1, 28, 28, requires_grad=True)
    mnist_model(x_in, torch.tensor([500]), torch.tensor([3]))[0, 0, 14, 14].backward()
grad = x_in.grad[0, 0].abs()
reach = int((grad > 1e-8 * grad.max()).sum())
fig, ax = plt.subplots(figsize=(3.8, 3.5))
ax.imshow(grad.log10().clamp(min=-8), cmap="magma")
ax.plot(14, 14, "c+", ms=12)
ax.set_title("|∂ output(14, 14) / ∂ input| (log10)", fontsize=10)
ax.axis("off")
plt.show()
print(f"input pixels that reach the centre output pixel: {reach} of 784")
assert reach == 784

# %% [markdown]
# Every input pixel reaches the centre: two downsamplings give the 7×7 level a wide view, and the attention
# there connects every position with every other. A stack of 3×3 convolutions alone at full resolution would
# need 14 layers for that.
#
# ## 8 · The whole forward pass, written out
#
# With the pieces above, here is `UNet.forward` for a class-conditional model in a dozen lines, run on the
# trained 28×28 model and compared with its own forward:

# %%
def forward_by_hand(model, x, t, y):
    emb = model.time_mlp(timestep_embedding(t, model.base_channels)) + model.class_emb(y)
    h = model.conv_in(x)
    skips = [h]
    for layer in model.down:                       # ResBlock (+ Attention), or a Downsample
        h = layer(h) if isinstance(layer, Downsample) else layer[0](h, emb)
        if not isinstance(layer, Downsample) and len(layer) > 1:
            h = layer[1](h)
        skips.append(h)
    h = model.mid[2](model.mid[1](model.mid[0](h, emb)), emb)
    for layer in model.up:                         # ResBlock on concat(h, skip) (+ Attention), or an Upsample
        if isinstance(layer, Upsample):
            h = layer(h, size=skips[-1].shape[-2:])
            continue
        h = layer[0](torch.cat([h, skips.pop()], dim=1), emb)
        if len(layer) > 1:
            h = layer[1](h)
    return model.conv_out(F.silu(model.norm_out(h)))


x = torch.randn(3, 1, 28, 28)
t, y = torch.tensor([5, 400, 990]), torch.tensor([1, 7, 9])
difference = float((forward_by_hand(mnist_model, x, t, y) - mnist_model(x, t, y)).abs().max())
print(f"by hand vs UNet.forward: largest difference {difference:.1e}")
assert difference < 1e-5
print(f"the preset it ends at: unet_preset('mnist5k') has "
      f"{sum(p.numel() for p in unet_preset('mnist5k').parameters()):,} parameters, the trained model "
      f"{sum(p.numel() for p in mnist_model.parameters()):,}")

# %% [markdown]
# ## Summary
#
# * The U-Net maps $x_t$ to a prediction of the same shape. The timestep enters through a **sinusoidal
#   embedding** and an MLP, added (per channel) inside every **ResBlock**: GroupNorm, SiLU, 3×3 convolutions,
#   a residual path.
# * A **down path** halves the resolution level by level, a **middle** works at the coarsest level, an **up
#   path** climbs back, each block reading the matching down-path output through a **skip connection**.
# * **Self-attention** connects all positions at once, affordable only on small maps; with it, every input
#   pixel reaches every output pixel.
# * The output convolution and the last layer of every residual branch start at **zero**: the untrained model
#   predicts $\hat\varepsilon = 0$ and every block starts as the identity.
# * The parameters sit mostly in the up path, the FLOPs at full resolution.
#
# ## What comes next
#
# Notebook 04 trains this network: the training loop by hand, then the `Trainer`, EMA and checkpoints.
#
# **References.** O. Ronneberger et al., *U-Net*, MICCAI 2015. J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion
# Probabilistic Models*, NeurIPS 2020 (Appendix B). A. Vaswani et al., *Attention Is All You Need*, NeurIPS 2017
# (§3.5). A. Nichol, P. Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, ICML 2021. Y. Wu, K. He,
# *Group Normalization*, ECCV 2018. S. Elfwing et al., *Sigmoid-Weighted Linear Units*, 2018 (SiLU).

# %%
print(f"notebook run time: {time.perf_counter() - NOTEBOOK_START:.0f} s")
