"""DreamBooth subjects: a few pictures of one thing the training data never shows, made reproducibly.

The shipped subject (`assets/subjects/hollow-seven`) is **one person's bubble-letter seven**: four sevens of
the mnist5k *test* split that are each other's nearest neighbours (the same hand, drawn four times), each
drawn hollow (`outline`: the ink grown by two pixels, minus that grown ink shrunk by one pixel). No training
digit is drawn that way; `novelty` checks how far the subject lies from the training split (pixel and
feature nearest-neighbour distances, ranked among held-out real digits').

Subjects are stored as 8-bit grey PNG files (white ink on black, 28×28) with a README saying how they were
made; `load_subject` reads a folder of them back into [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def _ink(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


def _grow(m: torch.Tensor) -> torch.Tensor:  # grey-level dilation by a 3×3 square
    return F.max_pool2d(m, 3, 1, 1)


def _shrink(m: torch.Tensor) -> torch.Tensor:  # grey-level erosion by a 3×3 square
    return -F.max_pool2d(-m, 3, 1, 1)


def outline(images: torch.Tensor, grow: int = 2) -> torch.Tensor:
    """Bubble-letter (hollow) versions of digits [N, 1, H, W] in [-1, 1]: the stroke grown by `grow` pixels
    (grey-level dilation by a 3×3 square, `grow` times), minus that grown stroke shrunk by one pixel (the
    morphological gradient): a one-to-two-pixel outline `grow` pixels outside where the pen went."""
    m = _ink(images)
    for _ in range(grow):
        m = _grow(m)
    return (m - _shrink(m)).clamp(0, 1) * 2 - 1


def same_hand(images: torch.Tensor, anchor: int, n: int) -> torch.Tensor:
    """Indices of `anchor` and its n − 1 nearest neighbours (pixel space) among `images`: n drawings of one
    digit that look as if one person drew them."""
    flat = images.flatten(1).double()
    d = torch.cdist(flat[anchor:anchor + 1], flat)[0]
    return d.argsort()[:n]


def make_hollow_sevens(n: int = 4, anchor: int = 0) -> torch.Tensor:
    """The shipped subject: `n` hollow sevens from the mnist5k test split (the `anchor`-th test seven and its
    nearest test sevens), [n, 1, 28, 28] in [-1, 1]."""
    from .data import load_dataset

    test = load_dataset("mnist5k", "test")
    images, labels = test.tensors
    sevens = images[labels == 7]
    return outline(sevens[same_hand(sevens, anchor, n)])


def save_subject(images: torch.Tensor, directory) -> list[Path]:
    """Write images [N, 1, H, W] in [-1, 1] as 8-bit grey PNGs 0.png … (N−1).png in `directory`."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        arr = np.round(_ink(img[0]).numpy() * 255).astype(np.uint8)
        path = directory / f"{i}.png"
        Image.fromarray(arr, mode="L").save(path)
        paths.append(path)
    return paths


def load_subject(directory) -> torch.Tensor:
    """The subject images of a folder of PNGs (sorted by name), as [N, 1, H, W] in [-1, 1] (grey; colour
    images are converted)."""
    from PIL import Image

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"subject folder {directory} does not exist: give a folder of PNG images "
                                f"(e.g. assets/subjects/hollow-seven)")
    paths = sorted(directory.glob("*.png"), key=lambda p: (len(p.stem), p.stem))
    if not paths:
        raise ValueError(f"{directory} holds no .png images: put the 3–5 pictures of the subject there")
    arrays = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0 for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"the subject images in {directory} differ in size ({sorted(shapes)}): make them all the "
                         f"model's image size")
    return torch.from_numpy(np.stack(arrays))[:, None] * 2 - 1


class Novelty(NamedTuple):
    pixel: torch.Tensor           # [N] each subject image's distance to its nearest training image (pixels)
    pixel_percentile: torch.Tensor  # [N] share of held-out real digits whose nearest training image is closer
    feature: torch.Tensor         # [N] the same distance in the evaluation classifier's feature space
    feature_percentile: torch.Tensor
    nearest: torch.Tensor         # [N] index of each subject image's nearest training image (pixels)


def novelty(subject: torch.Tensor, train_images: torch.Tensor, held_out: torch.Tensor, classifier=None) -> Novelty:
    """Is the subject absent from the training data? The memorisation test of notebook 07 turned around:
    each subject image's nearest-neighbour distance to the training set, in pixels and in classifier
    features, ranked among the same distances of held-out real digits (a percentile of 0.99 means: farther
    from the training data than 99% of new real digits are)."""
    from .metrics import extract_features, nearest_neighbours, resolve_classifier

    s_nn = nearest_neighbours(subject, train_images)
    r_nn = nearest_neighbours(held_out, train_images).distances
    clf = resolve_classifier(classifier, like=subject)
    f_train = extract_features(train_images, clf).double()
    f_s = torch.cdist(extract_features(subject, clf).double(), f_train).min(1).values
    f_r = torch.cdist(extract_features(held_out, clf).double(), f_train).min(1).values
    def rank(x, ref):
        return (ref[None, :] < x[:, None]).double().mean(1)
    return Novelty(s_nn.distances, rank(s_nn.distances, r_nn), f_s, rank(f_s, f_r), s_nn.indices)


__all__ = ["outline", "same_hand", "make_hollow_sevens", "save_subject", "load_subject", "Novelty", "novelty"]
