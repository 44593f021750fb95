"""The U-Net noise-prediction network of DDPM, with class conditioning for classifier-free guidance.

Architecture (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", Appendix B; itself a
PixelCNN++ / Wide-ResNet style U-Net, Ronneberger et al. 2015):

    x ──conv_in──► [ResBlock × num_res_blocks (+ Attention) ─► Downsample] per level
                    │ every output is kept as a skip connection
                    ▼
                  middle: ResBlock ─► Attention ─► ResBlock
                    │
                    ▼
    out ◄─conv_out─ [ResBlock × (num_res_blocks + 1) on concat(h, skip) (+ Attention) ─► Upsample] per level

* The timestep t goes through a sinusoidal embedding (Vaswani et al. 2017, "Attention Is All You Need",
  §3.5) and a 2-layer MLP; the result is added to the feature map inside every ResBlock.
* Class conditioning adds a learned class embedding to the time embedding (as in Dhariwal & Nichol 2021,
  "Diffusion Models Beat GANs", and the course's "class bias" idea). Index ``num_classes`` is a learned
  *null class*, used for label dropout and classifier-free guidance (Ho & Salimans 2022); ``y=None`` means
  every sample gets the null class.
* Attention is placed at every level whose feature map has ``min(H, W)`` in ``attention_resolutions``:
  for a 32×32 image with ``channel_mults=(1, 2, 2, 2)`` the levels are 32, 16, 8, 4, so
  ``attention_resolutions=(16,)`` puts attention at the 16×16 level (the DDPM CIFAR-10 setting).
* Sizes that do not halve evenly are fine: a stride-2 conv maps H to ceil(H/2) (28 → 14 → 7 → 4), and each
  upsample interpolates to the exact size of the skip connection it is about to be concatenated with.
  Non-square images (e.g. 8×12) work the same way.
* The output conv is initialised to zero (and so are the last conv of every ResBlock and the attention
  output projection, as in Nichol & Dhariwal 2021's ``zero_module``), so the untrained network predicts 0
  and every residual block starts as the identity.

With ``unet_preset("cifar10")`` (no classes) the network has the paper's ≈35.7M parameters.

Text and image conditioning (notebook 11), each off by default:

* ``context_dim``: every attention location (and the middle) gets LDM's `SpatialTransformer` instead of plain
  self-attention: self-attention, **cross-attention** to a context sequence ``context`` [B, L, context_dim]
  (a prompt's per-token text states, padding masked by ``context_mask`` [B, L]) and an MLP (Rombach et al.
  2022, §3.3). Class conditioning can be used alongside.
* ``low_res_channels``: a super-resolution model (Saharia et al. 2022, "Imagen", §2.5; Ho et al. 2022,
  "Cascaded Diffusion Models") gets the low-resolution image, upsampled to the model's size, concatenated to
  x_t as extra input channels (``low_res`` [B, low_res_channels, H, W]).
* ``aug_conditioning``: the noise level of the augmentation applied to that low-resolution image
  (``aug_level`` [B], a timestep of the same schedule) is embedded like t and added to the time embedding,
  so the model knows how much to trust it (noise-conditioning augmentation, Ho et al. 2022, §3.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import check_t_and_y
from .transformer import SpatialTransformer


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t`` [B] -> [B, dim].

    Frequencies are geometric from 1 down to 1/max_period, as in Vaswani et al. 2017 §3.5 and the
    DDPM reference code (``get_timestep_embedding``): the first half of the output is sin, the second cos.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:  # pad odd dims with a zero column
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Set all parameters of ``module`` to zero and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3, add the projected embedding, GroupNorm → SiLU → dropout → conv3×3, + skip.

    With ``scale_shift=True`` the embedding instead modulates the second norm, ``GroupNorm(h)·(1 + s) + b``
    ("adaptive group normalization", Nichol & Dhariwal 2021 §3 / Dhariwal & Nichol 2021 §3, their
    ``use_scale_shift_norm``): the time and class can then scale features, not only shift them.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int,
                 scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(num_groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        # 1×1 conv ("network-in-network") to match channels on the skip path, only when needed
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H×W positions of a feature map, with a residual connection."""

    def __init__(self, ch: int, num_heads: int, num_groups: int):
        super().__init__()
        if ch % num_heads != 0:
            raise ValueError(f"attention channels ({ch}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W).unbind(1)
        # [B, heads, head_dim, HW] -> [B, heads, HW, head_dim] for scaled_dot_product_attention
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """H×W -> ceil(H/2)×ceil(W/2): a stride-2 3×3 conv, or 2×2 average pooling when ``with_conv=False``
    (Ho et al.'s ``resamp_with_conv`` switch)."""

    def __init__(self, ch: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2, ceil_mode=True)  # a ragged edge averages the pixels it has
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to an exact target size (the skip's size), then a 3×3 conv (none when
    ``with_conv=False``)."""

    def __init__(self, ch: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class UNet(nn.Module):
    """DDPM U-Net predicting a tensor shaped like its input (ε, x0 or v, depending on the diffusion).

    Args:
        image_size: int or (H, W); non-square sizes are fine.
        in_channels: image channels.
        out_channels: output channels (default: ``in_channels``).
        base_channels: channels of the first level; level i has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level; there are ``len(channel_mults) - 1`` downsamples.
        num_res_blocks: ResBlocks per level on the way down (the way up has one more per level).
        attention_resolutions: feature-map sizes with self-attention; a level gets attention when
            ``min(H, W)`` of its feature map is in this tuple (e.g. ``(16,)`` for 32×32 images, levels 32/16/8/4).
        num_heads: attention heads.
        dropout: dropout rate inside the ResBlocks.
        num_groups: GroupNorm groups (every level's channel count must be divisible by it).
        num_classes: None for an unconditional model, else the number of classes; index ``num_classes``
            is the learned null class.
        resample_with_conv: a 3×3 conv in every down- and upsampling (Ho et al.'s ``resamp_with_conv``,
            default); False uses plain 2×2 average pooling and nearest-neighbour upsampling.
        scale_shift_norm: condition every ResBlock by scaling and shifting its second GroupNorm's output
            (AdaGN, Nichol & Dhariwal 2021) instead of adding the embedding (Ho et al. 2020, default).
        context_dim: width of the context tokens for cross-attention (None: no text conditioning).
        low_res_channels: channels of a low-resolution conditioning image concatenated to the input (0: none).
        aug_conditioning: embed the low-resolution image's augmentation noise level (`aug_level`).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        num_heads: int = 1,
        dropout: float = 0.1,
        num_groups: int = 32,
        num_classes: int | None = None,
        resample_with_conv: bool = True,
        scale_shift_norm: bool = False,
        context_dim: int | None = None,
        low_res_channels: int = 0,
        aug_conditioning: bool = False,
    ):
        super().__init__()
        H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        out_channels = in_channels if out_channels is None else out_channels
        for c in (base_channels * m for m in channel_mults):
            if c % num_groups != 0:
                raise ValueError(f"channel count {c} (base_channels * mult) is not divisible by num_groups={num_groups}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes}")
        self.config = dict(
            image_size=[H, W] if H != W else H,
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions),
            num_heads=num_heads,
            dropout=dropout,
            num_groups=num_groups,
            num_classes=num_classes,
            resample_with_conv=resample_with_conv,
            scale_shift_norm=scale_shift_norm,
        )
        # the conditioning extras enter the config only when used, so older checkpoints' configs stay identical
        if context_dim is not None:
            self.config["context_dim"] = context_dim
        if low_res_channels:
            self.config["low_res_channels"] = low_res_channels
        if aug_conditioning:
            self.config["aug_conditioning"] = True
        self.image_size = (H, W)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.base_channels = base_channels
        self.context_dim = context_dim
        self.low_res_channels = low_res_channels
        self.aug_conditioning = aug_conditioning

        # time (and class) embedding
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.aug_mlp = (nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                        if aug_conditioning else None)

        def block(cin, cout):
            return ResBlock(cin, cout, emb_dim, dropout, num_groups, scale_shift_norm)

        def attn(ch):
            if context_dim is not None:
                return SpatialTransformer(ch, context_dim, num_heads, num_groups)
            return Attention(ch, num_heads, num_groups)

        # feature-map size of every level: a stride-2 conv maps n -> ceil(n / 2)
        sizes = [(H, W)]
        for _ in channel_mults[1:]:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))

        # down path: remember the channel count of every skip connection
        self.conv_in = nn.Conv2d(in_channels + low_res_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            use_attn = min(sizes[level]) in attention_resolutions
            for _ in range(num_res_blocks):
                layers = [block(ch, base_channels * mult)]
                ch = base_channels * mult
                if use_attn:
                    layers.append(attn(ch))
                self.down.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level != len(channel_mults) - 1:
                self.down.append(Downsample(ch, resample_with_conv))
                skip_channels.append(ch)

        self.mid = nn.ModuleList([block(ch, ch), attn(ch), block(ch, ch)])

        # up path: each block eats one skip connection (popped in reverse order)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            use_attn = min(sizes[level]) in attention_resolutions
            for _ in range(num_res_blocks + 1):
                layers = [block(ch + skip_channels.pop(), base_channels * mult)]
                ch = base_channels * mult
                if use_attn:
                    layers.append(attn(ch))
                self.up.append(nn.ModuleList(layers))
            if level != 0:
                self.up.append(Upsample(ch, resample_with_conv))

        self.norm_out = nn.GroupNorm(num_groups, ch)
        self.conv_out = zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))

    # ------------------------------------------------------------------ input checks
    def _check_conditioning(self, x, context, context_mask, low_res, aug_level) -> None:
        B, _, H, W = x.shape
        if self.context_dim is not None:
            if context is None:
                raise ValueError("this UNet is text-conditioned (context_dim set): pass context [B, L, "
                                 f"{self.context_dim}] (the empty prompt's encoding for the unconditional branch)")
            if context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.context_dim:
                raise ValueError(f"context must have shape [B, L, context_dim] = [{B}, L, {self.context_dim}], got "
                                 f"{tuple(context.shape)}")
            if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
                raise ValueError(f"context_mask must have shape [B, L] = {list(context.shape[:2])}, got "
                                 f"{tuple(context_mask.shape)}")
        elif context is not None:
            raise ValueError("this UNet has no cross-attention (context_dim=None) but a context was given")
        if self.low_res_channels:
            want = (B, self.low_res_channels, H, W)
            if low_res is None or tuple(low_res.shape) != want:
                got = "None" if low_res is None else tuple(low_res.shape)
                raise ValueError(f"this super-resolution UNet needs low_res of shape {want} (the low-resolution "
                                 f"image upsampled to {H}×{W}), got {got}")
        elif low_res is not None:
            raise ValueError("this UNet takes no low-resolution image (low_res_channels=0)")
        if self.aug_conditioning:
            if aug_level is None or not torch.is_tensor(aug_level) or aug_level.shape != (B,):
                raise ValueError(f"this UNet is conditioned on the augmentation noise level: pass aug_level [B] "
                                 f"= ({B},) (a timestep; 0 = no augmentation)")
        elif aug_level is not None:
            raise ValueError("this UNet takes no aug_level (aug_conditioning=False)")

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        if not torch.is_tensor(x) or x.ndim != 4:
            got = f"shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"UNet expects x of shape [B, C, H, W] (4 dims), got {got}")
        if not x.is_floating_point():
            raise ValueError(f"UNet expects a floating-point x, got dtype {x.dtype}")
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels, got {C} (x shape {tuple(x.shape)})")
        if (H, W) != self.image_size:
            raise ValueError(f"UNet expects images of size (H, W) = {self.image_size}, got {(H, W)}")
        check_t_and_y("UNet", B, t, y, self.num_classes)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                low_res: torch.Tensor | None = None, aug_level: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W] float, t [B] (long or float timesteps), y [B] long in [0, num_classes] or None; the
        conditioning extras as in the module docstring (context [B, L, D] + context_mask [B, L], low_res,
        aug_level), each required exactly when the model was built for it."""
        self._check_inputs(x, t, y)
        self._check_conditioning(x, context, context_mask, low_res, aug_level)
        emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(x.dtype))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(y)
        if self.aug_mlp is not None:
            emb = emb + self.aug_mlp(timestep_embedding(aug_level, self.base_channels).to(x.dtype))

        def attend(block, h):
            if isinstance(block, SpatialTransformer):
                return block(h, context.to(h.dtype), context_mask)
            return block(h)

        h = self.conv_in(x if low_res is None else torch.cat([x, low_res.to(x.dtype)], dim=1))
        skips = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                h = layer[0](h, emb)
                for a in layer[1:]:
                    h = attend(a, h)
            skips.append(h)

        h = self.mid[0](h, emb)
        h = attend(self.mid[1], h)
        h = self.mid[2](h, emb)

        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h, size=skips[-1].shape[-2:])
            else:
                h = layer[0](torch.cat([h, skips.pop()], dim=1), emb)
                for a in layer[1:]:
                    h = attend(a, h)

        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------- presets

PRESETS: dict[str, dict] = {
    # sklearn's 8×8 digits: small and fast enough to train in about a minute on 2 CPU cores (0.40M parameters;
    # base 24 beat base 32 in a 60-second CPU budget: ~600 steps instead of ~450, see benchmarks/README.md)
    "digits": dict(
        image_size=8, in_channels=1, base_channels=24, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), num_heads=4, dropout=0.0, num_groups=8, num_classes=10,
    ),
    # mnist5k: 28×28 digits on a CPU (levels 28, 14, 7 with 16, 32, 64 channels; 0.69M parameters, ~140 training
    # img/s on 2 cores). Narrow where the map is large, wide where the digit's class is decided: base 32 with
    # multipliers (1, 2, 2) (1.11M) cost 2.5× the time per step for the same sample accuracy (benchmarks/README.md)
    "mnist5k": dict(
        image_size=28, in_channels=1, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
        attention_resolutions=(7,), num_heads=4, dropout=0.0, num_groups=8, num_classes=10,
    ),
    # latent diffusion (Rombach et al. 2022) on an AutoencoderKL's 4×7×7 latents of 28×28 digits (levels 7, 4;
    # image_size / in_channels are the latent's, filled in by the Trainer from the autoencoder). 1.49M parameters,
    # about mnist5k's, but ~6× its training images/s on the CPU (16× fewer positions); base 64 with 2 ResBlocks
    # (3.7M) was 2.2× slower per step
    "latent": dict(
        image_size=7, in_channels=4, base_channels=48, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(7,), num_heads=4, dropout=0.0, num_groups=8, num_classes=10,
    ),
    # MNIST / Fashion-MNIST 28×28 on a GPU (levels 28, 14, 7)
    "mnist": dict(
        image_size=28, in_channels=1, base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
        attention_resolutions=(7,), num_heads=4, dropout=0.1, num_groups=32, num_classes=10,
    ),
    # Ho et al. 2020, CIFAR-10: ch=128, ch_mult=(1,2,2,2), 2 res blocks, attention at 16×16, dropout 0.1
    "cifar10": dict(
        image_size=32, in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16,), num_heads=1, dropout=0.1, num_groups=32, num_classes=None,
    ),
}


def unet_preset(name: str, **overrides) -> UNet:
    """Build a UNet from a named preset (``PRESETS``), e.g. ``unet_preset("cifar10", num_classes=10)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; known presets: {sorted(PRESETS)}")
    return UNet(**{**PRESETS[name], **overrides})
