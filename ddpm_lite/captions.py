"""Captioned digits: every image gets captions built from facts about it, for training CLIP from scratch.

A caption states three kinds of fact, never anything that is not true of the image it describes:

1. **The label**: "seven", "the digit 7".
2. **Attributes measured from the pixels** of the digit as written (before any transformation below):
   - *stroke thickness* ``w = 2·A / P``, with A the ink area and P the length of the ink's boundary (pixels
     over mid-grey; boundary = ink/background edges between 4-neighbours). A stroke of width w and length L
     has A ≈ w·L and P ≈ 2·L, so w is the mean stroke width in pixels, whatever the digit (a "1" has little
     ink but is not thinner for it). Words: "thin" / "thick".
   - *slant* ``s = −μ11 / μ02``, from the ink's central image moments (intensity-weighted, y pointing down):
     the horizontal shift of the ink per row going up, so s > 0 leans to the right (the shear that
     "deskewing" MNIST removes). Words: "slanted to the left" / "slanted to the right".
   Thresholds come from the training data's **quantiles** (`AttributeThresholds.from_images`): the lowest
   third of w is "thin", the highest third "thick", the middle third gets neither word; the lowest fifth of s
   is "slanted to the left", the highest fifth "slanted to the right" (most digits lean right a little).
   They are stored with a trained CLIP, so evaluation uses the thresholds it was trained with.
3. **Transformations applied on the fly** (`transform_images`), each with the words that describe it:
   upside down (rotated 180°), inverted colours ("black on white"), shifted left or right (by a seventh of
   the width), small (shrunk to 60%, centred). The untransformed state has its words too, said now and then
   ("upright", "white on black", "centred", "large"), so every attribute has **two opposite captions** that
   a probe can choose between (`ATTRIBUTES`).

**Held-out combinations** (`HELD_OUT`): a fixed list of (transformation, digit) pairs, such as an upside-down
seven, that `sample_facts` never produces. Every word and every digit is seen in training, only never
together, so a later notebook can ask whether a model composes them.

Templates (`caption`) vary the wording: "a thick upside-down seven", "the digit 7, thin, slanted to the
right", "a handwritten three with thin strokes, black on white". Every word they use is in `VOCAB`, the
tokenizer's vocabulary (`ddpm_lite.tokenizer`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# attribute -> (its two opposite values, as the caption words of each)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "thickness": ("thin", "thick"),  # measured
    "slant": ("slanted to the left", "slanted to the right"),  # measured
    "orientation": ("upright", "upside-down"),  # transformation: rotated by 180°
    "colours": ("white on black", "black on white"),  # transformation: inverted
    "position": ("shifted to the left", "shifted to the right"),  # transformation: shifted
    "size": ("large", "small"),  # transformation: shrunk
}
MEASURED = ("thickness", "slant")
TRANSFORMS = ("upside_down", "inverted", "shift_left", "shift_right", "small")

# (transformation, digit) pairs never produced for training (the compositional-generalisation test set)
HELD_OUT: tuple[tuple[str, int], ...] = (("upside_down", 7), ("inverted", 3), ("small", 5))

# probability of each transformation per training image (shift: left or right, each half of it); of stating
# a measured attribute that holds; of stating the untransformed state's word ("upright", "large", ...)
TRANSFORM_PROB = {"upside_down": 0.15, "inverted": 0.15, "shift": 0.2, "small": 0.15}
SAY_MEASURED_PROB = 0.7
SAY_DEFAULT_PROB = 0.2
SMALL_SCALE = 0.6
THICKNESS_QUANTILES = (1 / 3, 2 / 3)  # see AttributeThresholds
SLANT_QUANTILES = (0.2, 0.8)
ZERO_SHOT_TEMPLATES = ("a {}", "a handwritten {}", "the digit {}")

_TEMPLATE_WORDS = "a an the digit handwritten with strokes ,".split()
VOCAB: tuple[str, ...] = tuple(dict.fromkeys(
    _TEMPLATE_WORDS + list(NUMBER_WORDS) + [str(k) for k in range(10)]
    + [word for pair in ATTRIBUTES.values() for phrase in pair for word in phrase.split()]
    + ["centred"]))


# -- measuring ---------------------------------------------------------------------------------------------

def _ink(images: torch.Tensor) -> torch.Tensor:
    """Ink intensity in [0, 1] from images in [-1, 1] (white digits on black, as MNIST): [B, H, W]."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected grey images [B, 1, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    return ((images[:, 0].float() + 1) / 2).clamp(0, 1)


def stroke_thickness(images: torch.Tensor) -> torch.Tensor:
    """Mean stroke width in pixels, w = 2·A / P ([B]): A = ink pixels (> mid-grey), P = ink/background edges
    between 4-neighbours, counting the image border as background. 0 for an empty image."""
    ink = (_ink(images) > 0.5).float()
    padded = F.pad(ink, (1, 1, 1, 1))
    edges = (padded[:, 1:, :] - padded[:, :-1, :]).abs().sum((1, 2)) + (padded[:, :, 1:] - padded[:, :, :-1]).abs().sum((1, 2))
    area = ink.sum((1, 2))
    return torch.where(edges > 0, 2 * area / edges.clamp_min(1), torch.zeros_like(area))


def slant(images: torch.Tensor) -> torch.Tensor:
    """Slant s = −μ11 / μ02 of the ink ([B]; central moments weighted by ink intensity, y pointing down): the
    ink's horizontal shift per row upwards; > 0 leans right. 0 for an empty image."""
    ink = _ink(images).double()
    B, H, W = ink.shape
    ys = torch.arange(H, dtype=ink.dtype).view(1, H, 1)
    xs = torch.arange(W, dtype=ink.dtype).view(1, 1, W)
    mass = ink.sum((1, 2)).clamp_min(1e-12)
    my = (ink * ys).sum((1, 2)) / mass
    mx = (ink * xs).sum((1, 2)) / mass
    dy, dx = ys - my.view(B, 1, 1), xs - mx.view(B, 1, 1)
    mu11 = (ink * dx * dy).sum((1, 2)) / mass
    mu02 = (ink * dy * dy).sum((1, 2)) / mass
    return torch.where(mu02 > 1e-9, -mu11 / mu02.clamp_min(1e-9), torch.zeros_like(mu02)).float()


@dataclass(frozen=True)
class AttributeThresholds:
    """Below `thin` a digit is "thin", above `thick` "thick"; below `left` "slanted to the left", above
    `right` "slanted to the right". From the data's quantiles (`from_images`): thickness at 1/3 and 2/3 (a
    third of the digits each way); slant at 0.2 and 0.8, because most handwritten digits lean right (the median
    of s is about 0.14 on mnist5k), so only the outer fifths truly lean left or clearly right."""

    thin: float
    thick: float
    left: float
    right: float

    @classmethod
    def from_images(cls, images: torch.Tensor, thickness_quantiles=THICKNESS_QUANTILES,
                    slant_quantiles=SLANT_QUANTILES) -> "AttributeThresholds":
        for q in (thickness_quantiles, slant_quantiles):
            if not 0 < q[0] < q[1] < 1:
                raise ValueError(f"quantiles must satisfy 0 < low < high < 1, got {q}")
        w = torch.quantile(stroke_thickness(images), torch.tensor(thickness_quantiles)).tolist()
        s = torch.quantile(slant(images), torch.tensor(slant_quantiles)).tolist()
        return cls(thin=w[0], thick=w[1], left=s[0], right=s[1])

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, images: torch.Tensor) -> list[dict]:
        """Measured attributes per image: {"thickness": "thin"/"thick"/None, "slant": "left"/"right"/None}."""
        w, s = stroke_thickness(images).tolist(), slant(images).tolist()
        out = []
        for wi, si in zip(w, s):
            out.append({"thickness": "thin" if wi < self.thin else "thick" if wi > self.thick else None,
                        "slant": "left" if si < self.left else "right" if si > self.right else None})
        return out


# -- transformations ---------------------------------------------------------------------------------------

def shift_pixels(width: int) -> int:
    """How far "shifted left/right" moves a digit: a seventh of the width (4 px at 28, 1 px at 8)."""
    return max(1, width // 7)


def _shift(x: torch.Tensor, dx: int) -> torch.Tensor:
    out = torch.full_like(x, -1.0)
    if dx > 0:
        out[..., dx:] = x[..., :-dx]
    else:
        out[..., :dx] = x[..., -dx:]
    return out


def _shrink(x: torch.Tensor) -> torch.Tensor:
    H, W = x.shape[-2:]
    h, w = max(1, round(H * SMALL_SCALE)), max(1, round(W * SMALL_SCALE))
    small = F.interpolate(x, size=(h, w), mode="area")
    out = torch.full_like(x, -1.0)
    top, left = (H - h) // 2, (W - w) // 2
    out[..., top:top + h, left:left + w] = small
    return out


def transform_images(images: torch.Tensor, transforms: list[tuple[str, ...]] | list[str]) -> torch.Tensor:
    """Apply per image the named transformations (a tuple of `TRANSFORMS` names, or one name, per image), in
    the fixed order small → shift → upside down → inverted. Images are [B, 1, H, W] in [-1, 1]."""
    if len(transforms) != images.shape[0]:
        raise ValueError(f"one tuple of transformations per image: {images.shape[0]} images, {len(transforms)} tuples")
    dx = shift_pixels(images.shape[-1])
    out = images.clone()
    for i, names in enumerate(transforms):
        names = (names,) if isinstance(names, str) else tuple(names)
        unknown = set(names) - set(TRANSFORMS)
        if unknown:
            raise ValueError(f"unknown transformations {sorted(unknown)}: expected names from {TRANSFORMS}")
        if "shift_left" in names and "shift_right" in names:
            raise ValueError("an image cannot be shifted both left and right")
        x = out[i:i + 1]
        if "small" in names:
            x = _shrink(x)
        if "shift_left" in names:
            x = _shift(x, -dx)
        if "shift_right" in names:
            x = _shift(x, dx)
        if "upside_down" in names:
            x = x.flip(-1).flip(-2)
        if "inverted" in names:
            x = -x
        out[i:i + 1] = x
    return out


# -- facts and captions ------------------------------------------------------------------------------------

def caption_rng(generator: torch.Generator | None = None) -> random.Random:
    """A Python RNG for one batch's captions, seeded from a torch generator (the Trainer's noise generator), so
    a resumed run draws the same captions as an uninterrupted one."""
    device = generator.device if generator is not None else None
    return random.Random(int(torch.randint(0, 2**62, (1,), generator=generator, device=device)))


def is_held_out(transforms, label: int) -> bool:
    """True if (some transformation of `transforms`, label) is one of `HELD_OUT`."""
    return any((t, int(label)) in HELD_OUT for t in transforms)


def check_transforms(names) -> tuple[str, ...]:
    """`names` (an iterable of `TRANSFORMS` names, or None for all of them) as a tuple, checked."""
    names = TRANSFORMS if names is None else tuple(names)
    unknown = sorted(set(names) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown transformations {unknown}: expected names from {', '.join(TRANSFORMS)}")
    return names


def sample_transforms(labels, rng: random.Random, allow_held_out: bool = False,
                      allowed=None) -> list[tuple[str, ...]]:
    """Random transformations per label (`TRANSFORM_PROB`); a held-out combination is dropped (the digit keeps
    its other transformations) unless `allow_held_out`; transformations outside `allowed` (default: all) are
    dropped too (e.g. no inversion for a latent model whose autoencoder never saw inverted digits)."""
    allowed = check_transforms(allowed)
    out = []
    for label in labels:
        names = []
        if rng.random() < TRANSFORM_PROB["small"]:
            names.append("small")
        if rng.random() < TRANSFORM_PROB["shift"]:
            names.append(rng.choice(("shift_left", "shift_right")))
        if rng.random() < TRANSFORM_PROB["upside_down"]:
            names.append("upside_down")
        if rng.random() < TRANSFORM_PROB["inverted"]:
            names.append("inverted")
        if not allow_held_out:
            names = [t for t in names if (t, int(label)) not in HELD_OUT]
        names = [t for t in names if t in allowed]
        out.append(tuple(names))
    return out


def facts_for(labels, measured: list[dict], transforms: list[tuple[str, ...]]) -> list[dict]:
    """One fact dict per image: label, measured attributes, and the value of every transformed attribute."""
    facts = []
    for label, m, names in zip(labels, measured, transforms):
        facts.append({
            "label": int(label),
            "thickness": m["thickness"],
            "slant": m["slant"],
            "orientation": "upside-down" if "upside_down" in names else "upright",
            "colours": "black on white" if "inverted" in names else "white on black",
            "position": "left" if "shift_left" in names else "right" if "shift_right" in names else "centred",
            "size": "small" if "small" in names else "large",
            "transforms": tuple(names),
        })
    return facts


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" and word != "one" else "a"


def caption(facts: dict, rng: random.Random) -> str:
    """A caption for one fact dict (see `facts_for`), in a random template and wording.

    Always says the digit and every transformation applied; says each measured attribute with probability
    `SAY_MEASURED_PROB` and each untransformed state ("upright", ...) with probability `SAY_DEFAULT_PROB`.
    """
    k = facts["label"]
    numeral_form = rng.random() < 0.5
    phrases = []  # after the noun (", slanted to the right"); adjectives go before it ("a small thick seven")
    size = facts["size"] if facts["size"] == "small" or rng.random() < SAY_DEFAULT_PROB else None
    thickness = facts["thickness"] if facts["thickness"] and rng.random() < SAY_MEASURED_PROB else None
    orientation = (facts["orientation"] if facts["orientation"] == "upside-down" or rng.random() < SAY_DEFAULT_PROB
                   else None)
    if facts["colours"] == "black on white" or rng.random() < SAY_DEFAULT_PROB:
        phrases.append(facts["colours"])
    if facts["slant"] and rng.random() < SAY_MEASURED_PROB:
        phrases.append(f"slanted to the {facts['slant']}")
    if facts["position"] != "centred":
        phrases.append(f"shifted to the {facts['position']}")
    elif rng.random() < SAY_DEFAULT_PROB:
        phrases.append("centred")
    rng.shuffle(phrases)

    template = rng.randrange(3)
    name = NUMBER_WORDS[k]
    if template == 0:  # "a small thick upside-down seven, slanted to the right"
        words = [w for w in (size, thickness, orientation) if w] + [name]
        head = f"{_article(words[0])} {' '.join(words)}"
    elif template == 1:  # "the digit 7, small, thick, upside-down, ..."
        head = f"the digit {k if numeral_form else name}"
        phrases = [w for w in (size, thickness, orientation) if w] + phrases
    else:  # "a handwritten small upside-down seven with thick strokes, ..."
        words = ["handwritten"] + [w for w in (size, orientation) if w] + [name]
        head = f"a {' '.join(words)}"
        if thickness:
            head += f" with {thickness} strokes"
    return ", ".join([head] + phrases)


def measure_and_caption(images: torch.Tensor, labels, thresholds: AttributeThresholds, rng: random.Random,
                        allow_held_out: bool = False, allowed=None) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Training-time captioning of a batch: draw transformations (from `allowed`, default all), measure the
    digits as written, transform, caption. Returns (transformed images, captions, facts)."""
    labels = [int(v) for v in (labels.tolist() if torch.is_tensor(labels) else labels)]
    transforms = sample_transforms(labels, rng, allow_held_out=allow_held_out, allowed=allowed)
    facts = facts_for(labels, thresholds.describe(images), transforms)
    return transform_images(images, transforms), [caption(f, rng) for f in facts], facts


def probe_captions(attribute: str, label: int) -> tuple[str, str]:
    """The two opposite captions of `attribute` for a digit, e.g. ("a thin seven", "a thick seven"), as a
    probe chooses between them."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}: expected one of {sorted(ATTRIBUTES)}")
    name = NUMBER_WORDS[label]
    a, b = ATTRIBUTES[attribute]
    if attribute in ("thickness", "orientation", "size"):
        return f"{_article(a)} {a} {name}", f"{_article(b)} {b} {name}"
    return f"{_article(name)} {name}, {a}", f"{_article(name)} {name}, {b}"
