"""The first stage of latent diffusion: a small convolutional autoencoder with a KL-regularised latent.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (LDM, §3 and App. G):
an encoder E maps an image x [C, H, W] to a Gaussian q(z | x) = N(μ(x), diag σ²(x)) over a latent of
c channels and H/f × W/f positions (f = 2^levels is the *downsampling factor*); a decoder D maps a latent
back to an image. Training minimises

    L = ‖x − D(z)‖ + β · KL(q(z | x) ‖ N(0, I)),   z = μ + σ ⊙ ε,  ε ~ N(0, I)        (reparameterisation)

with a very small β ("KL-reg", order 1e-6 relative to the reconstruction in LDM), so that the latent stays
informative but cannot drift to arbitrary scales. The KL of a diagonal Gaussian to N(0, I) in closed form
(Kingma & Welling 2014, "Auto-Encoding Variational Bayes", App. B):

    KL = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²).

Diffusion then runs on ``scale_factor · z``. The scale factor is 1 / std of the latents over the training
data (LDM §4.3.2 / App. G "rescale the latent"; Stable Diffusion v1's 0.18215 is this number for its own
autoencoder), so the diffusion's forward process starts from data of about unit variance, as its noise
schedule assumes for pixels in [-1, 1].

Shapes: with ``image_size=28`` and ``channels=(32, 64)`` (two downsamplings, f = 4) a 1×28×28 digit becomes a
c×7×7 latent. Sizes that do not halve evenly (e.g. 30 → 15 → 8) are fine: the decoder upsamples to the exact
sizes the encoder passed through, so decode(encode(x)) has x's shape, square or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of log σ² (as LDM's DiagonalGaussianDistribution): keeps exp() finite


@dataclass
class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)), one per image; ``mean``/``logvar`` are [B, c, h, w]."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = μ + σ ⊙ ε with ε ~ N(0, I): the reparameterisation trick (Kingma & Welling 2014, §2.4), so
        gradients flow to μ and σ."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) ‖ N(0, I)) per image [B], summed over latent dimensions (closed form above)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class _ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3, twice, plus a (1×1 conv when channels change) skip connection."""

    def __init__(self, in_ch: int, out_ch: int, num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(num_groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _level_sizes(size: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """[(H, W), (⌈H/2⌉, ⌈W/2⌉), ...]: the feature-map size at each level (a stride-2 conv with padding 1)."""
    sizes = [size]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class AutoencoderKL(nn.Module):
    """Convolutional VAE (LDM's "KL-reg" first stage), small enough to train on a CPU in minutes.

    Args:
        image_size: int or (H, W).
        in_channels: image channels.
        latent_channels: c, the channels of the latent.
        channels: feature channels per level; ``len(channels)`` stride-2 downsamplings, so f = 2**len(channels).
        num_res_blocks: ResBlocks per level.
        num_groups: GroupNorm groups (must divide every entry of ``channels``).
        scale_factor: multiply latents by this before diffusion (see ``measure_scale_factor``); stored in
            the config so a saved autoencoder carries it.
    """

    def __init__(self, image_size: int | tuple[int, int] = 28, in_channels: int = 1, latent_channels: int = 4,
                 channels: tuple[int, ...] = (32, 64), num_res_blocks: int = 1, num_groups: int = 8,
                 scale_factor: float = 1.0):
        super().__init__()
        H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if not channels:
            raise ValueError("channels must name at least one level (one downsampling)")
        for c in channels:
            if c % num_groups:
                raise ValueError(f"channel count {c} is not divisible by num_groups={num_groups}")
        if latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
        if not (scale_factor > 0 and math.isfinite(scale_factor)):
            raise ValueError(f"scale_factor must be a positive number, got {scale_factor}")
        self.config = dict(image_size=[H, W] if H != W else H, in_channels=in_channels,
                           latent_channels=latent_channels, channels=list(channels),
                           num_res_blocks=num_res_blocks, num_groups=num_groups, scale_factor=float(scale_factor))
        self.sizes = _level_sizes((H, W), len(channels))
        self.scale_factor = float(scale_factor)

        # encoder: conv_in, then per level ResBlocks and a stride-2 conv; then moments (μ, log σ²)
        self.enc_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        enc, ch = [], channels[0]
        for c in channels:
            for _ in range(num_res_blocks):
                enc.append(_ResBlock(ch, c, num_groups))
                ch = c
            enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc.append(_ResBlock(ch, ch, num_groups))
        self.encoder = nn.Sequential(*enc)
        self.enc_out = nn.Sequential(nn.GroupNorm(num_groups, ch), nn.SiLU(),
                                     nn.Conv2d(ch, 2 * latent_channels, 3, padding=1))

        # decoder: the mirror image; every upsampling goes to the exact size the encoder came from
        self.dec_in = nn.Conv2d(latent_channels, ch, 3, padding=1)
        self.dec_mid = _ResBlock(ch, ch, num_groups)
        self.dec_levels = nn.ModuleList()
        for c in reversed(channels):
            up = nn.Conv2d(ch, ch, 3, padding=1)  # runs before the level's blocks, on the incoming channels
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(_ResBlock(ch, c, num_groups))
                ch = c
            self.dec_levels.append(nn.ModuleDict({"up": up, "blocks": nn.Sequential(*blocks)}))
        self.dec_out = nn.Sequential(nn.GroupNorm(num_groups, ch), nn.SiLU(),
                                     nn.Conv2d(ch, in_channels, 3, padding=1))

    @property
    def downsampling_factor(self) -> int:
        return 2 ** len(self.config["channels"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of one image's latent."""
        return (self.config["latent_channels"], *self.sizes[-1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config["in_channels"], *self.sizes[0])

    def _check(self, x: torch.Tensor, shape: tuple, what: str) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{what}: expected a tensor [B, {', '.join(map(str, shape))}], got {list(x.shape)}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) for images x [B, C, H, W] in [-1, 1]."""
        self._check(x, self.image_shape, "encode")
        moments = self.enc_out(self.encoder(self.enc_in(x)))
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] (unbounded; about [-1, 1]) from *unscaled* latents z [B, c, h, w]."""
        self._check(z, self.latent_shape, "decode")
        h = self.dec_mid(self.dec_in(z))
        for level, size in zip(self.dec_levels, reversed(self.sizes[:-1])):
            h = level["up"](F.interpolate(h, size=size, mode="nearest"))
            h = level["blocks"](h)
        return self.dec_out(h)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstruction, posterior): decode a reparameterised sample of q(z | x)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    # -- the latent space diffusion sees ------------------------------------------------------------------------

    def encode_scaled(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        """``scale_factor · z`` with z ~ q(z | x) (or its mean with ``sample=False``): what diffusion trains on."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.scale_factor

    def decode_scaled(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """Images from latents in the diffusion's (scaled) space: D(z / scale_factor)."""
        return self.decode(z_scaled / self.scale_factor)

    def set_scale_factor(self, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"scale_factor must be a positive number, got {value}")
        self.scale_factor = float(value)
        self.config["scale_factor"] = float(value)


RECON_LOSSES = ("l1", "l2")


class AutoencoderObjective:
    """LDM's KL-reg objective in the interface the `Trainer` calls for one step, like `GaussianDiffusion`'s:

        objective.training_losses(model, x, y=None, generator=None)
            -> {"loss": [B], "recon": [B], "kl": [B]}       per image: recon + kl_weight · KL

    The reconstruction term is summed over pixels (like the KL over latent dimensions), so β = ``kl_weight``
    weighs the two on the same per-image scale as in LDM (Rombach et al. 2022, App. G; their β ≈ 1e-6).
    ``recon``: "l1" (LDM's pixel term, sharper) or "l2". ``y`` (class labels) is accepted and ignored: the
    first stage is unconditional. ``generator`` draws the reparameterisation noise z = μ + σ ⊙ ε.
    """

    def __init__(self, kl_weight: float = 1e-6, recon: str = "l1"):
        if recon not in RECON_LOSSES:
            raise ValueError(f"recon must be one of {', '.join(RECON_LOSSES)}, got {recon!r}")
        if not (kl_weight >= 0 and math.isfinite(kl_weight)):
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight, self.recon = float(kl_weight), recon

    @property
    def config(self) -> dict:
        return {"kl_weight": self.kl_weight, "recon": self.recon}

    def __repr__(self) -> str:
        return f"AutoencoderObjective(kl_weight={self.kl_weight:g}, recon={self.recon!r})"

    def to(self, device=None) -> "AutoencoderObjective":  # nothing to move: the same call as GaussianDiffusion.to
        return self

    def training_losses(self, model, x: torch.Tensor, y=None, generator: torch.Generator | None = None) -> dict:
        x_hat, posterior = model(x, generator)
        err = (x_hat - x).abs() if self.recon == "l1" else (x_hat - x).pow(2)
        rec = err.flatten(1).sum(1)
        kl = posterior.kl()
        return {"loss": rec + self.kl_weight * kl, "recon": rec.detach(), "kl": kl.detach()}


def autoencoder_loss(model: AutoencoderKL, x: torch.Tensor, kl_weight: float = 1e-6, recon: str = "l1",
                     generator: torch.Generator | None = None) -> dict:
    """`AutoencoderObjective`'s loss averaged over the batch: {"loss", "recon", "kl"} (scalars; "loss" has
    gradients)."""
    out = AutoencoderObjective(kl_weight, recon).training_losses(model, x, generator=generator)
    return {key: value.mean() for key, value in out.items()}


@torch.no_grad()
def measure_scale_factor(model: AutoencoderKL, images: torch.Tensor, batch_size: int = 256,
                         generator: torch.Generator | None = None) -> float:
    """1 / std of sampled latents z ~ q(z | x) over ``images`` (LDM's rescaling; SD v1: 0.18215).

    Multiplying latents by it gives them unit variance, the scale the noise schedule was designed for.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        zs = [model.encode(images[i:i + batch_size].to(device)).sample(generator).double().cpu()
              for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    std = torch.cat(zs).std().item()
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"latents have std {std}: is the autoencoder trained (finite, not collapsed)?")
    return 1.0 / std
