import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from ddpm_lite import checkpoint as ckpt
from ddpm_lite.checkpoint import CheckpointError, from_pretrained, load_trainer_state, save_pretrained
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.ema import EMA
from ddpm_lite.toy_mlp import ToyMLP
from ddpm_lite.unet import UNet

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm_lite"


def tiny_unet(**kw) -> UNet:
    cfg = dict(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
               attention_resolutions=(), num_groups=8, num_classes=10, dropout=0.0)
    return UNet(**{**cfg, **kw})


@pytest.fixture
def saved(tmp_path):
    """A checkpoint with distinct raw and EMA weights; returns (path, model, ema, diffusion)."""
    torch.manual_seed(0)
    model = tiny_unet()
    ema = EMA(model, decay=0.5, warmup=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model)
    diffusion = GaussianDiffusion("cosine", timesteps=50, parameterization="v")
    path = save_pretrained(tmp_path / "ckpt", model, diffusion, ema=ema, extra={"dataset": "digits"})
    return path, model, ema, diffusion


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_model_ema_and_config(saved):
    path, model, ema, diffusion = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "ema.safetensors", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "ddpm_lite" and config["model_class"] == "UNet"
    assert config["model_config"] == model.config and config["extra"] == {"dataset": "digits"}
    assert "ddpm_lite_version" in config and config["format_version"] == ckpt.FORMAT_VERSION

    loaded, dif = from_pretrained(path)  # EMA weights by default
    assert isinstance(loaded, UNet) and not loaded.training
    assert _same_weights(loaded, ema.module)
    assert dif.config == diffusion.config
    raw, _ = from_pretrained(path, use_ema=False)
    assert _same_weights(raw, model)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 40])
    assert torch.equal(raw(x, t), model.eval()(x, t))


def test_toy_mlp_without_ema_and_run_directory(tmp_path):
    model = ToyMLP(dim=2, hidden=16, num_blocks=1, num_classes=None)
    save_pretrained(tmp_path / "run" / "checkpoint", model, GaussianDiffusion(timesteps=10))
    loaded, dif = from_pretrained(tmp_path / "run")  # a trainer run dir resolves to run/checkpoint
    assert isinstance(loaded, ToyMLP) and _same_weights(loaded, model) and dif.num_timesteps == 10


def test_trainer_state_round_trip_without_pickle(tmp_path):
    model = ToyMLP(dim=2, hidden=8, num_blocks=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 2), torch.zeros(4, dtype=torch.long)).pow(2).sum().backward()
    opt.step()
    state = {
        "step": 7, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
        "python": random.getstate(), "numpy": np.random.get_state(), "nested": {"a": [1, 2.5, None, "s", (3, 4)]},
    }
    save_pretrained(tmp_path / "c", model, GaussianDiffusion(timesteps=10), trainer_state=state)
    assert (tmp_path / "c" / "trainer_state.json").exists() and (tmp_path / "c" / "trainer_state.safetensors").exists()
    back = load_trainer_state(tmp_path / "c")
    assert back["step"] == 7 and back["nested"] == {"a": [1, 2.5, None, "s", (3, 4)]}
    assert torch.equal(back["rng"], state["rng"])
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["betas"] == (0.9, 0.99)
    for k, v in opt.state_dict()["state"].items():
        for name, tensor in v.items():
            assert torch.equal(opt2.state_dict()["state"][k][name], tensor)
    with pytest.raises(CheckpointError, match="without pickle"):
        ckpt.flatten_state({"bad": object()})


def test_atomic_save_keeps_previous_checkpoint_on_crash(saved, monkeypatch):
    path, model, ema, diffusion = saved
    real_write = ckpt._write_bytes

    def crash_mid_weights(p, data):
        if Path(p).name == ckpt.WEIGHTS_NAME:
            real_write(p, data[: len(data) // 2])  # half the file is on disk ...
            raise OSError("simulated crash while writing weights")  # ... then the process "dies"
        real_write(p, data)

    monkeypatch.setattr(ckpt, "_write_bytes", crash_mid_weights)
    newer = tiny_unet(dropout=0.5)
    with pytest.raises(OSError, match="simulated crash"):
        save_pretrained(path, newer, diffusion, ema=EMA(newer))
    monkeypatch.setattr(ckpt, "_write_bytes", real_write)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # no .tmp-* / .old-* left behind
    loaded, _ = from_pretrained(path, use_ema=False)
    assert _same_weights(loaded, model) and loaded.config["dropout"] == 0.0


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path, monkeypatch, error):
    path = ckpt.atomic_write_json(tmp_path / "history.json", [{"step": 1}], indent=1)
    assert json.loads(path.read_text()) == [{"step": 1}] and path.read_text().endswith("\n")
    real_write = ckpt._write_bytes

    def crash_mid_write(p, data):
        real_write(p, data[: len(data) // 2])  # part of the new file is on disk ...
        raise error  # ... then the write fails (or Ctrl-C)

    monkeypatch.setattr(ckpt, "_write_bytes", crash_mid_write)
    with pytest.raises(type(error)):
        ckpt.atomic_write_json(path, [{"step": 1}, {"step": 2}])
    with pytest.raises(type(error)):
        ckpt.atomic_write_bytes(tmp_path / "new.bin", b"0123456789")
    monkeypatch.setattr(ckpt, "_write_bytes", real_write)
    assert json.loads(path.read_text()) == [{"step": 1}]  # the previous file, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]  # no .tmp-* left, no new.bin
    ckpt.atomic_write_bytes(path, b"[]")
    assert path.read_bytes() == b"[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def test_atomic_directory_replaces_as_a_whole_or_not_at_all(tmp_path):
    target = tmp_path / "d"
    with ckpt.atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-d-") and not target.exists()
        ckpt._write_bytes(tmp / "a.txt", b"first")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with pytest.raises(RuntimeError, match="midway"):
        with ckpt.atomic_directory(target) as tmp:
            ckpt._write_bytes(tmp / "a.txt", b"second")
            ckpt._write_bytes(tmp / "b.txt", b"second")
            raise RuntimeError("midway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_bytes() == b"first"
    with ckpt.atomic_directory(target) as tmp:
        ckpt._write_bytes(tmp / "b.txt", b"second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_model_without_diffusion_round_trip(tmp_path, saved):
    model = ToyMLP()
    path = save_pretrained(tmp_path / "net", model, extra={"what": "a network alone"})
    config = json.loads((path / ckpt.CONFIG_NAME).read_text())
    assert "diffusion_config" not in config and config["extra"] == {"what": "a network alone"}
    loaded = ckpt.load_model(path)
    assert type(loaded) is ToyMLP and _same_weights(loaded, model) and not loaded.training
    with pytest.raises(CheckpointError, match="without a diffusion.*load_model"):
        from_pretrained(path)
    # load_model also takes just the network of a full checkpoint (EMA weights by default)
    ckpt_path, raw, ema, _ = saved
    assert _same_weights(ckpt.load_model(ckpt_path), ema.module)
    assert _same_weights(ckpt.load_model(ckpt_path, use_ema=False), raw)


def test_atomic_swap_restores_backup_if_rename_fails(saved, monkeypatch):
    path, model, ema, diffusion = saved
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old -> backup worked, new -> final fails
            raise OSError("simulated failure during the swap")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="during the swap"):
        save_pretrained(path, tiny_unet(), diffusion)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]
    assert _same_weights(from_pretrained(path, use_ema=False)[0], model)


def test_overwrite_replaces_checkpoint_but_refuses_foreign_dirs(saved, tmp_path):
    path, model, ema, diffusion = saved
    other = tiny_unet(num_classes=None)
    save_pretrained(path, other, diffusion)
    assert not (path / "ema.safetensors").exists()
    assert _same_weights(from_pretrained(path)[0], other)  # no EMA file -> raw weights
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_pretrained(tmp_path / "notes", other, diffusion)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def _corrupt(path: Path, case: str) -> str:
    """Damage the checkpoint at `path`; returns a regex the error message must match."""
    if case == "truncated":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
        return r"model\.safetensors is corrupt or truncated"
    if case == "garbage":
        (path / "ema.safetensors").write_bytes(b"this is not a safetensors file" * 3)
        return r"ema\.safetensors is corrupt or truncated"
    if case == "missing_config":
        (path / "config.json").unlink()
        return r"no config\.json"
    if case == "missing_weights":
        (path / "ema.safetensors").unlink()
        (path / "model.safetensors").unlink()
        return r"missing model\.safetensors"
    if case == "bad_json":
        (path / "config.json").write_text("{not json")
        return r"not valid JSON"
    config = json.loads((path / "config.json").read_text())
    if case == "foreign_class":
        config["model_class"] = "StableDiffusionUNet"
        expected = r"model class 'StableDiffusionUNet' is unknown.*foreign checkpoint"
    elif case == "shape_mismatch":
        config["model_config"]["base_channels"] = 8
        expected = r"shape mismatch: .* in the file but .* in the model"
    elif case == "not_ddpm_lite":
        config.pop("format")
        expected = r"not a ddpm_lite checkpoint"
    elif case == "newer_format":
        config["format_version"] = 99
        expected = r"upgrade ddpm_lite"
    (path / "config.json").write_text(json.dumps(config))
    return expected


@pytest.mark.parametrize("case", ["truncated", "garbage", "missing_config", "missing_weights", "bad_json",
                                  "foreign_class", "shape_mismatch", "not_ddpm_lite", "newer_format"])
def test_corrupt_checkpoints_raise_clear_errors(saved, case):
    path = saved[0]
    expected = _corrupt(path, case)
    with pytest.raises(CheckpointError, match=expected) as info:
        from_pretrained(path, use_ema=case not in ("truncated", "missing_weights"))
    assert isinstance(info.value, ValueError)
    assert "Traceback" not in str(info.value)


def test_missing_file_and_foreign_folders(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        from_pretrained(tmp_path / "file")
    diffusers = tmp_path / "sd"
    diffusers.mkdir()
    (diffusers / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    with pytest.raises(CheckpointError, match="diffusers checkpoint"):
        from_pretrained(diffusers)
    unet_only = tmp_path / "unet"
    unet_only.mkdir()
    (unet_only / "config.json").write_text('{"_class_name": "UNet2DModel", "_diffusers_version": "0.30"}')
    with pytest.raises(CheckpointError, match="diffusers checkpoint"):
        from_pretrained(unet_only)
    pickled = tmp_path / "old"
    pickled.mkdir()
    (pickled / "model.pt").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickled"):
        from_pretrained(pickled)


def test_register_custom_model(tmp_path):
    class Tiny(nn.Module):
        def __init__(self, width: int = 3):
            super().__init__()
            self.config = {"width": width}
            self.lin = nn.Linear(width, width)

    with pytest.raises(CheckpointError, match="register_model"):
        save_pretrained(tmp_path / "t", Tiny(), GaussianDiffusion(timesteps=10))
    ckpt.register_model(Tiny)
    try:
        model = Tiny(4)
        save_pretrained(tmp_path / "t", model, GaussianDiffusion(timesteps=10))
        assert _same_weights(from_pretrained(tmp_path / "t")[0], model)
    finally:
        ckpt._EXTRA_MODELS.pop("Tiny")


def test_no_pickle_in_checkpointing_code():
    for name in ("checkpoint.py", "train.py", "ema.py", "__main__.py", "distributed.py", "classifier.py"):
        source = (PACKAGE / name).read_text()
        code = "\n".join(line.split("#")[0] for line in source.splitlines())
        assert not re.search(r"\btorch\.(load|save)\s*\(", code), name
        assert not re.search(r"^\s*(import|from)\s+(pickle|dill|cloudpickle)\b", code, re.M), name
        assert not re.search(r"\bpickle\.\w+\s*\(|allow_pickle\s*=\s*True", code), name
