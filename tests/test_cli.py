import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lite.__main__ import build_parser, main

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
    a, _ = ckpt.from_pretrained(run_dir)
    b, _ = ckpt.from_pretrained(out)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert "exported" in capsys.readouterr().out
    # exporting a missing checkpoint is a one-line error
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_checkpoint_path(capsys, tmp_path):
    _expect_exit2(["sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")], capsys,
                  "does not exist")


def test_labels_out_of_range(run_dir, capsys, tmp_path):
    _expect_exit2(["sample", "--checkpoint", str(run_dir), "--labels", "3,12", "--out", str(tmp_path / "x.png")],
                  capsys, "label 12 is out of range: this model has 10 classes")
    _expect_exit2(["sample", "--checkpoint", str(run_dir), "--labels", "a,b", "--out", str(tmp_path / "x.png")],
                  capsys, "comma-separated integers")


def test_unknown_dataset_and_preset(capsys, tmp_path):
    _expect_exit2(["train", "--dataset", "imagenet", "--out", str(tmp_path / "r")], capsys, "unknown dataset")
    _expect_exit2(["train", "--preset", "huge", "--out", str(tmp_path / "r")], capsys, "unknown preset")
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
    args = parser.parse_args(["train"])  # no flags: class-conditional digits for 60 s
    assert (args.dataset, args.conditional, args.max_seconds, args.max_steps) == ("digits", True, 60.0, None)
    assert args.min_snr_gamma == "auto"  # the recipe decides (TrainConfig.resolved)
    for text, value in (("none", None), ("AUTO", "auto"), ("2.5", 2.5)):
        assert parser.parse_args(["train", "--min-snr-gamma", text]).min_snr_gamma == value


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "ddpm_lite", "sample", "--checkpoint", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ddpm_lite: error: checkpoint directory") and "Traceback" not in proc.stderr
