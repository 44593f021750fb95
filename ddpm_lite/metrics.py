"""Measuring generated samples: sample accuracy, Fréchet distance, precision/recall, all read by a digits classifier.

What is here, and what each number means:

    classify, sample_accuracy           "does a sample of class 3 look like a 3?" (class-conditional models)
    extract_features                    the classifier's penultimate features, for FD and precision/recall
    frechet_distance(_from_stats)       the Fréchet (2-Wasserstein) distance between Gaussians fitted to two
                                        feature sets (Dowson & Landau 1982; as used by FID, Heusel et al. 2017)
    feature_frechet_distance            FD in the *digits classifier's* feature space. This is NOT FID: FID uses
                                        Inception-v3 features of ImageNet-sized RGB images. Numbers here are only
                                        comparable with each other (same classifier, same sample sizes)
    real_floor                          FD between two disjoint halves of real data: the value a perfect
                                        generator would get at that sample size (FD is biased upwards for finite n)
    precision_recall                    k-NN manifold precision and recall (Kynkäänniemi et al. 2019)
    evaluate_samples                    accuracy, FD, its real-data floor, precision, recall, in one dict
    within_class_spread, saturated_fraction   diversity within classes and clipping saturation (notebook 08)
    nearest_neighbours                  each sample's nearest training image in pixel space: does a model copy?
    sliced_wasserstein                  a distance between two point clouds (2D toys; no classifier involved), used
                                        by `ddpm_lite.oracle` to compare samples with an exactly known target

The classifier itself (network, training, its files in assets/classifiers/) is `ddpm_lite.classifier`;
`load_classifier` is re-exported here because the notebooks call `metrics.load_classifier`. The likelihood
bound in bits/dim is `ddpm_lite.diffusion.bits_per_dim`, beside the diffusion's variational bound.
There is no Inception FID here: the package is offline and 8×8 digits are not what Inception-v3 was made for;
for published-comparable FID on larger images use torchmetrics' `FrechetInceptionDistance`.

All images follow the package convention: float tensors B×C×H×W in [−1, 1].
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from .classifier import ClassifierNotFoundError, DigitsClassifier, load_classifier
from .device import model_device
from .models import eval_mode

__all__ = [
    "load_classifier", "ClassifierNotFoundError",  # re-exported from ddpm_lite.classifier
    "classify", "extract_features", "sample_accuracy", "per_class_accuracy",
    "frechet_distance", "frechet_distance_from_stats", "feature_statistics", "feature_frechet_distance",
    "real_floor", "PrecisionRecall", "precision_recall", "evaluate_samples",
]


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


# The shipped evaluation classifier for each image shape (assets/classifiers/<name>).
CLASSIFIER_FOR_SHAPE = {(1, 8, 8): "digits", (1, 28, 28): "mnist5k"}


def resolve_classifier(classifier=None, like: torch.Tensor | None = None, image_shape=None) -> DigitsClassifier | None:
    """The classifier a caller means: a module as it is; a name loads that shipped classifier; None loads the
    shipped one for the images' shape (`image_shape`, or that of the images `like`; see CLASSIFIER_FOR_SHAPE;
    "digits" when neither is known). "auto" is None's choice, but gives None instead of an error when no
    shipped classifier fits the shape or its weights are missing. Loaded onto `like`'s device (else CPU)."""
    if image_shape is None and isinstance(like, torch.Tensor) and like.dim() == 4:
        image_shape = tuple(like.shape[1:])
    name = CLASSIFIER_FOR_SHAPE.get(tuple(image_shape)) if image_shape is not None else None
    if isinstance(classifier, str) and classifier == "auto":
        if name is None:
            return None
        try:
            return resolve_classifier(name, like)
        except (FileNotFoundError, ValueError):
            return None
    if classifier is None or isinstance(classifier, str):
        device = like.device if isinstance(like, torch.Tensor) else "cpu"
        return load_classifier(classifier or name or "digits", device=device)
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


# -- within-class spread (notebook 08) ------------------------------


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


# -- memorisation: is a sample a copy of a training image? (notebook 07) ---------------------------------------

class Neighbours(NamedTuple):
    distances: torch.Tensor  # [N] Euclidean distance to the nearest reference, in pixel units of [-1, 1]
    indices: torch.Tensor    # [N] index of that reference


def nearest_neighbours(queries, references, batch_size: int = 1024) -> Neighbours:
    """For every query image, its nearest reference image in pixel space (Euclidean distance over all pixels,
    images flattened). Comparing these distances for generated samples with those for held-out real images
    (both against the training set) shows whether a model copies: a memorising model's samples sit much
    closer to a training image than new real digits do (Carlini et al. 2023, "Extracting Training Data from
    Diffusion Models", use the same nearest-neighbour test)."""
    q = _as_float64(queries, "queries").flatten(1)
    r = _as_float64(references, "references").flatten(1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries and references must have the same image size, got {q.shape[1]} and "
                         f"{r.shape[1]} values per image")
    if r.shape[0] == 0:
        raise ValueError("references: need at least one image")
    dists, idx = [], []
    for chunk in q.split(batch_size):
        d = torch.cdist(chunk, r)
        best = d.min(1)
        dists.append(best.values)
        idx.append(best.indices)
    if not dists:
        return Neighbours(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    return Neighbours(torch.cat(dists), torch.cat(idx))


__all__ += ["Neighbours", "nearest_neighbours"]


SATURATION_TOL = 1e-3


def saturated(values, tol: float = SATURATION_TOL) -> torch.Tensor:
    """Which values are saturated, i.e. at the edge of the data range: |x| ≥ 1 − tol (a bool tensor).

    The course's one definition of a saturated pixel (widgets, plots, notebook 08 and its exercise check).
    tol = 1e-3 is an eighth of one 8-bit grey level (2/255 ≈ 0.008 in [−1, 1]): it counts the values that
    clipping pinned to ±1, give or take float round-off, and not pixels that are merely very bright or dark.
    """
    return torch.as_tensor(values).abs() >= 1 - tol


def saturated_fraction(images, tol: float = SATURATION_TOL) -> torch.Tensor:
    """Per image, the fraction of `saturated` values, |x| ≥ 1 − tol ([B], float).

    Measures the saturation that static clipping of x̂_0 causes at large guidance weights (notebook 08).
    Images are ``B×…`` in [−1, 1].
    """
    x = torch.as_tensor(images)
    if x.dim() < 2:
        raise ValueError(f"images: expected a batch B×… with at least 2 dimensions, got shape {list(x.shape)}")
    return saturated(x, tol).float().flatten(1).mean(dim=1)


__all__ += ["saturated", "saturated_fraction", "SATURATION_TOL", "resolve_classifier"]


# -- point clouds: the sliced Wasserstein distance (2D toys, `ddpm_lite.oracle`) -------------------------------


def _wasserstein_1d_pow(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """W_p(a, b)^p between the empirical distributions of the columns of `a` [N, L] and `b` [M, L] (L problems).

    In 1D the optimal transport plan is monotone: W_p^p = ∫_0^1 |F_a^{-1}(u) − F_b^{-1}(u)|^p du with the
    quantile functions F^{-1}. For empirical distributions both are step functions that jump at u = i/N and
    u = j/M, so the integral is an exact finite sum over the merged breakpoints (N = M: the mean of
    |a_(i) − b_(i)|^p over the sorted values)."""
    a, b = a.sort(dim=0).values, b.sort(dim=0).values
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return ((a - b).abs() ** p).mean(0)
    u = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                   torch.arange(1, m + 1, dtype=torch.float64) / m]).sort().values
    du = torch.diff(u, prepend=u.new_zeros(1))
    mid = u - du / 2                                   # inside each interval both quantile functions are constant
    ia = (mid * n).floor().long().clamp(max=n - 1)
    ib = (mid * m).floor().long().clamp(max=m - 1)
    return (du[:, None] * (a[ia] - b[ib]).abs() ** p).sum(0)


def sliced_directions(dim: int, n_projections: int = 128, seed: int = 0) -> torch.Tensor:
    """Unit vectors [n_projections, dim] for `sliced_wasserstein`: in 2D, angles evenly spaced over [0, π)
    (a deterministic quadrature of the average over directions); in other dimensions, normalised Gaussian
    draws from `seed`."""
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    if dim == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if dim == 2:
        angles = torch.arange(n_projections, dtype=torch.float64) * (torch.pi / n_projections)
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n_projections, dim, generator=g, dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def sliced_wasserstein(a, b, p: float = 2.0, n_projections: int = 128, seed: int = 0) -> float:
    """The sliced p-Wasserstein distance between two point clouds a [N, D] and b [M, D] (N ≠ M allowed).

        SW_p(a, b) = ( E_θ [ W_p(θᵀa, θᵀb)^p ] )^{1/p},   θ uniform on the unit sphere,

    the optimal-transport distance averaged over 1D projections, where it is exact and cheap (sorting; see
    `_wasserstein_1d_pow`). Rabin, Peyré, Delon & Bernot 2011 ("Wasserstein barycenter and its application to
    texture mixing"); Bonneel, Rabin, Peyré & Pfister 2015. It is a metric on distributions, in the units of the
    data: SW_2 between a cloud and the same cloud shifted by s is |s| / √D (2D: |s| / √2).

    Between two *finite* samples of the same distribution it is not 0 but shrinks like 1/√N: compare a
    measured distance with that sampling floor (two independent samples of the target), as
    `ddpm_lite.oracle` does. The directions are a fixed quadrature (`sliced_directions`), so the result is
    deterministic.
    """
    a, b = _as_float64(a, "a"), _as_float64(b, "b")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be point clouds [N, D] and [M, D] with the same D, got shapes "
                         f"{list(a.shape)} and {list(b.shape)}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("a and b need at least one point each")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("a and b must be finite (did sampling diverge?)")
    theta = sliced_directions(a.shape[1], n_projections, seed)
    return float(_wasserstein_1d_pow(a @ theta.T, b @ theta.T, p).mean() ** (1.0 / p))


__all__ += ["sliced_wasserstein", "sliced_directions"]
