"""CLIP, small enough to train from scratch on a CPU: an image encoder and a text encoder that agree.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision" (CLIP). Two
encoders map a batch of N images and their N captions into one joint space; after L2 normalisation the
N × N matrix of cosine similarities, scaled by a learned temperature, is read as N-way classification in
both directions (Fig. 3's pseudocode):

    logits = exp(t) · I_e T_eᵀ                        I_e, T_e: normalised embeddings [N, d]
    L = ½ [CE(logits, arange N) + CE(logitsᵀ, arange N)]    (the symmetric InfoNCE loss, van den Oord 2018)

so each image must pick out its own caption among the batch's captions, and each caption its image. The
temperature τ = exp(−t) starts at 0.07 and the logit scale exp(t) is clamped at 100 (§2.5).

Here: the image encoder is a small CNN (stride-2 convolutions, then a linear map of the flattened features,
so it can tell "shifted left" from "shifted right"); the text encoder is a small causal transformer over
`ddpm_lite.tokenizer` ids whose features at the end token are the caption's embedding, as in CLIP (§2.4).
`encode_text_states` also returns the per-token states, the sequence a text-conditioned U-Net
cross-attends to (Stable Diffusion's use of CLIP's text encoder). `ClipObjective` trains it inside the
project's `Trainer` on captions that `ddpm_lite.captions` writes for each batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import captions as cap
from .tokenizer import Tokenizer

INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over an [N, N] logit matrix whose diagonal holds the matching pairs."""
    if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"expected square logits [N, N], got {tuple(logits_per_image.shape)}")
    target = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.t(), target))


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's loss (Radford et al. 2021, Fig. 3): L2-normalise both [N, d] embeddings, logits =
    logit_scale · cosine similarities [N, N], then the symmetric cross-entropy (images → captions and
    captions → images, averaged). `logit_scale` is exp(t) = 1 / temperature."""
    if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
        raise ValueError(f"image and text embeddings must both be [N, d], got {tuple(image_embeds.shape)} and "
                         f"{tuple(text_embeds.shape)}")
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    return contrastive_loss(logit_scale * image_embeds @ text_embeds.t())


class ImageEncoder(nn.Module):
    """Conv (3×3) blocks with GroupNorm and SiLU, three of them stride 2 (28 → 4), then a linear map of every
    position's features (no global pooling, so where the ink lies still counts: "shifted left" vs "right")."""

    def __init__(self, image_size: int, in_channels: int, channels=(32, 64, 128), width: int = 256,
                 num_groups: int = 8):
        super().__init__()
        c1, c2, c3 = channels
        def block(i, o, stride=1):
            return [nn.Conv2d(i, o, 3, stride=stride, padding=1), nn.GroupNorm(num_groups, o), nn.SiLU()]
        self.convs = nn.Sequential(*block(in_channels, c1), *block(c1, c2, 2), *block(c2, c2), *block(c2, c3, 2),
                                   *block(c3, c3, 2))
        side = image_size
        for _ in range(3):
            side = math.ceil(side / 2)  # 28 -> 14 -> 7 -> 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c3 * side * side, width), nn.SiLU())
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x))


class TextEncoder(nn.Module):
    """Token + position embeddings, causal pre-norm transformer layers, a final LayerNorm (CLIP §2.4)."""

    def __init__(self, vocab_size: int, context_length: int, width: int = 128, layers: int = 3, heads: int = 4):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        mask = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)
        self.width = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-token states [B, L, width]. Causal: position i sees tokens 0..i, so the end token's state
        summarises the whole caption and padding after it changes nothing before it."""
        L = ids.shape[1]
        h = self.token_embedding(ids) + self.positional_embedding[:L]
        h = self.transformer(h, mask=self.causal_mask[:L, :L], is_causal=True)
        return self.ln_final(h)


class CLIP(nn.Module):
    """Image and text encoders with linear projections into a joint `embed_dim` space and a learned
    temperature. Keeps its tokenizer (vocabulary, context length) and the caption attribute thresholds it was
    trained with in `self.config`, so a saved CLIP reads and describes captions exactly as in training."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, embed_dim: int = 64,
                 image_channels=(32, 64, 128), image_width: int = 256, text_width: int = 128, text_layers: int = 3,
                 text_heads: int = 4, vocab=None, context_length: int = 32, caption_thresholds: dict | None = None):
        super().__init__()
        vocab = list(cap.VOCAB if vocab is None else vocab)
        self.config = dict(image_size=image_size, in_channels=in_channels, embed_dim=embed_dim,
                           image_channels=list(image_channels), image_width=image_width, text_width=text_width,
                           text_layers=text_layers, text_heads=text_heads, vocab=vocab,
                           context_length=context_length, caption_thresholds=caption_thresholds)
        self.tokenizer = Tokenizer(vocab, context_length)
        self.image_encoder = ImageEncoder(image_size, in_channels, image_channels, image_width)
        self.text_encoder = TextEncoder(len(self.tokenizer), context_length, text_width, text_layers, text_heads)
        self.image_projection = nn.Linear(image_width, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))

    # -- configuration --------------------------------------------------------------------------------------

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config["in_channels"], self.config["image_size"], self.config["image_size"])

    @property
    def thresholds(self) -> cap.AttributeThresholds | None:
        t = self.config["caption_thresholds"]
        return None if t is None else cap.AttributeThresholds(**t)

    def set_thresholds(self, thresholds: cap.AttributeThresholds) -> None:
        """Store the caption attribute thresholds (measured on the training images) in the config."""
        self.config["caption_thresholds"] = thresholds.to_dict()

    def temperature(self) -> float:
        return 1.0 / float(self.clamped_logit_scale().detach())

    def clamped_logit_scale(self) -> torch.Tensor:
        """exp(t), clamped at 100 (CLIP §2.5: "clipped to prevent scaling the logits by more than 100")."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # -- encoders -------------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return self.logit_scale.device

    def tokenize(self, texts, unknown: str = "unk") -> torch.Tensor:
        return self.tokenizer.encode(texts, unknown=unknown).to(self._device())

    def _ids(self, texts) -> torch.Tensor:
        if torch.is_tensor(texts):
            return texts.to(self._device())
        return self.tokenize(texts)

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"this CLIP takes images [B, {', '.join(map(str, self.image_shape))}] in [-1, 1], got "
                             f"shape {tuple(images.shape)}")

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings [B, embed_dim]."""
        self._check_images(images)
        return self.image_projection(self.image_encoder(images.to(self._device())))

    def encode_text_states(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token states [B, L, text_width], mask [B, L] True for <start>…<end>, False for padding): what
        cross-attention reads. `texts`: captions or token ids."""
        ids = self._ids(texts)
        return self.text_encoder(ids), self.tokenizer.attention_mask(ids)

    def text_features(self, texts) -> torch.Tensor:
        """Unnormalised text embeddings [B, embed_dim]: the state at the end token, projected."""
        ids = self._ids(texts)
        end = self.tokenizer.end_positions(ids)
        # causal attention: the padding after the last end token cannot change any state up to it, so it
        # need not be computed (captions are ~10 of the 32 positions: about 3x less work)
        states = self.text_encoder(ids[:, :int(end.max()) + 1])
        return self.text_projection(states[torch.arange(ids.shape[0], device=ids.device), end])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [B, embed_dim]."""
        return F.normalize(self.image_features(images), dim=-1)

    def encode_text(self, texts) -> torch.Tensor:
        """L2-normalised text embeddings [B, embed_dim] of captions (a list of str) or token ids."""
        return F.normalize(self.text_features(texts), dim=-1)

    def forward(self, images: torch.Tensor, texts) -> torch.Tensor:
        """logits_per_image [B, B] = exp(t) · cos(image_i, text_j) (the transpose is logits_per_text)."""
        image = self.encode_image(images)
        text = self.encode_text(texts)
        return self.clamped_logit_scale() * image @ text.t()

    # -- using a trained CLIP -------------------------------------------------------------------------------

    @torch.no_grad()
    def class_embeddings(self, class_names, templates=cap.ZERO_SHOT_TEMPLATES) -> torch.Tensor:
        """One embedding per class [K, embed_dim]: the normalised mean of the normalised embeddings of every
        template filled with the class name (CLIP's prompt ensembling, §3.1.4)."""
        if isinstance(templates, str):
            templates = [templates]
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"templates must be strings with a '{{}}' for the class name, got {list(templates)}")
        emb = torch.stack([self.encode_text([t.format(name) for name in class_names]) for t in templates])
        return F.normalize(emb.mean(0), dim=-1)

    @torch.no_grad()
    def zero_shot_classify(self, images: torch.Tensor, class_names=cap.NUMBER_WORDS,
                           templates=cap.ZERO_SHOT_TEMPLATES, batch_size: int = 500) -> torch.Tensor:
        """Class probabilities [B, K] from captions alone: softmax over classes of exp(t) · cos(image, class
        embedding). `.argmax(1)` is the predicted class. No labelled training example is used."""
        classes = self.class_embeddings(class_names, templates)
        out = [torch.softmax(self.clamped_logit_scale() * self.encode_image(chunk) @ classes.t(), dim=-1)
               for chunk in images.split(batch_size)]
        return torch.cat(out).cpu()

    @torch.no_grad()
    def clip_score(self, images: torch.Tensor, texts) -> torch.Tensor:
        """CLIPScore per (image_i, text_i) pair [B]: 100 · max(cos, 0) (Hessel et al. 2021 with w = 100, as
        torchmetrics reports it). Higher = the caption fits the image better."""
        if len(texts) != images.shape[0]:
            raise ValueError(f"clip_score pairs image i with text i: {images.shape[0]} images, {len(texts)} texts")
        cos = (self.encode_image(images) * self.encode_text(texts)).sum(-1)
        return (100 * cos.clamp_min(0)).cpu()


class ClipObjective:
    """What one Trainer step minimises for CLIP: caption the batch (`captions.measure_and_caption`: random
    transformations, measured attributes, templates; held-out combinations never drawn), then the symmetric
    InfoNCE loss of the model's logits. The caption RNG is seeded from the Trainer's noise generator, so a
    resumed run draws the same captions as an uninterrupted one."""

    def __init__(self, allow_held_out: bool = False):
        self.allow_held_out = allow_held_out
        self.last_captions: list[str] = []
        self.last_facts: list[dict] = []

    @property
    def config(self) -> dict:
        return {"objective": "clip", "allow_held_out": self.allow_held_out}

    def __repr__(self) -> str:
        return f"ClipObjective(allow_held_out={self.allow_held_out})"

    def to(self, device=None) -> "ClipObjective":
        return self

    def caption_batch(self, model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        """(transformed images, captions, facts) for a batch of images and labels."""
        from .ema import unwrap_model

        raw = unwrap_model(model)
        thresholds = raw.thresholds
        if thresholds is None:
            raise ValueError("this CLIP has no caption thresholds: call model.set_thresholds("
                             "AttributeThresholds.from_images(train_images)) before training")
        if y is None:
            raise ValueError("CLIP captions need the digits' labels: the dataset has none")
        rng = cap.caption_rng(generator)
        images, texts, facts = cap.measure_and_caption(x.cpu(), y.cpu(), thresholds, rng,
                                                       allow_held_out=self.allow_held_out)
        return images.to(x.device), texts, facts

    def training_losses(self, model, x: torch.Tensor, y=None, generator: torch.Generator | None = None) -> dict:
        from .ema import unwrap_model

        images, texts, facts = self.caption_batch(model, x, y, generator)
        self.last_captions, self.last_facts = texts, facts
        ids = unwrap_model(model).tokenize(texts)
        logits = model(images, ids)
        return {"loss": contrastive_loss(logits.float())}


# -- probing a trained CLIP ----------------------------------------------------------------------------------

# the transformation that shows each value of a transformed attribute (None = the untransformed digit)
_PROBE_TRANSFORMS = {"orientation": (None, "upside_down"), "colours": (None, "inverted"),
                     "position": ("shift_left", "shift_right"), "size": (None, "small")}


def probe_set(model: CLIP, images: torch.Tensor, labels: torch.Tensor, attribute: str, held_out: str = "exclude"):
    """The images an attribute probe is scored on, with the index (0 or 1) of the true value of each:
    (images [M, C, H, W], labels [M], truth [M]).

    Measured attributes (thickness, slant): the digits whose measurement passes one of the thresholds the CLIP
    was trained with (the middle ones have no word). Transformed attributes: every digit shown both ways (e.g.
    upright and upside down). `held_out`: "exclude" drops the (transformation, digit) pairs of
    `captions.HELD_OUT` that training never showed; "only" keeps only those (the compositional test).
    """
    if attribute not in cap.ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}: expected one of {sorted(cap.ATTRIBUTES)}")
    if held_out not in ("exclude", "only"):
        raise ValueError(f"held_out must be 'exclude' or 'only', got {held_out!r}")
    labels = torch.as_tensor(labels).cpu()
    images = images.cpu()
    if attribute in cap.MEASURED:
        if held_out == "only":
            raise ValueError("the held-out combinations are transformations; measured attributes have none")
        thresholds = model.thresholds
        if thresholds is None:
            raise ValueError("this CLIP has no caption thresholds (config['caption_thresholds'])")
        values = [d[attribute] for d in thresholds.describe(images)]
        words = ("thin", "thick") if attribute == "thickness" else ("left", "right")
        keep = torch.tensor([v is not None for v in values], dtype=torch.bool)
        truth = torch.tensor([words.index(v) if v is not None else 0 for v in values])
        return images[keep], labels[keep], truth[keep]
    out_images, out_labels, out_truth = [], [], []
    for value, name in enumerate(_PROBE_TRANSFORMS[attribute]):
        transforms = [(name,) if name else () for _ in range(len(labels))]
        held = torch.tensor([cap.is_held_out(t, int(k)) for t, k in zip(transforms, labels)], dtype=torch.bool)
        if name is None:  # untransformed digits: held-out pairs are those of the other value's transformation
            other = _PROBE_TRANSFORMS[attribute][1 - value]
            held = torch.tensor([cap.is_held_out((other,), int(k)) for k in labels], dtype=torch.bool)
        keep = held if held_out == "only" else ~held
        out_images.append(cap.transform_images(images[keep], [t for t, k in zip(transforms, keep) if k]))
        out_labels.append(labels[keep])
        out_truth.append(torch.full((int(keep.sum()),), value))
    return torch.cat(out_images), torch.cat(out_labels), torch.cat(out_truth)


@torch.no_grad()
def probe_attribute(model: CLIP, images: torch.Tensor, labels, attribute: str, held_out: str = "exclude",
                    batch_size: int = 500) -> dict:
    """How often the CLIP prefers the true one of an attribute's two opposite captions (`captions.
    probe_captions`, e.g. "a thin seven" vs "a thick seven"): {"accuracy", "n"}."""
    images, labels, truth = probe_set(model, images, labels, attribute, held_out)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "n": 0}
    pairs = {k: model.encode_text(list(cap.probe_captions(attribute, k))) for k in range(10)}
    correct = 0
    for start in range(0, len(labels), batch_size):
        img = model.encode_image(images[start:start + batch_size])
        lab = labels[start:start + batch_size]
        txt = torch.stack([pairs[int(k)] for k in lab])  # [b, 2, d]
        choice = (txt @ img[:, :, None]).squeeze(-1).argmax(1).cpu()
        correct += int((choice == truth[start:start + batch_size]).sum())
    return {"accuracy": correct / len(labels), "n": len(labels)}
