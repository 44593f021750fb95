"""Measuring generated samples: a digits classifier, sample accuracy, Fréchet distance, precision/recall, bits/dim.

What is here, and what each number means:

    DigitsClassifier, load_classifier   a small CNN trained on real 8×8 digits (weights ship in
                                        assets/classifiers/digits/, made by tools/train_classifier.py)
    classify, sample_accuracy           "does a sample of class 3 look like a 3?" (class-conditional models)
    frechet_distance(_from_stats)       the Fréchet (2-Wasserstein) distance between Gaussians fitted to two
                                        feature sets (Dowson & Landau 1982; as used by FID, Heusel et al. 2017)
    feature_frechet_distance            FD in the *digits classifier's* feature space. This is NOT FID: FID uses
                                        Inception-v3 features of ImageNet-sized RGB images. Numbers here are only
                                        comparable with each other (same classifier, same sample sizes)
    real_floor                          FD between two disjoint halves of real data: the value a perfect
                                        generator would get at that sample size (FD is biased upwards for finite n)
    precision_recall                    k-NN manifold precision and recall (Kynkäänniemi et al. 2019)
    bits_per_dim                        the variational bound −log p(x) in bits/dim (Ho et al. 2020, §4.2)
    fid_inception                       real FID, only if torchmetrics / torch-fidelity *and* the Inception
                                        weights (downloaded from the internet) are available
    evaluate_samples                    accuracy, FD, its real-data floor, precision, recall, in one dict

All images follow the package convention: float tensors B×C×H×W in [−1, 1].
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import model_device
from .models import eval_mode

__all__ = [
    "DigitsClassifier", "MNISTClassifier", "CLASSIFIER_PRESETS", "build_classifier", "fit_classifier",
    "save_classifier", "load_classifier", "classifier_dir", "ClassifierNotFoundError", "MetricUnavailableError",
    "classify", "extract_features", "sample_accuracy", "per_class_accuracy",
    "frechet_distance", "frechet_distance_from_stats", "feature_statistics", "feature_frechet_distance",
    "real_floor", "PrecisionRecall", "precision_recall", "bits_per_dim", "fid_inception", "evaluate_samples",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_REPO_ROOT = Path(__file__).resolve().parent.parent


class ClassifierNotFoundError(FileNotFoundError):
    """The classifier's weights (config.json + model.safetensors) are not where they were looked for."""


class MetricUnavailableError(RuntimeError):
    """A metric needs something this machine does not have (a package, downloaded weights)."""


# -- the classifier ------------------------------------------------------------------------------------------


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
            loss_value = float(loss)
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    log = {"epochs": epochs, "steps": total, "loss": loss_value,
           "train_accuracy": _accuracy(model, images, labels), "eval_accuracy": None}
    if eval_images is not None:
        log["eval_accuracy"] = _accuracy(model, eval_images.to(images.device),
                                         torch.as_tensor(eval_labels, dtype=torch.long, device=images.device))
    return log


def save_classifier(model: DigitsClassifier, directory: str | os.PathLike, **metadata) -> Path:
    """Write `config.json` (class, config, `metadata`) and `model.safetensors` into `directory` (no pickle).

    Each file is written to a temporary name and renamed into place, so a crash leaves the old files intact.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = directory / f".tmp-{WEIGHTS_NAME}-{os.getpid()}"
    save_file(state, str(tmp), metadata={"format": "ddpm_lite.classifier"})
    os.replace(tmp, directory / WEIGHTS_NAME)
    config = {"class": type(model).__name__, "config": model.config, **metadata}
    tmp = directory / f".tmp-{CONFIG_NAME}-{os.getpid()}"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, directory / CONFIG_NAME)
    return directory


def classifier_dir(name: str = "digits") -> Path:
    """Where the shipped classifier `name` lives: `$DDPM_LITE_ASSETS/classifiers/<name>` if that environment
    variable is set, else `<repo>/assets/classifiers/<name>`."""
    root = Path(os.environ["DDPM_LITE_ASSETS"]) if os.environ.get("DDPM_LITE_ASSETS") else _REPO_ROOT / "assets"
    return root / "classifiers" / name


_CACHE: dict[tuple[str, str], DigitsClassifier] = {}


def load_classifier(name: str = "digits", device="cpu", path: str | os.PathLike | None = None,
                    cache: bool = True) -> DigitsClassifier:
    """Load a trained classifier (eval mode, gradients off) from `path`, or the shipped one named `name`.

    Safetensors + JSON only, never pickle. Loaded classifiers are cached per (directory, device), so calling
    this in a loop is cheap; pass `cache=False` for a private copy. Raises `ClassifierNotFoundError` saying
    which command makes the weights when they are missing.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path) if path is not None else classifier_dir(name)
    device = torch.device(device)
    key = (str(directory.resolve()), str(device))
    if cache and key in _CACHE:
        return _CACHE[key]
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        dataset = name if path is None else "<dataset>"
        raise ClassifierNotFoundError(
            f"no trained classifier at {directory} (expected {CONFIG_NAME} and {WEIGHTS_NAME}). "
            f"Make one with: python tools/train_classifier.py --dataset {dataset} --out {directory}")
    meta = json.loads(config_path.read_text())
    cls_name = meta.get("class")
    if cls_name not in _CLASSES:
        raise ValueError(f"{config_path}: class: expected one of {sorted(_CLASSES)}, got {cls_name!r}")
    model = _CLASSES[cls_name](**meta["config"])
    try:
        state = load_file(str(weights_path))
    except SafetensorError as e:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not match the classifier described in {config_path}: {e}") from e
    model.dataset = meta.get("dataset", name)
    model.metadata = meta
    model.to(device).eval().requires_grad_(False)
    if cache:
        _CACHE[key] = model
    return model


# -- classifying samples ---------------------------------------------------------------------------------------


def _check_images(images, classifier: nn.Module, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    expected = tuple(getattr(classifier, "image_shape", ()))
    if images.dim() != 4 or (expected and tuple(images.shape[1:]) != expected):
        want = "B×" + "×".join(map(str, expected)) if expected else "B×C×H×W"
        raise ValueError(f"{name}: expected a float tensor {want} in [-1, 1], got shape {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got 0")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: expected finite values in [-1, 1], got NaN/inf (did sampling diverge?)")
    lo, hi = float(images.min()), float(images.max())
    if hi > 2.0 or lo < -2.0:
        raise ValueError(f"{name}: expected values in [-1, 1], got range [{lo:.3g}, {hi:.3g}] "
                         "(images in [0, 255]? map them with x / 127.5 - 1)")
    return images


def resolve_classifier(classifier=None, like: torch.Tensor | None = None, image_shape=None) -> DigitsClassifier | None:
    """The classifier a caller means: a module as it is; None or a name loads the shipped one (default
    "digits") onto `like`'s device (CPU without `like`); "auto" loads the shipped digits classifier when
    `image_shape` is 1×8×8 and the weights exist, and is None otherwise (no classifier fits)."""
    if isinstance(classifier, str) and classifier == "auto":
        if image_shape is None or tuple(image_shape) != (1, 8, 8):
            return None
        try:
            return resolve_classifier("digits", like)
        except (FileNotFoundError, ValueError):
            return None
    if classifier is None or isinstance(classifier, str):
        device = like.device if isinstance(like, torch.Tensor) else "cpu"
        return load_classifier(classifier or "digits", device=device)
    return classifier


_resolve = resolve_classifier


@torch.no_grad()
def _batched(fn, classifier: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = model_device(classifier)
    with eval_mode(classifier):
        out = [fn(images[i:i + batch_size].to(device=device, dtype=torch.float32).clamp(-1, 1))
               for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def classify(images, classifier=None, batch_size: int = 1024, return_probs: bool = False):
    """Predicted class per image: a long tensor [B] (on the images' device); with `return_probs` also the
    softmax probabilities [B, num_classes]. Images are clipped to [−1, 1] first, as a sampler would."""
    classifier = _resolve(classifier, images)
    images = _check_images(images, classifier)
    logits = _batched(classifier, classifier, images, batch_size)
    labels = logits.argmax(1).to(images.device)
    return (labels, logits.softmax(1).to(images.device)) if return_probs else labels


def extract_features(images, classifier=None, batch_size: int = 1024) -> torch.Tensor:
    """The classifier's penultimate features of each image, float64 [B, feature_dim] on the CPU."""
    classifier = _resolve(classifier, images)
    images = _check_images(images, classifier)
    return _batched(classifier.features, classifier, images, batch_size).to("cpu", torch.float64)


def _labels_like(labels, n: int, name: str = "labels") -> torch.Tensor:
    if isinstance(labels, int):
        return torch.full((n,), labels, dtype=torch.long)
    labels = torch.as_tensor(labels).to("cpu")
    if labels.is_floating_point() or labels.shape != (n,):
        raise ValueError(f"{name}: expected {n} integer class labels (shape [{n}]) or one int, "
                         f"got dtype {labels.dtype}, shape {list(labels.shape)}")
    return labels.long()


def sample_accuracy(images, labels, classifier=None, batch_size: int = 1024) -> float:
    """The fraction of samples the classifier assigns to the class they were generated for.

    `labels` are the intended classes (the `y` given to a class-conditional sampler): a tensor [B] or one int.
    A measure of class-conditioning fidelity, in the spirit of the "classification accuracy score" idea
    (Ravuri & Vinyals 2019) but read the other way round: a real-data classifier judges generated samples.
    """
    classifier = _resolve(classifier, images)
    predicted = classify(images, classifier, batch_size).to("cpu")
    labels = _labels_like(labels, predicted.shape[0])
    return float((predicted == labels).double().mean())


def per_class_accuracy(images, labels, classifier=None, batch_size: int = 1024) -> torch.Tensor:
    """`sample_accuracy` per intended class: float64 [num_classes], NaN for classes with no samples."""
    classifier = _resolve(classifier, images)
    predicted = classify(images, classifier, batch_size).to("cpu")
    labels = _labels_like(labels, predicted.shape[0])
    k = classifier.config["num_classes"]
    hits = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, (predicted == labels).double())
    counts = torch.bincount(labels, minlength=k).double()
    return torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(hits, float("nan")))


# -- Fréchet distance ------------------------------------------------------------------------------------------


def _as_float64(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return x.detach().to("cpu", torch.float64)


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix via eigh (negative round-off
    eigenvalues clipped to 0)."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Dowson & Landau 1982), in float64:

        d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}).

    Σ₁Σ₂ is not symmetric, so rather than a general `sqrtm` (scipy, as in Heusel et al.'s FID code) we use
    that Σ₁Σ₂ is similar to the symmetric PSD matrix M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}: both have the same eigenvalues,
    so Tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(M), computed with two symmetric `eigh`s. This stays stable for singular
    covariances (fewer samples than dimensions), where the classic sqrtm needs an εI fix-up.
    """
    mu1, mu2 = _as_float64(mu1, "mu1").reshape(-1), _as_float64(mu2, "mu2").reshape(-1)
    s1, s2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    d = mu1.shape[0]
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name}: expected a {d}×{d} covariance matrix, got shape {list(s.shape)}")
    if mu2.shape != (d,):
        raise ValueError(f"mu2: expected shape [{d}] like mu1, got {list(mu2.shape)}")
    root1 = _sqrtm_psd(s1)
    m = root1 @ s2 @ root1
    eig = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp(min=0)
    fd = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * eig.sqrt().sum())
    return max(fd, 0.0)  # tiny negative values are round-off


def feature_statistics(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N ≥ 2."""
    x = _as_float64(feats, "feats")
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"feats: expected a matrix [N, D] with N >= 2, got shape {list(x.shape)}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N_a, D] and [N_b, D].

    With real features and Inception-v3 pool3 features this is FID (Heusel et al. 2017). It is biased upwards
    for finite N (Chong & Forsyth 2020), so compare numbers only at equal sample sizes, next to `real_floor`.
    """
    a, b = _as_float64(feats_a, "feats_a"), _as_float64(feats_b, "feats_b")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a, feats_b: expected matrices [N, D] with the same D, "
                         f"got shapes {list(a.shape)} and {list(b.shape)}")
    return frechet_distance_from_stats(*feature_statistics(a), *feature_statistics(b))


def feature_frechet_distance(images_a, images_b, classifier=None, batch_size: int = 1024) -> float:
    """Fréchet distance in the digits classifier's feature space ("FD", not FID).

    Same formula as FID but on the `features` of our small classifier instead of Inception-v3: numbers are
    comparable across models evaluated with the same classifier and sample sizes, not with published FIDs.
    """
    classifier = _resolve(classifier, images_a)
    return frechet_distance(extract_features(images_a, classifier, batch_size),
                            extract_features(images_b, classifier, batch_size))


def _real_images(classifier, split: str = "train") -> torch.Tensor:
    from .data import load_dataset

    name = getattr(classifier, "dataset", "digits")
    return torch.as_tensor(load_dataset(name, split=split).images, dtype=torch.float32)


def real_floor(n: int | None = None, real_images=None, classifier=None, seed: int = 0,
               split: str = "train") -> float:
    """FD between two disjoint random halves of real data, `n` images each (default: as many as fit).

    A perfect generator cannot beat this at that sample size: print it beside a model's FD. `real_images`
    default to the classifier's dataset (`split`, the training split by default).
    """
    classifier = _resolve(classifier, real_images)
    if real_images is None:
        real_images = _real_images(classifier, split)
    real_images = _check_images(real_images, classifier, "real_images")
    total = real_images.shape[0]
    n = total // 2 if n is None else int(n)
    if n < 2 or 2 * n > total:
        raise ValueError(f"n: expected 2 <= n <= {total // 2} (two disjoint halves of {total} real images), got {n}")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    feats = extract_features(real_images[perm[:2 * n]], classifier)
    return frechet_distance(feats[:n], feats[n:])


# -- precision and recall --------------------------------------------------------------------------------------


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    out = []
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i:i + chunk], x)
        # the k+1-th smallest includes the point itself at distance 0
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of `points` inside at least one ball B(centre_j, radius_j)."""
    inside = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i:i + chunk], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real_feats, fake_feats, k: int = 3, chunk: int = 1024) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
    Assessing Generative Models").

    Each set approximates its manifold by the union of balls around its points, of radius the distance to the
    point's k-th nearest neighbour in the same set. precision = fraction of fake points inside the real
    manifold (quality); recall = fraction of real points inside the fake manifold (coverage / diversity).
    Both in [0, 1]; compare at equal sample sizes (the paper uses k = 3).
    """
    real, fake = _as_float64(real_feats, "real_feats"), _as_float64(fake_feats, "fake_feats")
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_feats, fake_feats: expected matrices [N, D] with the same D, "
                         f"got shapes {list(real.shape)} and {list(fake.shape)}")
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k: expected 1 <= k < min(N_real, N_fake) = {min(real.shape[0], fake.shape[0])}, got {k}")
    real_radii = _kth_nn_radius(real, k, chunk)
    fake_radii = _kth_nn_radius(fake, k, chunk)
    return PrecisionRecall(precision=_coverage(fake, real, real_radii, chunk),
                           recall=_coverage(real, fake, fake_radii, chunk))


# -- bits per dimension ----------------------------------------------------------------------------------------


@torch.no_grad()
def bits_per_dim(model, diffusion, images, labels=None, batch_size: int = 256, timesteps: int | None = None,
                 clip_denoised: bool = True, generator: torch.Generator | None = None, progress: bool = True,
                 return_all: bool = False):
    """Negative log-likelihood bound in bits/dim, averaged over `images` (Ho et al. 2020, eq. 5 and §4.2):

        L = L_T + Σ_{t>1} L_{t−1} + L_0,   bits/dim = L / (D · ln 2).

    `timesteps=None` evaluates every term (`diffusion.calc_bpd_loop`: T model calls per batch). An int K
    estimates the sum from K timesteps instead: L_0 exactly, plus one random t from each of K−1 equal strata of
    the other T−1 steps weighted by the stratum size (an unbiased, stratified Monte-Carlo estimate; much faster
    on a CPU, noisier). `labels` are passed as `y` (None: the null class for a class-conditional model).
    Returns the mean bits/dim (float), or with `return_all` the per-image tensor [N].
    """
    from tqdm.auto import tqdm

    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError(f"images: expected a float tensor B×C×H×W in [-1, 1], got {type(images).__name__}")
    n, num_t = images.shape[0], diffusion.num_timesteps
    if labels is not None:
        labels = _labels_like(labels, n)
    if timesteps is not None and not 2 <= int(timesteps) <= num_t:
        raise ValueError(f"timesteps: expected None (all) or an int in [2, {num_t}], got {timesteps}")
    device = model_device(model, default=images.device)
    results = []
    with eval_mode(model):
        for i in tqdm(range(0, n, batch_size), desc="bits/dim", disable=not progress):
            x0 = images[i:i + batch_size].to(device)
            y = labels[i:i + batch_size].to(device) if labels is not None else None
            if timesteps is None:
                total = diffusion.calc_bpd_loop(model, x0, y=y, clip_denoised=clip_denoised,
                                                generator=generator)["total_bpd"]
            else:
                total = _bpd_stratified(model, diffusion, x0, y, int(timesteps), clip_denoised, generator)
            results.append(total.detach().to("cpu", torch.float64))
    per_image = torch.cat(results)
    return per_image if return_all else float(per_image.mean())


def _bpd_stratified(model, diffusion, x0, y, k: int, clip_denoised: bool, generator) -> torch.Tensor:
    b, num_t = x0.shape[0], diffusion.num_timesteps
    total = diffusion.prior_bpd(x0).double()
    edges = torch.linspace(1, num_t, k).round().long().tolist()  # k−1 strata covering [1, T)
    points = [(0, 1.0)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            t = lo + int(torch.randint(0, hi - lo, (1,), generator=generator))
            points.append((t, float(hi - lo)))
    for t, weight in points:
        tt = torch.full((b,), t, dtype=torch.long, device=x0.device)
        xt = diffusion.q_sample(x0, tt, generator=generator)
        total = total + weight * diffusion.vb_terms_bpd(model, x0, xt, tt, y, clip_denoised)["output"].double()
    return total


# -- FID with Inception-v3 (optional) --------------------------------------------------------------------------


def _to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def fid_inception(images_a, images_b, device="cpu", batch_size: int = 64) -> float:
    """The real FID (Heusel et al. 2017): Fréchet distance of Inception-v3 pool3 features (2048-d).

    Uses torchmetrics (`FrechetInceptionDistance`) or torch-fidelity when installed; both need the Inception
    weights, which they download from the internet on first use. Grey images are repeated to 3 channels and
    resized to 299×299 by the backend. Meaningful only with thousands of samples (≥ 10k in the literature).
    Raises `MetricUnavailableError` when no backend or no weights are available: offline, use
    `feature_frechet_distance` (FD in the digits classifier's feature space) instead.
    """
    for name, x in (("images_a", images_a), ("images_b", images_b)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a float tensor B×1×H×W or B×3×H×W in [-1, 1], got {shape}")
    hint = ("FID needs Inception-v3 weights, downloaded from the internet by torchmetrics or torch-fidelity; "
            "offline, use ddpm_lite.metrics.feature_frechet_distance (Fréchet distance in the digits "
            "classifier's feature space) instead.")
    errors = []
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except Exception as e:  # ImportError, or torchmetrics installed without torch-fidelity
        errors.append(f"torchmetrics: {e}")
    else:
        try:
            fid = FrechetInceptionDistance(feature=2048).to(device)
            for x, real in ((images_a, True), (images_b, False)):
                for i in range(0, x.shape[0], batch_size):
                    fid.update(_to_uint8_rgb(x[i:i + batch_size]).to(device), real=real)
            return float(fid.compute())
        except Exception as e:  # weights not downloadable, ...
            errors.append(f"torchmetrics: {type(e).__name__}: {e}")
    try:
        import torch_fidelity
    except Exception as e:
        errors.append(f"torch-fidelity: {e}")
    else:
        try:
            class _Images(torch.utils.data.Dataset):
                def __init__(self, x):
                    self.x = _to_uint8_rgb(x)

                def __len__(self):
                    return self.x.shape[0]

                def __getitem__(self, i):
                    return self.x[i]

            out = torch_fidelity.calculate_metrics(
                input1=_Images(images_a), input2=_Images(images_b), fid=True, batch_size=batch_size,
                cuda=torch.device(device).type == "cuda", verbose=False)
            return float(out["frechet_inception_distance"])
        except Exception as e:
            errors.append(f"torch-fidelity: {type(e).__name__}: {e}")
    raise MetricUnavailableError(f"FID with Inception-v3 is unavailable here ({'; '.join(errors)}). {hint}")


# -- everything at once ------------------------------------------------------------------------------------------


def evaluate_samples(images, labels=None, real_images=None, classifier=None, k: int = 3, seed: int = 0) -> dict:
    """Accuracy, FD, its real-data floor, precision and recall of generated `images` in one dict.

    The real images (default: the classifier dataset's training split) are split at random into two disjoint
    halves A and B. fd = FD(samples, A) and precision/recall are against A; fd_real_floor = FD(B', A) where B'
    is B cut to the number of samples, so both FDs carry a similar finite-sample bias (the floor is what a
    perfect generator would score). `labels` are the intended classes (None for an unconditional model:
    accuracy is then NaN). FD is in the digits classifier's feature space, not FID.

    Returns {"accuracy", "fd", "fd_real_floor", "precision", "recall", "n_samples", "n_real"}.
    """
    classifier = _resolve(classifier, images)
    images = _check_images(images, classifier)
    if real_images is None:
        real_images = _real_images(classifier)
    real_images = _check_images(real_images, classifier, "real_images")
    perm = torch.randperm(real_images.shape[0], generator=torch.Generator().manual_seed(seed))
    half = real_images.shape[0] // 2
    if half < 2:
        raise ValueError(f"real_images: expected at least 4 images, got {real_images.shape[0]}")
    feats = extract_features(images, classifier)
    real_feats = extract_features(real_images, classifier)[perm]
    feats_a, feats_b = real_feats[:half], real_feats[half:2 * half]
    n_floor = min(feats.shape[0], half)
    if feats.shape[0] > half:
        warnings.warn(f"{feats.shape[0]} samples but only {half} real images per half: fd_real_floor uses "
                      f"{half} and is biased higher than fd at equal quality", stacklevel=2)
    accuracy = float("nan") if labels is None else sample_accuracy(images, labels, classifier)
    pr = precision_recall(feats_a, feats, k=k)
    return {
        "accuracy": accuracy,
        "fd": frechet_distance(feats, feats_a),
        "fd_real_floor": frechet_distance(feats_b[:n_floor], feats_a),
        "precision": pr.precision,
        "recall": pr.recall,
        "n_samples": int(feats.shape[0]),
        "n_real": int(half),
    }


# -- within-class spread (notebook 07) ------------------------------


def within_class_spread(features, labels) -> float:
    """Diversity within classes: the mean over classes c of tr Cov(f | c) = E‖f − E[f | c]‖², the average squared
    distance of a class's feature vectors to their class mean (biased covariance, classes with < 2 members are
    skipped).

    Divide a model's value by the same number for real data (features from `extract_features`) to get a
    diversity ratio: 1 = as varied as real digits, → 0 as guidance collapses each class onto a few prototypes.
    """
    f = _as_float64(features, "features")
    labels = _labels_like(labels, f.shape[0])
    if f.dim() != 2:
        raise ValueError(f"features: expected a matrix [N, D], got shape {list(f.shape)}")
    spreads = [float(((f[labels == c] - f[labels == c].mean(0)) ** 2).sum(1).mean())
               for c in labels.unique().tolist() if int((labels == c).sum()) >= 2]
    if not spreads:
        raise ValueError("within_class_spread needs at least one class with two or more samples")
    return float(np.mean(spreads))


__all__ += ["within_class_spread"]


SATURATION_TOL = 1e-3


def saturated(values, tol: float = SATURATION_TOL) -> torch.Tensor:
    """Which values are saturated, i.e. at the edge of the data range: |x| ≥ 1 − tol (a bool tensor).

    The course's one definition of a saturated pixel (widgets, plots, notebook 07 and its exercise check).
    tol = 1e-3 is an eighth of one 8-bit grey level (2/255 ≈ 0.008 in [−1, 1]): it counts the values that
    clipping pinned to ±1, give or take float round-off, and not pixels that are merely very bright or dark.
    """
    return torch.as_tensor(values).abs() >= 1 - tol


def saturated_fraction(images, tol: float = SATURATION_TOL) -> torch.Tensor:
    """Per image, the fraction of `saturated` values, |x| ≥ 1 − tol ([B], float).

    Measures the saturation that static clipping of x̂_0 causes at large guidance weights (notebook 07).
    Images are ``B×…`` in [−1, 1].
    """
    x = torch.as_tensor(images)
    if x.dim() < 2:
        raise ValueError(f"images: expected a batch B×… with at least 2 dimensions, got shape {list(x.shape)}")
    return saturated(x, tol).float().flatten(1).mean(dim=1)


__all__ += ["saturated", "saturated_fraction", "SATURATION_TOL", "resolve_classifier"]
