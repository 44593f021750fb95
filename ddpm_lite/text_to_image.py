"""Training text-to-image diffusion: captions in, a text-conditioned denoiser out (mini Stable Diffusion / Imagen).

Each training batch of digits and labels becomes (image, caption) pairs exactly as CLIP was trained
(`ddpm_lite.captions`: random transformations, measured attributes, templates; the held-out combinations
never drawn), and then

    c = TextEncoder(caption)                       frozen per-token states [B, L, D] (cached per caption)
    c = "" (the empty prompt) with probability p   caption dropout: trains the unconditional branch (10%)
    x_0 = image, or its scaled latent E(image)      pixel space (Imagen) or latent space (Stable Diffusion)
    L = the diffusion loss of ε_θ(x_t, t, c)        the same `GaussianDiffusion.training_losses`

For a cascade's **super-resolution** stage (Imagen §2.5, Ho et al. 2022) the model also sees the image at the
low resolution, upsampled back, after *noise-conditioning augmentation*: the low-resolution image is itself
forward-noised to a random level s (`q_sample` at timestep s, s uniform in [0, aug_max]), and s is given to
the model, so at sampling time the base stage's imperfect output can be treated as "a noisy low-res image"
(`SuperResCondition`). `low_res_view` and `augment_low_res` are those two steps.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from . import captions as cap
from .conditioning import SuperResCondition

PROMPT_TEMPLATE = "a {}"  # the sample-grid prompts: "a zero" ... "a nine"


def digit_prompts(n: int) -> list[str]:
    """`n` prompts cycling through "a zero" ... "a nine" (the Trainer's sample grids)."""
    return [PROMPT_TEMPLATE.format(cap.NUMBER_WORDS[i % 10]) for i in range(n)]


def low_res_view(images: torch.Tensor, low_size: int) -> torch.Tensor:
    """Images [B, C, H, W] down to low_size × low_size (area averaging) and back up to H × W (bilinear): what
    a super-resolution stage is given."""
    small = F.interpolate(images, size=(low_size, low_size), mode="area")
    return upsample(small, images.shape[-2:])


def upsample(images: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling to `size` (H, W), as the cascade passes a stage's output to the next."""
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)


def augment_low_res(diffusion, low_res: torch.Tensor, aug_level: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise-conditioning augmentation: q_sample of the low-resolution image at timestep `aug_level` [B]
    (0 leaves it almost clean: ᾱ_0 ≈ 1)."""
    noise = torch.randn(low_res.shape, generator=generator, device=low_res.device, dtype=low_res.dtype)
    return diffusion.q_sample(low_res, aug_level, noise)


class TextToImageObjective:
    """One Trainer step of a text-to-image model: caption the batch, encode the text (frozen, cached), drop
    captions with probability `caption_dropout`, encode the images to latents (if `autoencoder`), then the
    diffusion loss. With `low_size` it trains a super-resolution stage on low-resolution views with noise
    augmentation up to timestep `aug_max`; such a stage may have no `text_encoder` (conditioned on the
    low-resolution image alone, as the super-resolution models of Cascaded Diffusion Models), and still
    trains on the transformed digits the base stage draws."""

    def __init__(self, diffusion, text_encoder, thresholds: cap.AttributeThresholds, autoencoder=None,
                 caption_dropout: float = 0.1, transforms=None, low_size: int | None = None, aug_max: int = 250,
                 resolution: int | None = None):
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        self.diffusion = diffusion
        self.text_encoder = text_encoder
        self.thresholds = thresholds
        self.autoencoder = autoencoder
        self.caption_dropout = caption_dropout
        self.transforms = cap.check_transforms(transforms)
        self.low_size = low_size
        self.aug_max = aug_max
        self.resolution = resolution
        self.last_captions: list[str] = []
        self.last_facts: list[dict] = []

    @property
    def config(self) -> dict:
        return {"caption_dropout": self.caption_dropout, "transforms": list(self.transforms),
                "low_size": self.low_size, "aug_max": self.aug_max, "resolution": self.resolution}

    def to(self, device=None) -> "TextToImageObjective":
        self.diffusion = self.diffusion.to(device)
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """What the model denoises, from transformed images in [-1, 1]: resized to `resolution` (a cascade's
        base stage), or the autoencoder's scaled latents (posterior mean), or the images themselves."""
        if self.resolution is not None:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="area")
        if self.autoencoder is not None:
            from .latent import encode_images

            images = encode_images(self.autoencoder, images)
        return images

    def training_losses(self, model, x: torch.Tensor, y=None, generator: torch.Generator | None = None) -> dict:
        if y is None:
            raise ValueError("text-to-image training captions the digits from their labels: the dataset has none")
        rng = cap.caption_rng(generator)
        images, texts, facts = cap.measure_and_caption(x.cpu(), y.cpu(), self.thresholds, rng,
                                                       allowed=self.transforms)
        images = images.to(x.device)
        self.last_facts = facts
        drop = torch.tensor([rng.random() < self.caption_dropout for _ in texts])
        texts = ["" if d else t for d, t in zip(drop.tolist(), texts)]
        self.last_captions = texts
        cond = None if self.text_encoder is None else self.text_encoder.encode(texts, unknown="unk").to(x.device)
        if self.low_size is not None:  # a super-resolution stage: the target is the full-size image
            low = low_res_view(images, self.low_size)
            level = torch.randint(0, self.aug_max + 1, (x.shape[0],), generator=generator,
                                  device=generator.device if generator is not None else None).to(x.device)
            low = augment_low_res(self.diffusion, low, level, generator)
            cond = SuperResCondition(low, level, cond)
            return self.diffusion.training_losses(model, images, y=cond, generator=generator)
        return self.diffusion.training_losses(model, self.prepare(images), y=cond, generator=generator)


# -- measuring what a text-to-image model draws -------------------------------------------------------------------

# (attribute, value index) -> the transformation that shows it; undone before classifying the digit
SHOWN_BY = {("orientation", 1): "upside_down", ("colours", 1): "inverted", ("position", 0): "shift_left",
             ("position", 1): "shift_right", ("size", 1): "small"}


def undo_transforms(images: torch.Tensor, transform: str | None) -> torch.Tensor:
    """Map digits drawn with a transformation back to a plain upright white-on-black digit, so the 28×28
    classifier can read them: rotate back, invert back, shift back, or crop the centre of a small digit and
    scale it up again."""
    if transform is None:
        return images
    if transform == "upside_down":
        return images.flip(-1).flip(-2)
    if transform == "inverted":
        return -images
    if transform in ("shift_left", "shift_right"):
        dx = cap.shift_pixels(images.shape[-1])
        return cap._shift(images, dx if transform == "shift_left" else -dx)
    if transform == "small":
        H, W = images.shape[-2:]
        h, w = round(H * cap.SMALL_SCALE), round(W * cap.SMALL_SCALE)
        top, left = (H - h) // 2, (W - w) // 2
        return F.interpolate(images[..., top:top + h, left:left + w], size=(H, W), mode="bilinear",
                             align_corners=False)
    raise ValueError(f"unknown transformation {transform!r}")


def measured_value(images: torch.Tensor, attribute: str, medians: dict) -> torch.Tensor:
    """Index (0 or 1, as in `captions.ATTRIBUTES`) of the value each image shows, measured from its pixels:
    thickness / slant against the training data's medians (`medians["thickness"]`, `medians["slant"]`);
    colours by the mean grey level (> 0: black on white); position by the ink's centre of mass (left or right
    half, against the centre); size by the ink's height (< 57% of the image: small). Orientation cannot be
    measured this simply: judge it with a CLIP (`clip_judge`)."""
    if attribute == "thickness":
        return (cap.stroke_thickness(images) > medians["thickness"]).long()
    if attribute == "slant":
        return (cap.slant(images) > medians["slant"]).long()
    if attribute == "colours":
        return (images.float().mean((1, 2, 3)) > 0).long()
    ink = ((images[:, 0].float() + 1) / 2).clamp(0, 1)
    if attribute == "position":
        W = images.shape[-1]
        cx = (ink.sum(1) * torch.arange(W, dtype=ink.dtype)).sum(1) / ink.sum((1, 2)).clamp_min(1e-6)
        return (cx > (W - 1) / 2).long()
    if attribute == "size":
        rows = (ink > 0.5).any(2).float()
        idx = torch.arange(images.shape[-2], dtype=torch.float32)
        top = torch.where(rows > 0, idx, torch.full_like(idx, 1e9)).amin(1)
        bottom = torch.where(rows > 0, idx, torch.full_like(idx, -1)).amax(1)
        return ((bottom - top + 1) < 0.57 * images.shape[-2]).long()
    raise ValueError(f"attribute {attribute!r} is not measured from pixels: use clip_judge")


@torch.no_grad()
def clip_judge(clip, images: torch.Tensor, label: int, attribute: str) -> torch.Tensor:
    """Index (0 or 1) of the opposite caption (`captions.probe_captions`) a CLIP prefers for each image."""
    texts = clip.encode_text(list(cap.probe_captions(attribute, label)))
    return (clip.encode_image(images) @ texts.t()).argmax(1).cpu()
