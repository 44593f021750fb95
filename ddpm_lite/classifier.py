"""The evaluation classifier: a small CNN trained on real digits that `ddpm_lite.metrics` uses to judge samples.

    DigitsClassifier, MNISTClassifier   the network (8×8 sklearn digits; 28×28 MNIST / Fashion-MNIST)
    CLASSIFIER_PRESETS, build_classifier   an untrained network and its training recipe per dataset
    augment, fit_classifier             training (tools/train_classifier.py is the command line for it)
    save_classifier, load_classifier    its files, in the same layout as every ddpm_lite model: a directory
                                        with config.json + model.safetensors, written atomically by
                                        `checkpoint.save_pretrained` (without a diffusion), never pickled
    classifier_dir                      where the shipped classifiers live: assets/classifiers/<dataset>/

All images follow the package convention: float tensors B×C×H×W in [−1, 1].
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as ckpt
from .models import eval_mode

__all__ = [
    "DigitsClassifier", "MNISTClassifier", "CLASSIFIER_PRESETS", "build_classifier", "augment", "fit_classifier",
    "save_classifier", "load_classifier", "classifier_dir", "ClassifierNotFoundError",
]

_REPO_ROOT = Path(__file__).resolve().parent.parent


class ClassifierNotFoundError(FileNotFoundError):
    """The classifier's weights (config.json + model.safetensors) are not where they were looked for."""


class DigitsClassifier(nn.Module):
    """A small CNN for grey-level digit images in [−1, 1] (8×8 sklearn digits by default, 28×28 MNIST too).

    conv3×3 → ReLU → [max-pool] → conv3×3 → ReLU → [max-pool] → conv3×3 → ReLU → adaptive avg-pool to 2×2
    → linear → ReLU (the `features`, `feature_dim` wide) → dropout → linear (logits).
    A 2×2 max-pool follows the first two convolutions while the feature map is at least 8 pixels wide
    (8×8: 8→4; 28×28: 28→14→7). `features(x)` is the penultimate layer, used by the Fréchet distance and
    precision/recall the way FID uses Inception's pool3 layer (Heusel et al. 2017).
    """

    def __init__(self, image_size: int = 8, in_channels: int = 1, num_classes: int = 10,
                 channels: Sequence[int] = (32, 64, 128), feature_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != 3:
            raise ValueError(f"channels: expected 3 widths (one per convolution), got {channels}")
        if image_size < 4:
            raise ValueError(f"image_size: expected >= 4, got {image_size}")
        self.config = dict(image_size=int(image_size), in_channels=int(in_channels), num_classes=int(num_classes),
                           channels=channels, feature_dim=int(feature_dim), dropout=float(dropout))
        layers: list[nn.Module] = []
        size, c_in = int(image_size), int(in_channels)
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            if i < 2 and size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c
        layers.append(nn.AdaptiveAvgPool2d(2))
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(channels[-1] * 4, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c["in_channels"], c["image_size"], c["image_size"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [B, feature_dim] (after the ReLU) of images B×C×H×W in [−1, 1]."""
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


class MNISTClassifier(DigitsClassifier):
    """The same CNN, sized for 28×28 MNIST / Fashion-MNIST by default."""

    def __init__(self, image_size: int = 28, **kwargs):
        super().__init__(image_size=image_size, **kwargs)


_CLASSES = {"DigitsClassifier": DigitsClassifier, "MNISTClassifier": MNISTClassifier}

CLASSIFIER_PRESETS: dict[str, dict] = {
    "digits": dict(cls="DigitsClassifier", config=dict(image_size=8), shift=1,
                   train=dict(epochs=60, batch_size=128, lr=3e-3, weight_decay=1e-4, noise=0.1)),
    # 4000 training images: more epochs than full MNIST needs (30 epochs gave 96.9% held-out, 80 give 98.1%)
    "mnist5k": dict(cls="MNISTClassifier", config=dict(image_size=28), shift=2,
                    train=dict(epochs=80, batch_size=128, lr=2e-3, weight_decay=1e-4, noise=0.1)),
    "mnist": dict(cls="MNISTClassifier", config=dict(image_size=28), shift=2,
                  train=dict(epochs=4, batch_size=128, lr=2e-3, weight_decay=1e-4, noise=0.1)),
    "fashion_mnist": dict(cls="MNISTClassifier", config=dict(image_size=28), shift=2,
                          train=dict(epochs=8, batch_size=128, lr=2e-3, weight_decay=1e-4, noise=0.1)),
}


def build_classifier(name: str = "digits", **overrides) -> DigitsClassifier:
    """An untrained classifier for a dataset preset ("digits", "mnist", "fashion_mnist")."""
    if name not in CLASSIFIER_PRESETS:
        raise ValueError(f"classifier preset: expected one of {sorted(CLASSIFIER_PRESETS)}, got {name!r}")
    preset = CLASSIFIER_PRESETS[name]
    return _CLASSES[preset["cls"]](**{**preset["config"], **overrides})


def _random_shift(x: torch.Tensor, shift: int, generator: torch.Generator | None) -> torch.Tensor:
    """Translate each image by an independent integer offset in [−shift, shift]² (background −1 fills in)."""
    if shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def augment(x: torch.Tensor, shift: int = 1, noise: float = 0.1, generator: torch.Generator | None = None):
    """Light augmentation so the classifier also reads imperfect generated samples: random shifts of up to
    `shift` pixels and Gaussian noise with a per-image σ drawn uniformly from [0, noise], clipped to [−1, 1]."""
    x = _random_shift(x, shift, generator)
    if noise > 0:
        sigma = torch.rand(x.shape[0], 1, 1, 1, generator=generator).to(x) * noise
        x = (x + sigma * torch.randn(x.shape, generator=generator).to(x)).clamp(-1, 1)
    return x


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    correct = 0
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            correct += int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
    return correct / max(len(images), 1)


def fit_classifier(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 60,
                   batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4, shift: int = 1,
                   noise: float = 0.1, label_smoothing: float = 0.05, seed: int = 0,
                   eval_images: torch.Tensor | None = None, eval_labels: torch.Tensor | None = None,
                   progress: bool = True) -> dict:
    """Train `model` in place with AdamW + cosine LR decay on augmented images (see `augment`).

    Returns a small log: {"epochs", "steps", "train_accuracy", "eval_accuracy" (or None), "loss"}.
    """
    from tqdm.auto import tqdm

    from .metrics import _check_images

    _check_images(images, model, "images")
    labels = torch.as_tensor(labels, dtype=torch.long, device=images.device)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels: expected shape [{images.shape[0]}], got {list(labels.shape)}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    model.train()
    loss_value = float("nan")
    bar = tqdm(range(epochs), desc="classifier", disable=not progress)
    for _ in bar:
        perm = torch.randperm(len(images), generator=gen).to(images.device)
        for i in range(0, len(images), batch_size):
            idx = perm[i:i + batch_size]
            x = augment(images[idx], shift=shift, noise=noise, generator=gen)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    log = {"epochs": epochs, "steps": total, "loss": loss_value,
           "train_accuracy": _accuracy(model, images, labels), "eval_accuracy": None}
    if eval_images is not None:
        log["eval_accuracy"] = _accuracy(model, eval_images.to(images.device),
                                         torch.as_tensor(eval_labels, dtype=torch.long, device=images.device))
    return log


def save_classifier(model: DigitsClassifier, directory: str | os.PathLike, **metadata) -> Path:
    """Write `config.json` + `model.safetensors` into `directory` with `checkpoint.save_pretrained` (no pickle;
    atomic: a crash leaves the previous files intact). `metadata` (dataset, accuracies, the command, ...) must
    be JSON-able; it is stored under "extra" in config.json and comes back as `load_classifier(...).metadata`.
    """
    return ckpt.save_pretrained(directory, model, extra=metadata)


def classifier_dir(name: str = "digits") -> Path:
    """Where the shipped classifier `name` lives: `$DDPM_LITE_ASSETS/classifiers/<name>` if that environment
    variable is set, else `<repo>/assets/classifiers/<name>`."""
    root = Path(os.environ["DDPM_LITE_ASSETS"]) if os.environ.get("DDPM_LITE_ASSETS") else _REPO_ROOT / "assets"
    return root / "classifiers" / name


_CACHE: dict[tuple[str, str], DigitsClassifier] = {}


def _is_old_layout(config_path: Path) -> bool:
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format" not in meta and {"class", "config"} <= set(meta)


def load_classifier(name: str = "digits", device="cpu", path: str | os.PathLike | None = None,
                    cache: bool = True) -> DigitsClassifier:
    """Load a trained classifier (eval mode, gradients off) from `path`, or the shipped one named `name`.

    Safetensors + JSON only, never pickle (`checkpoint.load_model`). Loaded classifiers are cached per
    (directory, device), so calling this in a loop is cheap; pass `cache=False` for a private copy. Raises
    `ClassifierNotFoundError` saying which command makes the weights when they are missing, and
    `checkpoint.CheckpointError` (a ValueError) when the files are damaged or hold another model.
    """
    directory = Path(path) if path is not None else classifier_dir(name)
    device = torch.device(device)
    key = (str(directory.resolve()), str(device))
    if cache and key in _CACHE:
        return _CACHE[key]
    config_path, weights_path = directory / ckpt.CONFIG_NAME, directory / ckpt.WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        dataset = name if path is None else "<dataset>"
        raise ClassifierNotFoundError(
            f"no trained classifier at {directory} (expected {ckpt.CONFIG_NAME} and {ckpt.WEIGHTS_NAME}). "
            f"Make one with: python tools/train_classifier.py --dataset {dataset} --out {directory}")
    try:
        config = ckpt.load_config(directory, diffusion=False)
    except ckpt.CheckpointError as e:
        if _is_old_layout(config_path):
            raise ckpt.CheckpointError(
                f"{directory} holds a classifier in the layout used before ddpm_lite.classifier ({{\"class\", "
                f"\"config\"}} in {ckpt.CONFIG_NAME}), which is no longer read; make it again with: python "
                f"tools/train_classifier.py --dataset {name if path is None else '<dataset>'} --out {directory}"
            ) from None
        raise e
    if config["model_class"] not in _CLASSES:
        raise ckpt.CheckpointError(f"{config_path}: model_class: expected one of {sorted(_CLASSES)}, "
                                   f"got {config['model_class']!r} (not a classifier)")
    model = ckpt.load_model(directory)
    meta = config.get("extra", {})
    model.dataset = meta.get("dataset", name)
    model.metadata = meta
    model.to(device).eval().requires_grad_(False)
    if cache:
        _CACHE[key] = model
    return model
