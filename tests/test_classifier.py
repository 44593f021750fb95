"""ddpm_lite.classifier: the evaluation classifier's network, training and files.

Its files use the checkpoint layout of every ddpm_lite model (config.json + model.safetensors, written
atomically by checkpoint.save_pretrained, never pickled); the shipped digits classifier is in that layout.
"""

import json
from pathlib import Path

import pytest
import torch

from ddpm_lite import checkpoint as ckpt
from ddpm_lite import classifier as C
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.toy_mlp import ToyMLP


def _trained_looking(seed: int = 0, **kw) -> C.DigitsClassifier:
    """An untrained classifier with random (non-default) weights, in eval mode."""
    torch.manual_seed(seed)
    model = C.build_classifier("digits", **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_in_the_checkpoint_layout(tmp_path):
    model = _trained_looking(channels=(8, 16, 32), feature_dim=16)
    out = C.save_classifier(model, tmp_path / "clf", dataset="digits", test_accuracy=0.5, note=["a", 1])
    assert sorted(p.name for p in out.iterdir()) == [ckpt.CONFIG_NAME, ckpt.WEIGHTS_NAME]
    config = json.loads((out / ckpt.CONFIG_NAME).read_text())
    assert config["format"] == ckpt.FORMAT_NAME and config["format_version"] == ckpt.FORMAT_VERSION
    assert config["model_class"] == "DigitsClassifier" and "diffusion_config" not in config
    assert config["model_config"] == {**model.config, "channels": [8, 16, 32]}
    assert config["extra"] == {"dataset": "digits", "test_accuracy": 0.5, "note": ["a", 1]}

    loaded = C.load_classifier(path=out, cache=False)
    assert type(loaded) is C.DigitsClassifier and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert _same_weights(loaded, model)
    assert loaded.dataset == "digits" and loaded.metadata["test_accuracy"] == 0.5
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(loaded.features(x), model.features(x))
    # the generic loader reads it too, and from_pretrained says why it cannot
    assert _same_weights(ckpt.load_model(out), model)
    with pytest.raises(ckpt.CheckpointError, match="without a diffusion.*load_model"):
        ckpt.from_pretrained(out)


def test_mnist_classifier_round_trip(tmp_path):
    model = C.build_classifier("mnist", channels=(4, 8, 8), feature_dim=8).eval()
    loaded = C.load_classifier(path=C.save_classifier(model, tmp_path / "m", dataset="mnist"), cache=False)
    assert type(loaded) is C.MNISTClassifier and loaded.image_shape == (1, 28, 28) and loaded.dataset == "mnist"
    assert _same_weights(loaded, model)


def test_saving_is_atomic(tmp_path, monkeypatch):
    """A crash in the middle of a save leaves the previous classifier loadable and no temporary files."""
    path = C.save_classifier(_trained_looking(0), tmp_path / "clf", dataset="digits")
    before = C.load_classifier(path=path, cache=False)
    real_write = ckpt._write_bytes

    def crash_mid_weights(p, data):
        if Path(p).name == ckpt.WEIGHTS_NAME:
            real_write(p, data[: len(data) // 2])
            raise OSError("simulated crash while writing weights")
        real_write(p, data)

    monkeypatch.setattr(ckpt, "_write_bytes", crash_mid_weights)
    with pytest.raises(OSError, match="simulated crash"):
        C.save_classifier(_trained_looking(1), path, dataset="digits")
    monkeypatch.setattr(ckpt, "_write_bytes", real_write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]
    assert _same_weights(C.load_classifier(path=path, cache=False), before)
    # and a save that succeeds replaces it
    newer = _trained_looking(2)
    C.save_classifier(newer, path, dataset="digits")
    assert _same_weights(C.load_classifier(path=path, cache=False), newer)


def test_the_shipped_classifier_is_in_the_checkpoint_layout_and_as_accurate_as_recorded():
    directory = C.classifier_dir("digits")
    assert sorted(p.name for p in directory.iterdir()) == [ckpt.CONFIG_NAME, ckpt.WEIGHTS_NAME]
    config = ckpt.load_config(directory, diffusion=False)
    assert config["model_class"] == "DigitsClassifier" and config["extra"]["dataset"] == "digits"
    model = C.load_classifier("digits", cache=False)
    test = load_dataset("digits", split="test")
    with torch.no_grad():
        acc = float((model(test.images.float()).argmax(1) == test.labels.long()).double().mean())
    assert acc == pytest.approx(model.metadata["test_accuracy"], abs=1e-9) and acc > 0.99


def test_loader_cache_and_device(tmp_path):
    path = C.save_classifier(_trained_looking(), tmp_path / "clf", dataset="digits")
    a = C.load_classifier(path=path)
    assert C.load_classifier(path=path) is a
    assert C.load_classifier(path=path, cache=False) is not a
    assert next(a.parameters()).device == torch.device("cpu")
    C._CACHE.pop((str(path.resolve()), "cpu"), None)


def test_missing_classifier_says_how_to_make_it(tmp_path, monkeypatch):
    with pytest.raises(C.ClassifierNotFoundError, match="tools/train_classifier.py"):
        C.load_classifier(path=tmp_path / "nowhere")
    monkeypatch.setenv("DDPM_LITE_ASSETS", str(tmp_path))
    assert C.classifier_dir("mnist") == tmp_path / "classifiers" / "mnist"
    with pytest.raises(FileNotFoundError, match=r"train_classifier.py --dataset digits"):
        C.load_classifier("digits", cache=False)


def test_old_layout_and_other_models_are_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    old = tmp_path / "old"
    old.mkdir()
    model = _trained_looking()
    (old / ckpt.CONFIG_NAME).write_text(json.dumps({"class": "DigitsClassifier", "config": model.config}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(old / ckpt.WEIGHTS_NAME))
    with pytest.raises(ckpt.CheckpointError, match="layout used before.*train_classifier.py"):
        C.load_classifier(path=old, cache=False)
    # a diffusion model's checkpoint is not a classifier
    ckpt.save_pretrained(tmp_path / "toy", ToyMLP(), GaussianDiffusion(timesteps=10))
    with pytest.raises(ValueError, match="not a classifier"):
        C.load_classifier(path=tmp_path / "toy", cache=False)
    # nor does save_classifier overwrite a folder that is not a ddpm_lite checkpoint
    with pytest.raises(ckpt.CheckpointError, match="refusing to replace"):
        C.save_classifier(model, old)


def test_unknown_classifier_preset_is_rejected():
    with pytest.raises(ValueError, match="classifier preset"):
        C.build_classifier("imagenet")


def test_augment_keeps_shape_and_range():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = C.augment(x, shift=1, noise=0.1, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and float(y.min()) >= -1 and float(y.max()) <= 1
    assert torch.equal(C.augment(x, shift=0, noise=0.0), x)


def test_fit_classifier_learns_the_digits_quickly():
    """A small network on 600 training digits for 6 epochs: far above chance (0.1) on the held-out split.
    (The shipped classifier's recipe, CLASSIFIER_PRESETS["digits"], reaches 99 %: see tools/train_classifier.py.)"""
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    torch.manual_seed(0)
    model = C.build_classifier("digits", channels=(16, 16, 16), feature_dim=16)
    log = C.fit_classifier(model, train.images[:600].float(), train.labels[:600], epochs=6, batch_size=32,
                           lr=1e-2, eval_images=test.images.float(), eval_labels=test.labels, progress=False)
    assert set(log) == {"epochs", "steps", "loss", "train_accuracy", "eval_accuracy"}
    assert log["steps"] == 6 * 19 and log["loss"] < 2.0  # 19 batches of ≤ 32 per epoch
    assert log["eval_accuracy"] > 0.4 and not model.training
