"""DreamBooth: teach a text-to-image model one subject from a few pictures, and keep what it knew.

Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for Subject-Driven Generation".
Given 3–5 images x of one subject and its class noun ("seven"), fine-tune the model so that the prompt
"a [V] seven" draws *that* subject, where [V] is an **identifier**: a token with a weak prior, so that the
model binds the subject to it instead of overwriting a word it already uses (§3.2). Alone, that fine-tuning
drifts: the model forgets the class ("a seven" starts drawing the subject — language drift) and its samples
lose diversity. The **class-specific prior-preservation loss** (eq. 2) counters both by training, at the same
time, on images x_pr the *frozen* model generated from the class prompt c_pr = "a seven":

    E_{x, c, ε, ε', t} [ w_t ‖x̂_θ(α_t x + σ_t ε, c) − x‖² + λ w_t' ‖x̂_θ(α_t' x_pr + σ_t' ε', c_pr) − x_pr‖² ]

written in the paper for an x_0-predicting model; for this package's ε-models each term is the model's own
training loss (`GaussianDiffusion.training_losses`: ε-MSE with its min-SNR weight in the role of w_t). λ = 1 in
the paper; the class images are generated once, before fine-tuning (`class_images`), so the frozen model is
needed only then.

What trains (`train=`): "all" (every U-Net weight, the paper's choice); "cross_attention" (only the key and
value projections of the cross-attention layers, the words → image pathway: Custom Diffusion, Kumari et al.
2023); "embedding" (only the identifier's row of the text encoder's token embedding, U-Net frozen: textual
inversion, Gal et al. 2023 — 128 numbers instead of 1.75 M, but it can only *find* the subject among what the
model can already draw). The text encoder stays frozen otherwise, as in DreamBooth with Imagen.

For a latent model (mini Stable Diffusion) the subject images are encoded once (posterior mean × scale) and
the class images stay latents: everything trains in the 4×7×7 latent space.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .conditioning import TextCondition
from .diffusion import randn_like
from .latent import encode_images
from .models import eval_mode

TRAINABLE = ("all", "cross_attention", "embedding")
DEFAULT_IDENTIFIER = "sks"  # the rare token of public DreamBooth scripts; here: a word the text encoder never saw


def instance_prompt(identifier: str, class_noun: str) -> str:
    """The subject's prompt "a [V] <class>", with the article "a" (not "an") kept whatever [V] is, so the
    identifier is the only word that differs from the class prompt."""
    return f"a {identifier} {class_noun}"


def class_prompt(class_noun: str) -> str:
    return f"a {class_noun}"


# -- the loss -----------------------------------------------------------------------------------------------------

def prior_preservation_loss(model, diffusion, x_instance: torch.Tensor, c_instance, x_prior: torch.Tensor | None,
                            c_prior, prior_weight: float = 1.0, t_instance: torch.Tensor | None = None,
                            noise_instance: torch.Tensor | None = None, t_prior: torch.Tensor | None = None,
                            noise_prior: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict:
    """DreamBooth's loss (Ruiz et al. 2023, eq. 2): the diffusion loss on the subject images under the
    instance prompt plus `prior_weight` (λ) times the diffusion loss on the class images under the class
    prompt, each term the batch mean of `diffusion.training_losses` (ε-MSE × the model's min-SNR weight).
    `x_prior` None (or λ = 0) gives plain fine-tuning. t / noise are drawn unless given (tests pass them).
    Returns {"loss", "instance", "prior"} (scalars; "prior" is 0 when not used)."""
    if prior_weight < 0:
        raise ValueError(f"prior_weight (λ) must be >= 0, got {prior_weight}")
    inst = diffusion.training_losses(model, x_instance, t=t_instance, noise=noise_instance, y=c_instance,
                                     generator=generator)["loss"].mean()
    prior = inst.new_zeros(())
    if x_prior is not None and prior_weight > 0:
        prior = diffusion.training_losses(model, x_prior, t=t_prior, noise=noise_prior, y=c_prior,
                                          generator=generator)["loss"].mean()
    return {"loss": inst + prior_weight * prior, "instance": inst, "prior": prior}


# -- the class-image set --------------------------------------------------------------------------------------------

@torch.no_grad()
def class_images(pipe, class_noun: str, n: int = 100, guidance: float = 3.0, steps: int = 20,
                 generator: torch.Generator | None = None, batch_size: int = 100) -> torch.Tensor:
    """The prior-preservation set: `n` samples of the frozen model for the class prompt "a <class>", in the
    space the model denoises (latents for a latent model: no decode/encode round trip). Ruiz et al. generate
    about 1000; here 100 keeps a CPU notebook fast."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prompt = class_prompt(class_noun)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        out.append(pipe.sample_base([prompt] * b, guidance=guidance, steps=steps, generator=generator))
    return torch.cat(out)


def _to_model_space(pipe, images: torch.Tensor) -> torch.Tensor:
    """Subject images [N, C, H, W] in [-1, 1] → what the pipeline's model denoises (scaled latents)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(pipe.image_shape):
        raise ValueError(f"subject images must be [N, {', '.join(map(str, pipe.image_shape))}] in [-1, 1] (the "
                         f"pipeline's image size), got {tuple(images.shape)}")
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError("subject images must be scaled to [-1, 1] (ink +1, background -1)")
    if pipe.autoencoder is not None:
        return encode_images(pipe.autoencoder, images.to(pipe.device))
    if pipe.super_resolution is not None:
        raise ValueError("DreamBooth here fine-tunes a single-stage model (mini Stable Diffusion); for a cascade "
                         "fine-tune its base stage on downsampled subject images")
    return images.to(pipe.device)


# -- which weights train ----------------------------------------------------------------------------------------------

def trainable_parameters(model, text_encoder, train: str) -> list[torch.nn.Parameter]:
    """Turn on requires_grad for exactly the weights `train` names (and off for the rest); return them."""
    if train not in TRAINABLE:
        raise ValueError(f"train={train!r}: expected one of {TRAINABLE}")
    model.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if train == "all":
        model.requires_grad_(True)
    elif train == "cross_attention":
        for name, module in model.named_modules():
            if name.endswith("cross_attn"):
                module.to_k.requires_grad_(True)
                module.to_v.requires_grad_(True)
    else:
        text_encoder.text_encoder.token_embedding.weight.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for p in text_encoder.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"train={train!r} found no weights to train: is this a text-conditioned UNet?")
    return params


class _PromptEncoder:
    """Encodes the two training prompts; differentiably (through the embedding row of [V]) for textual
    inversion, from the frozen encoder's cache otherwise."""

    def __init__(self, text_encoder, identifier: str, trainable: bool):
        self.te, self.trainable = text_encoder, trainable
        self.row = text_encoder.tokenizer.stoi[identifier]

    def __call__(self, prompt: str, n: int) -> TextCondition:
        if not self.trainable:
            return self.te.encode([prompt] * n)
        ids = self.te.tokenizer.encode([prompt]).to(self.te.device)
        states = self.te.text_encoder(ids)  # with grad: only the identifier's row is trainable
        null = self.te.encode([""])
        mask = self.te.tokenizer.attention_mask(ids)
        return TextCondition(states.expand(n, -1, -1), mask.expand(n, -1), null.null_context, null.null_mask,
                             [prompt] * n)

    def mask_gradient(self) -> None:
        """Textual inversion: zero the gradient of every embedding row but the identifier's."""
        w = self.te.text_encoder.token_embedding.weight
        if w.grad is not None:
            keep = torch.zeros(w.shape[0], 1, device=w.device, dtype=w.dtype)
            keep[self.row] = 1
            w.grad.mul_(keep)


# -- fine-tuning ----------------------------------------------------------------------------------------------------

@dataclass
class DreamBoothConfig:
    identifier: str = DEFAULT_IDENTIFIER
    class_noun: str = "seven"
    steps: int = 120
    lr: float = 2e-4                   # "embedding" wants more (about 5e-3): one row, far from the data
    batch_size: int = 8                # subject images per step (drawn with repetition from the few there are)
    prior_weight: float = 1.0          # λ of eq. 2; 0 = fine-tuning without prior preservation
    num_class_images: int = 100
    prior_batch_size: int = 8          # class images per step
    guidance: float = 3.0              # for generating the class images
    sample_steps: int = 20
    train: str = "all"
    init_from: str = "<unk>"           # the identifier's starting embedding row
    seed: int = 0

    def __post_init__(self):
        if self.train not in TRAINABLE:
            raise ValueError(f"train={self.train!r}: expected one of {TRAINABLE}")
        for name in ("steps", "batch_size", "num_class_images", "prior_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prior_weight < 0 or self.lr <= 0:
            raise ValueError("prior_weight must be >= 0 and lr > 0")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DreamBoothResult:
    pipe: object                       # the fine-tuned TextToImage (a copy; the original is untouched)
    config: DreamBoothConfig
    history: list = field(default_factory=list)   # per step: {step, loss, instance, prior, time}
    class_images: torch.Tensor | None = None      # the prior-preservation set (model space)
    seconds: float = 0.0


def dreambooth(pipe, subject_images: torch.Tensor, config: DreamBoothConfig | None = None, class_set=None,
               progress: bool = True, callback=None, loss_fn=None, **overrides) -> DreamBoothResult:
    """Fine-tune a copy of the text-to-image pipeline `pipe` on `subject_images` (3–5 images [N, C, H, W] in
    [-1, 1]) bound to "a [V] <class>", with the prior-preservation loss unless `prior_weight` is 0.

    `class_set`: a ready prior-preservation set (model space, e.g. from `class_images`); generated with the
    frozen model when None and `prior_weight` > 0. `callback(step, pipe)` runs every step (for snapshots).
    `loss_fn`: a function with `prior_preservation_loss`'s arguments (model, diffusion, x, c, x_pr, c_pr, λ,
    t, noise, t_pr, noise_pr; t and noise are always passed) returning its dict or the scalar loss (notebook
    11 passes the learner's own).
    Keyword overrides set `DreamBoothConfig` fields. The original pipeline's weights are never changed.
    """
    from tqdm.auto import tqdm

    cfg = config if config is not None else DreamBoothConfig()
    if overrides:
        cfg = DreamBoothConfig(**{**cfg.to_dict(), **overrides})
    gen = torch.Generator().manual_seed(cfg.seed)
    x_subject = _to_model_space(pipe, subject_images)
    if x_subject.shape[0] < 1:
        raise ValueError("need at least one subject image (DreamBooth uses 3–5)")
    use_prior = cfg.prior_weight > 0
    if use_prior and class_set is None:
        class_set = class_images(pipe, cfg.class_noun, cfg.num_class_images, cfg.guidance, cfg.sample_steps, gen)
    if class_set is not None:
        class_set = class_set.to(pipe.device)

    tuned = copy.copy(pipe)
    tuned.model = copy.deepcopy(pipe.model)
    text_encoder = pipe.text_encoder
    if cfg.identifier not in text_encoder.tokenizer.stoi:
        text_encoder = text_encoder.with_tokens([cfg.identifier], init_from=cfg.init_from)
    elif cfg.train == "embedding":
        text_encoder = copy.deepcopy(text_encoder)
    tuned.text_encoder = text_encoder
    params = trainable_parameters(tuned.model, text_encoder, cfg.train)
    prompts = _PromptEncoder(text_encoder, cfg.identifier, cfg.train == "embedding")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    inst_prompt, cls_prompt = instance_prompt(cfg.identifier, cfg.class_noun), class_prompt(cfg.class_noun)
    c_prior = text_encoder.encode([cls_prompt] * cfg.prior_batch_size).to(pipe.device) if use_prior else None

    history, start = [], time.perf_counter()
    tuned.model.train()
    bar = tqdm(range(1, cfg.steps + 1), desc=f"DreamBooth ({cfg.train}, λ={cfg.prior_weight:g})",
               disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(0, x_subject.shape[0], (cfg.batch_size,), generator=gen)
        x_prior = None
        if use_prior:
            x_prior = class_set[torch.randint(0, class_set.shape[0], (cfg.prior_batch_size,), generator=gen)]
        c_inst = prompts(inst_prompt, cfg.batch_size).to(pipe.device)
        x_inst = x_subject[idx]
        t, noise = pipe.diffusion.sample_timesteps(len(x_inst), pipe.device, gen), randn_like(x_inst, gen)
        t_pr = noise_pr = None
        if x_prior is not None:
            t_pr, noise_pr = pipe.diffusion.sample_timesteps(len(x_prior), pipe.device, gen), randn_like(x_prior, gen)
        out = (loss_fn or prior_preservation_loss)(tuned.model, pipe.diffusion, x_inst, c_inst, x_prior, c_prior,
                                                   cfg.prior_weight, t, noise, t_pr, noise_pr)
        if not isinstance(out, dict):
            nan = torch.tensor(float("nan"))
            out = {"loss": out, "instance": nan, "prior": nan}
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.train == "embedding":
            prompts.mask_gradient()
        opt.step()
        if cfg.train == "embedding":
            text_encoder._cache.clear()  # the identifier's row moved: cached encodings are stale
        row = {"step": step, "loss": out["loss"].item(), "instance": out["instance"].item(),
               "prior": out["prior"].item(), "time": time.perf_counter() - start}
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"DreamBooth loss became {row['loss']} at step {step}: lower the lr "
                                     f"(now {cfg.lr:g})")
        history.append(row)
        if progress:
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        if callback is not None:
            tuned.model.eval()
            callback(step, tuned)
            tuned.model.train()
    tuned.model.eval()
    tuned.model.requires_grad_(False)
    text_encoder.requires_grad_(False)
    text_encoder._cache.clear()
    tuned.name = f"{pipe.name or 'model'} + DreamBooth [{cfg.identifier}]"
    return DreamBoothResult(tuned, cfg, history, class_set, time.perf_counter() - start)


# -- saving ---------------------------------------------------------------------------------------------------------

def save_personalized(directory, result: DreamBoothResult, subject_source: str | None = None) -> Path:
    """Write the fine-tuned model as an ordinary text-to-image checkpoint (config.json + safetensors, its
    `text_encoder/` now knowing the identifier, and `autoencoder/`), so `TextToImage.from_pretrained` and
    `python -m ddpm_lite sample --prompt "a sks seven"` load it like any other."""
    pipe = result.pipe
    if pipe.super_resolution is not None:
        raise ValueError("save_personalized writes single-stage pipelines")
    extra = {"dreambooth": {**result.config.to_dict(), "subject": subject_source,
                            "instance_prompt": instance_prompt(result.config.identifier, result.config.class_noun),
                            "class_prompt": class_prompt(result.config.class_noun),
                            "seconds": round(result.seconds, 1)}}
    base_extra = ckpt.load_config(pipe.source_dir).get("extra", {}) if getattr(pipe, "source_dir", None) else {}
    for key in ("dataset", "sample_shape", "image_shape", "classes", "latents", "text_to_image"):
        if key in base_extra:
            extra.setdefault(key, base_extra[key])
    extra.setdefault("sample_shape", list(pipe.base_shape))
    return ckpt.save_pretrained(directory, pipe.model, pipe.diffusion, extra=extra, autoencoder=pipe.autoencoder,
                                text_encoder=pipe.text_encoder)


# -- measuring -------------------------------------------------------------------------------------------------------

@torch.no_grad()
def feature_distance(images: torch.Tensor, references: torch.Tensor, classifier) -> torch.Tensor:
    """For each image, the mean Euclidean distance of its classifier features to the references' features:
    the subject-fidelity measure (low = looks like the subject images). DreamBooth measures it with DINO
    features; here the 28×28 evaluation classifier's penultimate layer plays that role."""
    from .metrics import extract_features

    a = extract_features(images, classifier).double()
    b = extract_features(references, classifier).double()
    return torch.cdist(a, b).mean(1)


@torch.no_grad()
def diversity(images: torch.Tensor, classifier) -> float:
    """Mean pairwise distance of the samples' classifier features (DreamBooth's DIV score uses LPIPS)."""
    from .metrics import extract_features

    f = extract_features(images, classifier).double()
    n = f.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least two images")
    d = torch.cdist(f, f)
    return float(d.sum() / (n * (n - 1)))


__all__ = ["TRAINABLE", "DEFAULT_IDENTIFIER", "instance_prompt", "class_prompt", "prior_preservation_loss",
           "class_images", "trainable_parameters", "DreamBoothConfig", "DreamBoothResult", "dreambooth",
           "save_personalized", "feature_distance", "diversity"]
