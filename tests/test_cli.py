import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lite.__main__ import TRAIN_EXTRA_FLAGS, build_parser, main
from ddpm_lite.train import RECIPES, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = ["--base-channels", "16", "--timesteps", "50", "--batch-size", "16", "--sample-n", "10", "--sample-steps", "2",
        "--num-threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny digits run trained through the CLI (5 steps)."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("cli") / "digits"
    assert main(["train", "--max-steps", "5", "--out", str(out), *TINY]) == 0
    torch.set_num_threads(before)
    return out


def test_train_writes_a_run(run_dir):
    assert (run_dir / "checkpoint" / "config.json").exists()
    assert (run_dir / "checkpoint" / "ema.safetensors").exists()
    assert (run_dir / "samples" / "step_000005.png").exists()
    assert (run_dir / "history.json").exists()


def test_sample_png_and_npz(run_dir, tmp_path, capsys):
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    code = main(["sample", "--checkpoint", str(run_dir), "--steps", "3", "--n", "7", "--labels", "0,1,2",
                 "--out", str(png), "--save-array", str(npz)])
    assert code == 0 and png.stat().st_size > 0
    data = np.load(npz)
    assert data["images"].shape == (7, 1, 8, 8) and data["images"].dtype == np.float32
    assert data["images"].min() >= -1.0 and data["images"].max() <= 1.0
    assert data["labels"].dtype == np.int64 and data["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert "wrote 7 samples" in capsys.readouterr().out


def test_sample_default_labels_cycle_all_classes(run_dir, tmp_path):
    npz = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run_dir / "checkpoint"), "--sampler", "dpmpp2m", "--steps", "2",
                 "--n", "12", "--guidance", "1.5", "--out", str(tmp_path / "g.png"), "--save-array", str(npz)]) == 0
    assert np.load(npz)["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_resume_continues_the_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = torch.get_num_threads()
    assert main(["train", "--resume", "--out", str(copy), "--max-steps", "7", "--num-threads", "1",
                 "--no-progress"]) == 0
    torch.set_num_threads(before)
    from ddpm_lite.checkpoint import load_trainer_state

    state = load_trainer_state(copy)
    assert state["step"] == 7 and state["config"]["model_kwargs"] == {"base_channels": 16}


def _expect_exit2(argv, capsys, pattern):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert pattern in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("ddpm_lite: error:")


def test_export_drops_trainer_state_and_loads(run_dir, tmp_path, capsys):
    from ddpm_lite import checkpoint as ckpt

    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(out), "--note", "made by a test"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors", "model.safetensors"]
    assert ckpt.load_config(out)["extra"]["note"] == "made by a test"
    assert ckpt.load_trainer_state(out) is None
    # the run's training time travels with the weights, though the trainer state does not
    run_seconds = ckpt.load_trainer_state(run_dir)["elapsed_seconds"]
    assert run_seconds > 0 and ckpt.train_seconds(run_dir) == run_seconds
    assert ckpt.load_config(out)["extra"]["train_seconds"] == round(run_seconds, 1) == ckpt.train_seconds(out)
    a, _ = ckpt.from_pretrained(run_dir)
    b, _ = ckpt.from_pretrained(out)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert "exported" in capsys.readouterr().out
    # exporting a missing checkpoint is a one-line error
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_ema_only_in_fp16_is_small_and_samples_like_the_ema(run_dir, tmp_path, capsys):
    from ddpm_lite import checkpoint as ckpt

    full, small = tmp_path / "full", tmp_path / "small"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(full)]) == 0
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(small), "--ema-only", "--fp16"]) == 0
    assert sorted(p.name for p in small.iterdir()) == ["config.json", "model.safetensors"]
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))  # noqa: E731
    assert size(small) < 0.3 * size(full)
    config = ckpt.load_config(small)
    assert config["extra"]["weights"] == "ema" and config["extra"]["stored_dtype"] == "float16"
    ema, _ = ckpt.from_pretrained(run_dir)        # the EMA weights in float32
    half, _ = ckpt.from_pretrained(small)
    for (ka, va), (kb, vb) in zip(ema.state_dict().items(), half.state_dict().items()):
        assert ka == kb and vb.dtype == torch.float32
        assert torch.allclose(va, vb, rtol=1e-3, atol=1e-4)
    # a run without EMA weights cannot be exported --ema-only
    assert main(["export", "--checkpoint", str(small), "--out", str(tmp_path / "x"), "--ema-only"]) == 2
    assert "no EMA weights" in capsys.readouterr().err


def test_bad_checkpoint_path(capsys, tmp_path):
    _expect_exit2(["sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")], capsys,
                  "does not exist")


def test_labels_out_of_range(run_dir, capsys, tmp_path):
    _expect_exit2(["sample", "--checkpoint", str(run_dir), "--labels", "3,12", "--out", str(tmp_path / "x.png")],
                  capsys, "label 12 is out of range: this model has 10 classes")
    _expect_exit2(["sample", "--checkpoint", str(run_dir), "--labels", "a,b", "--out", str(tmp_path / "x.png")],
                  capsys, "comma-separated integers")


def _expect_usage_error(argv, capsys, pattern):
    """A bad flag value is an argparse error: one line, exit status 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert pattern in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("ddpm_lite: error:")
    return err


def test_unknown_dataset_and_preset(capsys, tmp_path):
    from ddpm_lite.data import KNOWN_DATASETS
    from ddpm_lite.unet import PRESETS

    err = _expect_usage_error(["train", "--dataset", "imagenet", "--out", str(tmp_path / "r")], capsys,
                              "invalid choice: 'imagenet'")
    assert all(repr(name) in err for name in KNOWN_DATASETS)  # the error names the valid choices
    err = _expect_usage_error(["train", "--preset", "huge", "--out", str(tmp_path / "r")], capsys,
                              "invalid choice: 'huge'")
    assert all(repr(name) in err for name in ("auto", "toy_mlp", *PRESETS))
    assert not (tmp_path / "r").exists()


def test_unknown_sampler_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", "--sampler", "euler"])
    assert info.value.code == 2 and "invalid choice: 'euler'" in capsys.readouterr().err


def test_every_flag_has_help_text_and_shows_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"
        assert "(default: " in p.format_help()
    # no flags: nothing is set, so TrainConfig's defaults apply: class-conditional digits for 60 s
    assert vars(parser.parse_args(["train"])) == {"command": "train"}
    d = TrainConfig()
    assert (d.dataset, d.conditional, d.max_seconds, d.max_steps) == ("digits", True, 60.0, None)
    assert d.min_snr_gamma == "auto"  # the recipe decides (TrainConfig.resolved)
    for text, value in (("none", None), ("AUTO", "auto"), ("2.5", 2.5)):
        assert parser.parse_args(["train", "--min-snr-gamma", text]).min_snr_gamma == value


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "ddpm_lite", "sample", "--checkpoint", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ddpm_lite: error: checkpoint directory") and "Traceback" not in proc.stderr


# -- the train flags are generated from TrainConfig ----------------------------------------------------------

def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return parser, sub.choices["train"]


def test_train_help_lists_every_field(capsys):
    from dataclasses import fields

    _, train = _train_parser()
    dests = {a.dest for a in train._actions} - {"help"}
    names = {f.name for f in fields(TrainConfig)}
    assert dests - set(TRAIN_EXTRA_FLAGS) == names
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in names | set(TRAIN_EXTRA_FLAGS):
        assert f"--{name.replace('_', '-')}" in text, name
    for flag in ("--out", "--min-lr-ratio", "--sample-guidance", "--model-kwargs", "--no-conditional"):
        assert flag in text


def test_choices_come_from_the_package_constants(capsys):
    from dataclasses import fields

    from ddpm_lite.data import KNOWN_DATASETS
    from ddpm_lite.diffusion import LOSS_TYPES, PARAMETERIZATIONS
    from ddpm_lite.samplers import SAMPLERS
    from ddpm_lite.schedules import SCHEDULES
    from ddpm_lite.train import AMP_MODES, LR_SCHEDULES, PRESET_CHOICES

    meta = {f.name: f.metadata for f in fields(TrainConfig)}
    assert all(m.get("help") for m in meta.values())
    expected = {"dataset": KNOWN_DATASETS, "preset": PRESET_CHOICES, "schedule": SCHEDULES,
                "parameterization": PARAMETERIZATIONS, "loss_type": LOSS_TYPES, "lr_schedule": LR_SCHEDULES,
                "amp": AMP_MODES, "sampler": SAMPLERS}
    for name, constant in expected.items():
        assert meta[name]["choices"] == tuple(constant), name
    _, train = _train_parser()
    for action in train._actions:
        if action.dest in expected:
            assert tuple(action.choices) == tuple(expected[action.dest]), action.dest
    _expect_usage_error(["train", "--schedule", "quadratic"], capsys, "(choose from 'linear', 'cosine', 'sigmoid')")
    _expect_usage_error(["train", "--sampler", "euler"], capsys, "invalid choice: 'euler'")


def test_json_dict_bool_and_optional_flags(capsys):
    parser = build_parser()
    args = parser.parse_args(["train", "--model-kwargs", '{"attention_resolutions": [4], "base_channels": 8}',
                              "--no-conditional", "--hflip", "--grad-clip", "none", "--max-steps", "7",
                              "--out", "some/dir", "--min-lr-ratio", "0", "--sample-guidance", "1.5"])
    assert args.model_kwargs == {"attention_resolutions": [4], "base_channels": 8}
    assert (args.conditional, args.hflip, args.grad_clip, args.max_steps) == (False, True, None, 7)
    assert (args.out_dir, args.min_lr_ratio, args.sample_guidance) == ("some/dir", 0.0, 1.5)
    assert parser.parse_args(["train", "--out-dir", "x"]).out_dir == "x"
    assert parser.parse_args(["train", "--conditional"]).conditional is True
    _expect_usage_error(["train", "--model-kwargs", "{base_channels: 8}"], capsys, "expected a JSON object")
    _expect_usage_error(["train", "--model-kwargs", "[4]"], capsys, "expected a JSON object (in braces)")
    _expect_usage_error(["train", "--max-steps", "ten"], capsys, "argument --max-steps: expected int or none")
    _expect_usage_error(["train", "--min-snr-gamma", "big"], capsys, "expected float, 'auto' or none")


@pytest.fixture
def built(monkeypatch):
    """main(["train", ...]) that builds the Trainer but does not train: the trainers built are collected."""
    trainers = []

    def no_training(self, steps=None):
        trainers.append(self)
        return []

    monkeypatch.setattr(Trainer, "train", no_training)
    before = torch.get_num_threads()
    yield trainers
    torch.set_num_threads(before)


def test_explicit_flags_override_the_recipe_and_omitted_ones_take_it(built, tmp_path):
    digits = RECIPES["digits"]
    assert main(["train", "--lr", "1e-4", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    c = built[-1].config
    assert c.lr == 1e-4 and c.out_dir == str(tmp_path / "a")
    assert (c.batch_size, c.min_snr_gamma) == (digits["batch_size"], digits["min_snr_gamma"])  # the recipe's
    assert main(["train", "--batch-size", "32", "--min-snr-gamma", "none", "--no-progress"]) == 0
    c = built[-1].config
    assert (c.batch_size, c.lr, c.min_snr_gamma, c.out_dir) == (32, digits["lr"], None, "auto")
    # --base-channels is a shortcut into model_kwargs; it merges with --model-kwargs
    assert main(["train", "--base-channels", "16", "--model-kwargs", '{"dropout": 0.0}', "--num-threads", "1",
                 "--no-progress"]) == 0
    assert built[-1].config.model_kwargs == {"dropout": 0.0, "base_channels": 16}
    assert built[-1].raw_model.base_channels == 16


def test_resume_overrides_only_the_flags_given(run_dir, tmp_path, built, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "--lr", "2e-3", "--max-steps", "9"]) == 0
    from ddpm_lite.checkpoint import load_trainer_state

    c, saved = built[-1].config, load_trainer_state(copy)["config"]
    assert (c.lr, c.max_steps) == (2e-3, 9)
    for name in ("batch_size", "timesteps", "sample_n", "num_threads", "progress", "model_kwargs"):
        assert getattr(c, name) == saved[name], name  # omitted: the saved run's value, not TrainConfig's default
    capsys.readouterr()
    _expect_exit2(["train", "--resume", str(copy), "--base-channels", "8"], capsys, "cannot change when resuming")
    _expect_exit2(["train", "--resume", str(copy), "--model-kwargs", "{}"], capsys, "cannot change when resuming")


def test_non_finite_training_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    from ddpm_lite.train import NonFiniteError

    def diverge(self, steps=None):
        raise NonFiniteError("the loss became NaN/inf at step 3 although the batch was finite: ...\nNothing was "
                             "saved.", step=3, kind="loss")

    monkeypatch.setattr(Trainer, "train", diverge)
    before = torch.get_num_threads()
    assert main(["train", "--out", str(tmp_path / "r"), "--no-progress", "--num-threads", "1"]) == 1
    torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert err.startswith("ddpm_lite: error: the loss became NaN/inf at step 3") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


# -- editing from the command line: --init-image with --strength (SDEdit) or --keep-mask (RePaint) -------------

def test_sample_edits_an_init_image(run_dir, tmp_path, capsys):
    from torchvision.utils import save_image

    src = tmp_path / "src.npz"
    assert main(["sample", "--checkpoint", str(run_dir), "--steps", "4", "--n", "4", "--labels", "3",
                 "--out", str(tmp_path / "src.png"), "--save-array", str(src)]) == 0
    x = np.load(src)["images"]

    def run(*flags, n=4):
        out = tmp_path / "out.npz"
        code = main(["sample", "--checkpoint", str(run_dir), "--steps", "4", "--n", str(n), "--labels", "3",
                     "--init-image", str(src), "--out", str(tmp_path / "out.png"), "--save-array", str(out), *flags])
        return code, (np.load(out)["images"] if code == 0 else None)

    code, same = run("--strength", "0")
    assert code == 0 and np.array_equal(same, x)               # strength 0: the input comes back
    code, again = run("--strength", "1")                       # strength 1 with the source's seed: the same
    assert code == 0 and np.array_equal(again, x)              # noise, so ordinary sampling's result
    code, changed = run("--strength", "1", "--seed", "1", n=6)  # cycled to fill --n
    assert code == 0 and changed.shape == (6, 1, 8, 8) and not np.array_equal(changed[:4], x)
    mask = np.zeros((8, 8), dtype=np.float32)
    mask[:, :4] = 1
    np.savez(tmp_path / "mask.npz", mask=mask)
    code, painted = run("--keep-mask", str(tmp_path / "mask.npz"), "--resample", "2")
    assert code == 0 and np.array_equal(painted[..., :4], x[..., :4])
    # a PNG mask: white = keep
    save_image(torch.from_numpy(mask)[None], str(tmp_path / "mask.png"))
    code, painted_png = run("--keep-mask", str(tmp_path / "mask.png"))
    assert code == 0 and np.array_equal(painted_png[..., :4], x[..., :4])
    # a PNG init image of the model's size
    save_image((torch.from_numpy(x[:1]) + 1) / 2, str(tmp_path / "one.png"))
    code, kept = run("--strength", "0", n=2)
    assert code == 0
    out = tmp_path / "png.npz"
    assert main(["sample", "--checkpoint", str(run_dir), "--n", "2", "--labels", "3", "--init-image",
                 str(tmp_path / "one.png"), "--strength", "0", "--out", str(tmp_path / "p.png"),
                 "--save-array", str(out)]) == 0
    assert np.abs(np.load(out)["images"] - x[:1]).max() <= 1 / 127.5 + 1e-6  # 8-bit PNG round trip
    capsys.readouterr()


@pytest.mark.parametrize("flags, message", [
    (["--strength", "0.5"], "give it with --init-image"),
    (["--init-image", "MISSING.npz"], "does not exist"),
    (["--init-image", "SRC", "--strength", "0.5", "--keep-mask", "MASK"], "choose one edit"),
    (["--init-image", "SRC", "--strength", "2"], "strength must be in"),
    (["--init-image", "BIG"], "the model makes images of shape [1, 8, 8]"),
    (["--init-image", "SRC", "--keep-mask", "BADMASK"], "expected a mask of the image size [8, 8]"),
])
def test_sample_edit_errors_are_one_line(run_dir, tmp_path, capsys, flags, message):
    np.savez(tmp_path / "src.npz", images=np.zeros((2, 1, 8, 8), dtype=np.float32))
    np.savez(tmp_path / "big.npz", images=np.zeros((2, 1, 28, 28), dtype=np.float32))
    np.savez(tmp_path / "mask.npz", mask=np.ones((8, 8), dtype=np.float32))
    np.savez(tmp_path / "badmask.npz", mask=np.ones((7, 8), dtype=np.float32))
    names = {"SRC": "src.npz", "BIG": "big.npz", "MASK": "mask.npz", "BADMASK": "badmask.npz",
             "MISSING.npz": "missing.npz"}
    flags = [str(tmp_path / names[f]) if f in names else f for f in flags]
    assert main(["sample", "--checkpoint", str(run_dir), "--steps", "2", "--n", "2",
                 "--out", str(tmp_path / "x.png"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_max_steps_alone_means_no_time_limit(tmp_path):
    # `--max-steps N` must not silently stop at the default 60 s; both given: both apply
    from ddpm_lite.checkpoint import load_trainer_state

    for extra, expected in (([], None), (["--max-seconds", "500"], 500.0)):
        out = tmp_path / f"run{len(extra)}"
        assert main(["train", "--max-steps", "2", "--batch-size", "8", "--base-channels", "8", "--no-progress",
                     "--sample-every", "0", "--sample-n", "2", "--sample-steps", "1", "--out", str(out), *extra]) == 0
        assert load_trainer_state(out)["config"]["max_seconds"] == expected
