"""Latent diffusion: the package's own diffusion, UNet and samplers, run on an autoencoder's scaled latents.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (LDM, §3–4): train a
first-stage autoencoder (`ddpm_lite.autoencoder.AutoencoderKL`), freeze it, and train an ordinary diffusion
model on z₀ = scale_factor · E(x) instead of on pixels. Sampling draws z₀ with any sampler and decodes it,
x = D(z₀ / scale_factor). Nothing in `GaussianDiffusion` or the samplers changes; three details do:

* **No clipping in latent space.** Pixels live in [-1, 1], so samplers clip x̂₀ there ("static"
  thresholding) and `samplers.sample` clamps its result. Scaled latents have unit *variance*, not a bounded
  range (values of ±3 are ordinary), so latent sampling uses threshold=None and no clamp, as LDM does
  (its `clip_denoised=False` for latents); only the decoded images are clamped to [-1, 1].
* **Mean latents, encoded once.** The training set is encoded once (`encode_images`) with the posterior's
  mean μ(x), not a sample μ + σε: with LDM's tiny KL weight σ is small, a single frozen draw would add a fixed
  per-image perturbation rather than fresh augmentation, and the mean is what the decoder reconstructs best
  and is deterministic (a resumed run re-encodes to the same bits). The scale factor is LDM's, 1 / std of
  *sampled* latents; once the autoencoder is trained σ ≪ std(μ) and the mean latents have std ≈ 1 too (the
  Trainer records it as extra.latent_std; well below 1 means the autoencoder was trained too briefly). LDM
  itself encodes every batch anew and samples; pre-encoding is the cheaper choice here: on one CPU thread
  (mnist5k, default AutoencoderKL, `latent` UNet, batch 64) a step on pre-encoded latents took 161 ms and
  one that encodes its batch 212 ms, while encoding all 4000 images once takes about 5 s (~100 steps' saving).
* **Editing in latent space.** Image-to-image (SDEdit) encodes the input, runs `editing.img2img_steps` on
  its latent and decodes. Inpainting (RePaint) needs the keep-mask at latent resolution: `latent_mask`
  keeps a latent position only where *all* the pixels it covers are kept (a min-pool per downsampling, so
  the model redraws every latent position that touches the hole). Latent positions are not pixels: decoding
  changes the kept region a little (the autoencoder is lossy and the decoder mixes neighbouring positions),
  so `inpaint` pastes the known pixels back after decoding; the kept pixels are then exactly the input's,
  and the seam is where the decoder's fill meets them.

    from ddpm_lite import checkpoint as ckpt, latent
    model, diffusion = ckpt.from_pretrained("runs/mnist5k-latent")
    ae = ckpt.load_autoencoder("runs/mnist5k-latent")                 # None for a pixel-space model
    x = latent.sample_images(model, diffusion, (16, *ae.latent_shape), autoencoder=ae, y=labels)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .autoencoder import AutoencoderKL
from .editing import _check_images, _check_mask, img2img_steps, inpaint_steps
from .models import eval_mode
from .samplers import _last, sample as pixel_sample, sample_steps

__all__ = ["encode_images", "decode_latents", "latent_mask", "sample_latents", "sample_images", "img2img", "inpaint"]


def _check_autoencoder(autoencoder) -> AutoencoderKL:
    if not isinstance(autoencoder, AutoencoderKL):
        raise ValueError(f"expected an AutoencoderKL (ddpm_lite.autoencoder), got {type(autoencoder).__name__}")
    return autoencoder


def _ae_device(autoencoder) -> torch.device:
    return next(autoencoder.parameters()).device


@torch.no_grad()
def encode_images(autoencoder: AutoencoderKL, images: torch.Tensor, batch_size: int = 256, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled latents scale_factor · z of `images` [N, C, H, W] in [-1, 1], in batches, on the images' device.

    z is the posterior mean (default; see the module docstring) or, with `sample=True`, a draw of
    q(z | x) from `generator`.
    """
    ae = _check_autoencoder(autoencoder)
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(ae.image_shape):
        raise ValueError(f"the autoencoder takes images [N, {', '.join(map(str, ae.image_shape))}], got "
                         f"{list(images.shape)}")
    device = _ae_device(ae)
    with eval_mode(ae):
        out = [ae.encode_scaled(images[i:i + batch_size].to(device).float(), sample=sample, generator=generator)
               .to(images.device) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else images.new_zeros((0, *ae.latent_shape))


@torch.no_grad()
def decode_latents(autoencoder: AutoencoderKL, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images D(z / scale_factor) in [-1, 1] (clamped, float32) from scaled latents [N, c, h, w], on their device."""
    ae = _check_autoencoder(autoencoder)
    device = _ae_device(ae)
    with eval_mode(ae):
        out = [ae.decode_scaled(latents[i:i + batch_size].to(device).float()).float().to(latents.device)
               for i in range(0, latents.shape[0], batch_size)]
    return torch.cat(out).clamp(-1.0, 1.0)


def latent_mask(autoencoder: AutoencoderKL, keep: torch.Tensor) -> torch.Tensor:
    """The keep-mask [B or 1, 1, h, w] at latent resolution for a pixel keep-mask [B or 1, 1 or C, H, W] (1 =
    keep): a latent position is kept only where every pixel it covers is kept (one 2×2 min-pool, rounding up,
    per downsampling of the autoencoder, so the sizes follow the encoder's exactly)."""
    ae = _check_autoencoder(autoencoder)
    keep = torch.as_tensor(keep, dtype=torch.float32)
    if keep.dim() != 4 or tuple(keep.shape[2:]) != tuple(ae.image_shape[1:]):
        raise ValueError(f"keep-mask: expected [B or 1, 1, {ae.image_shape[1]}, {ae.image_shape[2]}] (the image size), "
                         f"got {list(keep.shape)}")
    m = keep.amin(dim=1, keepdim=True)  # a pixel is kept if all its channels are
    for _ in range(len(ae.config["channels"])):
        m = -F.max_pool2d(-m, kernel_size=2, stride=2, ceil_mode=True)
    return m


@torch.no_grad()
def sample_latents(model, diffusion, shape, **kwargs) -> torch.Tensor:
    """`samplers.sample` in latent space: threshold None (unless given) and no clamp; returns scaled latents."""
    kwargs.setdefault("threshold", None)
    with eval_mode(model):
        return _last(sample_steps(model, diffusion, shape, **kwargs), None)


@torch.no_grad()
def sample_images(model, diffusion, shape, autoencoder: AutoencoderKL | None = None, **kwargs) -> torch.Tensor:
    """Images in [-1, 1] from a pixel-space model (autoencoder None: `samplers.sample`) or a latent one
    (`sample_latents` of the model's `shape` [B, c, h, w], then `decode_latents`). Keyword arguments: those of
    `samplers.sample` (sampler, steps, y, guidance, eta, generator, device, progress, ...)."""
    if autoencoder is None:
        return pixel_sample(model, diffusion, shape, **kwargs)
    return decode_latents(autoencoder, sample_latents(model, diffusion, shape, **kwargs))


@torch.no_grad()
def img2img(model, diffusion, autoencoder: AutoencoderKL, x_init: torch.Tensor, strength: float,
            **kwargs) -> torch.Tensor:
    """SDEdit in latent space: encode `x_init` (images in [-1, 1]; posterior mean), run `editing.img2img_steps`
    on the latent (no thresholding), decode. At strength 0 the result is D(E(x_init)), the input as the
    autoencoder reconstructs it. Keyword arguments as `editing.img2img_steps`."""
    x_init = _check_images(x_init, "x_init")
    z = encode_images(autoencoder, x_init)
    kwargs.setdefault("threshold", None)
    with eval_mode(model):
        z = _last(img2img_steps(model, diffusion, z, strength, check_range=False, **kwargs), z)
    return decode_latents(autoencoder, z)


@torch.no_grad()
def inpaint(model, diffusion, autoencoder: AutoencoderKL, x_known: torch.Tensor, mask, paste: bool = True,
            **kwargs) -> torch.Tensor:
    """RePaint in latent space (see the module docstring): the pixel keep-`mask` (1 = keep) becomes
    `latent_mask`, `editing.inpaint_steps` runs on the encoded input, and the result is decoded. With `paste`
    (default) the kept pixels are then copied back from `x_known`, so they are exact; without it they are
    only as close as the autoencoder reconstructs them. Keyword arguments as `editing.inpaint_steps`."""
    x_known = _check_images(x_known, "x_known")
    mask = _check_mask(mask, x_known)
    z = encode_images(autoencoder, x_known)
    kwargs.setdefault("threshold", None)
    with eval_mode(model):
        z = _last(inpaint_steps(model, diffusion, z, latent_mask(autoencoder, mask).to(z.device), check_range=False,
                                **kwargs), z)
    x = decode_latents(autoencoder, z)
    return mask * x_known + (1 - mask) * x if paste else x
