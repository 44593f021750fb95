"""Saving and loading checkpoints: `config.json` + safetensors, written atomically, never pickle.

A checkpoint is a directory:

    config.json                 what to build: model class + its config, the diffusion's config, versions
    model.safetensors           the trained weights
    ema.safetensors             the EMA weights (optional; `from_pretrained` prefers them)
    trainer_state.json          to resume training: step, optimizer/LR/EMA/RNG state, ...  (optional)
    trainer_state.safetensors   ... the tensors of that state (optimizer moments, RNG states)

Why no pickle: `torch.load` of a pickled file can run arbitrary code from whoever made the file. Everything
here is JSON (data) or safetensors (raw tensor bytes), so opening a downloaded checkpoint is safe.

Why atomic: a crash (or Ctrl-C, or a full disk) in the middle of a save must not leave you without a
checkpoint. The new checkpoint is written into a hidden sibling directory `.tmp-<name>-<pid>`, every file
is fsync'ed, and only then is it swapped into place by renames:

    <name>  →  .old-<name>-<pid>        (the last good checkpoint, kept until the new one is in place)
    .tmp-<name>-<pid>  →  <name>
    delete .old-<name>-<pid>

If the process dies before the swap, `<name>` is still the previous checkpoint. (Between the two renames,
which take microseconds, `<name>` is briefly missing; `from_pretrained` then points you at the backup.)
That is `atomic_directory`; single files (the trainer's history.json) go through `atomic_write_bytes` /
`atomic_write_json` (a hidden temporary sibling, fsync'ed, then one rename). Every atomic write in the package
goes through these.

A network that is not a diffusion model's (the evaluation classifier, `ddpm_lite.classifier`) is saved in
the same layout by `save_pretrained(directory, model)` without a diffusion: its config.json then has no
"diffusion_config", and `load_model` reads it back.

A *latent diffusion* checkpoint (Rombach et al. 2022: the diffusion runs on an autoencoder's scaled latents)
carries its frozen autoencoder in a subfolder, so that sampling needs this one directory:

    config.json, model.safetensors, ...   the latent UNet + diffusion, as above; extra.autoencoder = "autoencoder"
    autoencoder/config.json               the AutoencoderKL (its model_config holds the latent scale factor)
    autoencoder/model.safetensors         its weights (the ones the latents were encoded with)

`save_pretrained(..., autoencoder=ae)` writes it inside the same atomic swap (a resumed run's checkpoint
keeps it), `from_pretrained` still returns (model, diffusion), and `load_autoencoder(directory)` returns the
autoencoder (or None for a pixel-space model).

A *run directory* written by the trainer holds the checkpoint in `<run>/checkpoint/` next to sample grids;
every loader here accepts either the checkpoint directory or the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

FORMAT_NAME = "ddpm_lite"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EMA_WEIGHTS_NAME = "ema.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINER_TENSORS_NAME = "trainer_state.safetensors"
RUN_SUBDIR = "checkpoint"  # a trainer run directory keeps its checkpoint here
AUTOENCODER_SUBDIR = "autoencoder"  # a latent diffusion checkpoint keeps its autoencoder here
TEXT_ENCODER_SUBDIR = "text_encoder"  # a text-to-image checkpoint keeps its frozen text encoder here


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign or does not match its config. The message says which."""


# -- the model registry: config.json names a class, this maps the name back to it ----------------------------

_EXTRA_MODELS: dict[str, type] = {}


def register_model(cls: type, name: str | None = None) -> type:
    """Make a custom `nn.Module` class loadable by `from_pretrained` (it must keep its kwargs in `self.config`).

    Usable as a decorator: `@register_model class MyNet(nn.Module): ...`.
    """
    _EXTRA_MODELS[name or cls.__name__] = cls
    return cls


def model_registry() -> dict[str, type]:
    """{class name: class} of every model `from_pretrained` can build."""
    from .autoencoder import AutoencoderKL
    from .classifier import DigitsClassifier, MNISTClassifier
    from .clip import CLIP
    from .text_encoder import CLIPTextEncoder
    from .toy_mlp import ToyMLP
    from .unet import UNet

    return {"UNet": UNet, "ToyMLP": ToyMLP, "DigitsClassifier": DigitsClassifier, "MNISTClassifier": MNISTClassifier,
            "AutoencoderKL": AutoencoderKL, "CLIP": CLIP, "CLIPTextEncoder": CLIPTextEncoder, **_EXTRA_MODELS}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    from .ema import unwrap_model as _unwrap

    return _unwrap(model)


def _model_class_name(model: nn.Module) -> str:
    registry = model_registry()
    for name, cls in registry.items():
        if type(model) is cls:
            return name
    raise CheckpointError(
        f"cannot save a {type(model).__name__}: save_pretrained knows the classes {sorted(registry)}; "
        f"register yours with ddpm_lite.checkpoint.register_model({type(model).__name__})"
    )


# -- low-level file writing (fsync'ed; tests monkeypatch `_write_bytes` to simulate a crash) -----------------

def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    try:  # make the renames durable; directories cannot be opened on Windows, which is fine
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- atomic writes: the one implementation every save in the package goes through ----------------------------

def atomic_write_bytes(path, data: bytes) -> Path:
    """Replace the file `path` by `data` atomically: a reader sees the old file or the new one, never a part.

    The bytes go to a hidden sibling `.tmp-<name>-<pid>`, are fsync'ed, and the sibling is renamed over `path`.
    If anything fails (or is interrupted) before the rename, `path` is untouched and the sibling is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    except BaseException:  # including KeyboardInterrupt
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path, obj, indent: int = 2) -> Path:
    """`atomic_write_bytes` of `obj` as UTF-8 JSON with a final newline."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(directory) -> Iterator[Path]:
    """Write the directory `directory` as a whole: `with atomic_directory(d) as tmp:` fill the empty directory
    `tmp`; when the block ends without an exception, `tmp` takes the place of `d` (the renames of the module
    docstring). Write the files with `_write_bytes` / `_write_json`, which fsync them.

    On an exception (or Ctrl-C) inside the block or during the swap, `tmp` is deleted and `d` is left as it
    was (the previous version, or absent).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    backup = directory.parent / f".old-{directory.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        # the swap: only renames from here on
        if directory.exists():
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(directory, backup)
            os.replace(tmp, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:  # including KeyboardInterrupt: never leave a half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        if backup.exists() and not directory.exists():
            os.replace(backup, directory)
        raise


def _tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # detached CPU copies: safetensors refuses tensors that share memory (tied weights) or are non-contiguous
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return save(flat, metadata={"format": "pt"})


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}: the checkpoint is incomplete")
    try:
        return load(path.read_bytes())
    except SafetensorError as e:
        raise CheckpointError(
            f"{path} is corrupt or truncated and cannot be read ({e}); save the checkpoint again or use an "
            f"earlier one"
        ) from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}: the checkpoint is incomplete")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): the file is corrupt") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


# -- nested state (optimizer state_dict, RNG states, ...) <-> JSON + a flat dict of tensors ------------------

def flatten_state(obj, prefix: str = "", tensors: dict | None = None):
    """Split a nested structure into (JSON-able skeleton, {key: tensor}) without pickle.

    Tensors become {"__tensor__": key}; tuples {"__tuple__": [...]}; dicts with non-string keys (like an
    optimizer's `state`, keyed by int) {"__dict__": [[key, value], ...]}; numpy arrays {"__ndarray__": ...}.
    """
    tensors = {} if tensors is None else tensors
    if torch.is_tensor(obj):
        key = prefix or "tensor"
        while key in tensors:
            key += "_"
        tensors[key] = obj
        return {"__tensor__": key}, tensors
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}, tensors
    if isinstance(obj, np.generic):
        return obj.item(), tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, f"{prefix}/{i}" if prefix else str(i), tensors)[0] for i, v in enumerate(obj)]
        return ({"__tuple__": items} if isinstance(obj, tuple) else items), tensors
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) and not k.startswith("__") for k in obj)
        if plain:
            return {k: flatten_state(v, f"{prefix}/{k}" if prefix else k, tensors)[0] for k, v in obj.items()}, tensors
        items = [[flatten_state(k)[0], flatten_state(v, f"{prefix}/{k}" if prefix else str(k), tensors)[0]]
                 for k, v in obj.items()]
        return {"__dict__": items}, tensors
    raise CheckpointError(
        f"cannot store a {type(obj).__name__} at {prefix or 'the top level'!r} of the trainer state without "
        f"pickle; convert it to tensors, numbers, strings, lists or dicts"
    )


def unflatten_state(obj, tensors: dict[str, torch.Tensor]):
    """Inverse of `flatten_state`."""
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise CheckpointError(f"{TRAINER_TENSORS_NAME} lacks the tensor {key!r} that {TRAINER_STATE_NAME} "
                                  f"refers to: the two files are from different saves")
        return tensors[key]
    if "__tuple__" in obj:
        return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: unflatten_state(v, tensors) for k, v in obj.items()}


# -- saving -------------------------------------------------------------------------------------------------

def _is_ddpm_lite_checkpoint(directory: Path) -> bool:
    try:
        cfg = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == FORMAT_NAME


def _checkpoint_config(model: nn.Module, diffusion, has_ema: bool, extra: dict | None) -> dict:
    from . import __version__

    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ddpm_lite_version": __version__,
        "model_class": _model_class_name(model),
        "model_config": dict(model.config),
        "diffusion_config": dict(diffusion.config) if diffusion is not None else None,
        "has_ema": has_ema,
        "extra": dict(extra or {}),
    }
    if diffusion is None:
        del config["diffusion_config"]
    try:
        json.dumps(config)
    except TypeError as e:
        raise CheckpointError(f"config.json would not be valid JSON: {e}; keep model.config and extra JSON-able") from None
    return config


def save_pretrained(directory, model: nn.Module, diffusion=None, ema=None, trainer_state: dict | None = None,
                    extra: dict | None = None, autoencoder: nn.Module | None = None,
                    text_encoder: nn.Module | None = None) -> Path:
    """Write a checkpoint directory atomically (see the module docstring); returns its path.

    Args:
        directory: where the checkpoint goes. An existing ddpm_lite checkpoint there is replaced; any other
            non-empty directory is refused (so a typo cannot wipe, say, your run's sample grids).
        model: the network (DDP / torch.compile wrappers are unwrapped). Its class must be registered.
        diffusion: the `GaussianDiffusion` (its `.config` is stored), or None for a network that is not a
            diffusion model's (the evaluation classifier, an autoencoder): config.json then has no
            "diffusion_config", and `load_model` (not `from_pretrained`) loads it.
        ema: an `ddpm_lite.ema.EMA` (its averaged weights go to ema.safetensors), or None.
        trainer_state: a nested dict for resuming (tensors anywhere), or None.
        extra: a JSON-able dict stored under "extra" in config.json (dataset, sample shape, class names, ...).
        autoencoder: for a latent diffusion model, the `AutoencoderKL` whose scaled latents it models: saved
            (weights only) in the subfolder `autoencoder/` of the same atomic write, and named in
            extra["autoencoder"]; `load_autoencoder` reads it back.
        text_encoder: for a text-to-image model, the frozen `CLIPTextEncoder` whose per-token states it
            cross-attends to: saved the same way in `text_encoder/`; `load_text_encoder` reads it back.
    """
    directory = Path(directory)
    model = unwrap_model(model)
    if directory.exists():
        if not directory.is_dir():
            raise CheckpointError(f"cannot save a checkpoint to {directory}: it is a file, not a directory")
        if any(directory.iterdir()) and not _is_ddpm_lite_checkpoint(directory):
            raise CheckpointError(
                f"refusing to replace {directory}: it is not empty and not a ddpm_lite checkpoint; choose another "
                f"directory (or delete it yourself)"
            )
    extra = dict(extra or {})
    subfolders = {}  # name -> (module, its config): frozen parts that travel with the model
    for name, module, role in ((AUTOENCODER_SUBDIR, autoencoder, "latent diffusion first stage"),
                               (TEXT_ENCODER_SUBDIR, text_encoder, "frozen text encoder")):
        if module is not None:
            module = unwrap_model(module)
            extra[name] = name
            subfolders[name] = (module, _checkpoint_config(module, None, False, {"role": role}))
    config = _checkpoint_config(model, diffusion, ema is not None, extra)

    with atomic_directory(directory) as tmp:
        _write_json(tmp / CONFIG_NAME, config)
        _write_bytes(tmp / WEIGHTS_NAME, _tensors_to_bytes(model.state_dict()))
        if ema is not None:
            _write_bytes(tmp / EMA_WEIGHTS_NAME, _tensors_to_bytes(ema.module.state_dict()))
        if trainer_state is not None:
            skeleton, tensors = flatten_state(trainer_state)
            _write_bytes(tmp / TRAINER_TENSORS_NAME, _tensors_to_bytes(tensors))
            _write_json(tmp / TRAINER_STATE_NAME, {"format_version": FORMAT_VERSION, "state": skeleton})
        for name, (module, sub_config) in subfolders.items():
            sub = tmp / name
            sub.mkdir()
            _write_json(sub / CONFIG_NAME, sub_config)
            _write_bytes(sub / WEIGHTS_NAME, _tensors_to_bytes(module.state_dict()))
            _fsync_dir(sub)
    return directory


# -- loading ------------------------------------------------------------------------------------------------

def _foreign_hint(directory: Path) -> str:
    names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    if "model_index.json" in names or any(n.startswith("diffusion_pytorch_model") for n in names) or \
            "scheduler_config.json" in names:
        return (" It looks like a Hugging Face diffusers checkpoint, which ddpm_lite cannot load: "
                "use diffusers for it, or train a model with `python -m ddpm_lite train`.")
    if any(n.endswith((".pt", ".pth", ".ckpt", ".bin")) for n in names):
        return (" It holds pickled PyTorch files (.pt/.pth/.ckpt/.bin), which ddpm_lite never loads "
                "(unpickling can run arbitrary code).")
    return ""


def resolve_checkpoint_dir(directory) -> Path:
    """The checkpoint directory for `directory`: the directory itself, or `<directory>/checkpoint` for a run."""
    directory = Path(directory)
    if not directory.exists():
        backups = sorted(directory.parent.glob(f".old-{directory.name}-*")) if directory.parent.is_dir() else []
        hint = (f" A backup from an interrupted save exists at {backups[0]}: rename it to {directory} to use it."
                if backups else "")
        raise CheckpointError(f"checkpoint directory {directory} does not exist.{hint}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; a checkpoint is a directory holding {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME}")
    if not (directory / CONFIG_NAME).exists() and (directory / RUN_SUBDIR / CONFIG_NAME).exists():
        return directory / RUN_SUBDIR
    if not (directory / CONFIG_NAME).exists():
        raise CheckpointError(
            f"{directory} is not a ddpm_lite checkpoint: it has no {CONFIG_NAME} (expected {CONFIG_NAME} + "
            f"{WEIGHTS_NAME}, as written by save_pretrained or the trainer).{_foreign_hint(directory)}"
        )
    return directory


def load_config(directory, diffusion: bool = True) -> dict:
    """Read and check a checkpoint's config.json. With `diffusion=False` it may lack "diffusion_config" (a
    network saved without a diffusion, like the evaluation classifier)."""
    directory = resolve_checkpoint_dir(directory)
    config = _read_json(directory / CONFIG_NAME)
    if config.get("format") != FORMAT_NAME:
        if "_class_name" in config or "_diffusers_version" in config:
            raise CheckpointError(f"{directory} is a Hugging Face diffusers checkpoint ({config.get('_class_name')}),"
                                  f" not a ddpm_lite one; ddpm_lite cannot load it.")
        raise CheckpointError(f"{directory / CONFIG_NAME} is not a ddpm_lite config (no \"format\": \"{FORMAT_NAME}\" "
                              f"entry): this is not a ddpm_lite checkpoint.{_foreign_hint(directory)}")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{directory} has checkpoint format version {version!r}, but this ddpm_lite reads "
                              f"versions <= {FORMAT_VERSION}: upgrade ddpm_lite to load it")
    for key in ("model_class", "model_config"):
        if key not in config:
            raise CheckpointError(f"{directory / CONFIG_NAME} lacks the {key!r} entry: the file is damaged")
    if diffusion and "diffusion_config" not in config:
        raise CheckpointError(f"{directory} holds a {config['model_class']} saved without a diffusion (no "
                              f"'diffusion_config' in {CONFIG_NAME}): load it with ddpm_lite.checkpoint.load_model")
    return config


def model_from_config(config: dict) -> nn.Module:
    """An untrained model built from a checkpoint config (as returned by `load_config`)."""
    registry = model_registry()
    name = config["model_class"]
    if name not in registry:
        raise CheckpointError(
            f"the checkpoint's model class {name!r} is unknown to ddpm_lite (known: {', '.join(sorted(registry))}): "
            f"a foreign checkpoint, or one saved with a custom class; register that class with "
            f"ddpm_lite.checkpoint.register_model before loading"
        )
    try:
        return registry[name](**config["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's model_config does not fit {name}: {e}") from None


def diffusion_from_config(config: dict):
    from .diffusion import GaussianDiffusion

    try:
        return GaussianDiffusion.from_config(config["diffusion_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's diffusion_config is invalid: {e}") from None


def load_weights(directory, model: nn.Module, which: str = "model") -> nn.Module:
    """Load model.safetensors (which="model") or ema.safetensors (which="ema") into `model`, checking every
    key and shape first so a mismatch names the tensor instead of failing deep inside torch."""
    if which not in ("model", "ema"):
        raise ValueError(f"which must be 'model' or 'ema', got {which!r}")
    directory = resolve_checkpoint_dir(directory)
    path = directory / (WEIGHTS_NAME if which == "model" else EMA_WEIGHTS_NAME)
    tensors = _read_safetensors(path)
    model = unwrap_model(model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [(k, tuple(tensors[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(f"{k} is {a} in the file but {b} in the model"
                                                        for k, a, b in wrong[:3]))
        if missing:
            parts.append(f"missing tensors: {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected tensors: {unexpected[:5]}")
        raise CheckpointError(f"{path} does not match the model built from {CONFIG_NAME} ({', '.join(parts)}); "
                              f"the weights and config come from different models")
    model.load_state_dict(tensors)
    return model


def from_pretrained(directory, device="cpu", use_ema: bool = True):
    """Load `(model, diffusion)` from a checkpoint (or trainer run) directory, model in eval mode.

    With use_ema=True the EMA weights are used when the checkpoint has them (they give the better samples),
    otherwise the raw trained weights. Raises `CheckpointError` with the reason if anything is wrong.
    """
    directory = resolve_checkpoint_dir(directory)
    config = load_config(directory)
    model = model_from_config(config)
    diffusion = diffusion_from_config(config)
    use_ema = use_ema and (config.get("has_ema") or (directory / EMA_WEIGHTS_NAME).exists())
    load_weights(directory, model, "ema" if use_ema else "model")
    return model.to(device).eval(), diffusion.to(device)


def load_model(directory, device="cpu", use_ema: bool = True) -> nn.Module:
    """Load just the network of a checkpoint directory, in eval mode: a diffusion model's (its diffusion is
    ignored) or one saved without a diffusion (the evaluation classifier). EMA weights when there are any and
    `use_ema`. Raises `CheckpointError` with the reason if anything is wrong."""
    directory = resolve_checkpoint_dir(directory)
    config = load_config(directory, diffusion=False)
    model = model_from_config(config)
    use_ema = use_ema and (config.get("has_ema") or (directory / EMA_WEIGHTS_NAME).exists())
    load_weights(directory, model, "ema" if use_ema else "model")
    return model.to(device).eval()


def _load_subfolder(directory: Path, config: dict, key: str, what: str, device, use_ema: bool):
    """The module in the subfolder that config.json's extra[key] names, or None if there is none."""
    sub = config.get("extra", {}).get(key)
    if not sub:
        return None
    if not isinstance(sub, str) or Path(sub).name != sub or sub in (".", ".."):
        raise CheckpointError(f"{directory / CONFIG_NAME}: extra.{key} must name a subfolder of the checkpoint, "
                              f"got {sub!r}")
    if not (directory / sub / CONFIG_NAME).exists():
        raise CheckpointError(f"{directory} is a {what} checkpoint but its {key} subfolder {sub}/ is missing or "
                              f"incomplete: copy the whole checkpoint directory, subfolders included")
    return load_model(directory / sub, device, use_ema)


def load_text_encoder(directory, device="cpu"):
    """The frozen `CLIPTextEncoder` of a text-to-image checkpoint (its `text_encoder/` subfolder), or None if it
    has none. `directory` may also be a CLIP checkpoint (its text tower is taken) or a text encoder's own."""
    from .text_encoder import CLIPTextEncoder

    directory = resolve_checkpoint_dir(directory)
    config = load_config(directory, diffusion=False)
    if config["model_class"] == "CLIP":
        return CLIPTextEncoder.from_clip(load_model(directory, device), source=str(directory))
    if config["model_class"] == "CLIPTextEncoder":
        return load_model(directory, device)
    encoder = _load_subfolder(directory, config, TEXT_ENCODER_SUBDIR, "text-to-image", device, True)
    if encoder is not None and not isinstance(encoder, CLIPTextEncoder):
        raise CheckpointError(f"{directory / TEXT_ENCODER_SUBDIR} holds a {type(encoder).__name__}, not a "
                              f"CLIPTextEncoder")
    return encoder


def load_autoencoder(directory, device="cpu", use_ema: bool = True):
    """The `AutoencoderKL` of a checkpoint, in eval mode, or None if it has none (a pixel-space model).

    `directory` is a latent diffusion checkpoint (its `autoencoder/` subfolder is loaded) or an autoencoder's
    own checkpoint (as `python -m ddpm_lite train-autoencoder` writes; its EMA weights when `use_ema`).
    """
    from .autoencoder import AutoencoderKL

    directory = resolve_checkpoint_dir(directory)
    config = load_config(directory, diffusion=False)
    if config["model_class"] == "AutoencoderKL":
        return load_model(directory, device, use_ema)
    autoencoder = _load_subfolder(directory, config, AUTOENCODER_SUBDIR, "latent diffusion", device, use_ema)
    if autoencoder is not None and not isinstance(autoencoder, AutoencoderKL):
        raise CheckpointError(f"{directory / AUTOENCODER_SUBDIR} holds a {type(autoencoder).__name__}, not an "
                              f"AutoencoderKL")
    return autoencoder


def load_trainer_state(directory) -> dict | None:
    """The nested trainer state saved with the checkpoint (tensors on CPU), or None if it has none."""
    directory = resolve_checkpoint_dir(directory)
    if not (directory / TRAINER_STATE_NAME).exists():
        return None
    meta = _read_json(directory / TRAINER_STATE_NAME)
    if "state" not in meta:
        raise CheckpointError(f"{directory / TRAINER_STATE_NAME} lacks its 'state' entry: the file is damaged")
    tensors = _read_safetensors(directory / TRAINER_TENSORS_NAME)
    return unflatten_state(meta["state"], tensors)


def train_seconds(directory) -> float | None:
    """The seconds of training a checkpoint records, or None: `config.json` extra.train_seconds (what `export`
    writes), else the trainer state's elapsed_seconds (a run directory, summed over resumes)."""
    directory = resolve_checkpoint_dir(directory)
    seconds = load_config(directory, diffusion=False).get("extra", {}).get("train_seconds")
    if seconds is None and (directory / TRAINER_STATE_NAME).exists():
        seconds = _read_json(directory / TRAINER_STATE_NAME).get("state", {}).get("elapsed_seconds")
    return float(seconds) if isinstance(seconds, (int, float)) else None
