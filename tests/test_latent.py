"""Latent diffusion end to end, tiny: the autoencoder trained by the Trainer, latent training on pre-encoded
latents, checkpoints that carry their autoencoder, sampling and editing that decode, and the CLI."""

import json

import numpy as np
import pytest
import torch

from ddpm_lite import checkpoint as ckpt
from ddpm_lite import latent
from ddpm_lite.__main__ import main
from ddpm_lite.autoencoder import AutoencoderKL, AutoencoderObjective, autoencoder_loss
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.train import TrainConfig, Trainer
from ddpm_lite.unet import UNet

AE_KWARGS = {"channels": [8], "latent_channels": 2}  # 8×8 images -> 2×4×4 latents (f = 2)
UNET_KWARGS = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
               "num_heads": 1}


# tiny models: one intra-op thread is fastest and avoids oversubscribing a busy 2-core machine (conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def images(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def ae_config(out=None, **kw) -> TrainConfig:
    base = dict(dataset="tiny", objective="autoencoder", model_kwargs=AE_KWARGS, batch_size=8, max_steps=6,
                max_seconds=None, warmup_steps=2, log_every=2, save_every=0, sample_n=6, progress=False,
                out_dir=str(out) if out else None)
    return TrainConfig(**{**base, **kw})


def latent_config(ae_dir, out=None, **kw) -> TrainConfig:
    base = dict(dataset="tiny", autoencoder=str(ae_dir), model_kwargs=UNET_KWARGS, timesteps=20, batch_size=8,
                max_steps=6, max_seconds=None, warmup_steps=2, log_every=2, save_every=0, sample_n=4, sample_steps=2,
                label_dropout=0.2, progress=False, out_dir=str(out) if out else None)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    """A tiny autoencoder run trained through the Trainer (6 steps)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("latent") / "ae"
    Trainer(ae_config(out), dataset=images()).train()
    return out


def test_objective_is_per_image_and_matches_autoencoder_loss():
    torch.manual_seed(0)
    ae = AutoencoderKL(image_size=8, **AE_KWARGS)
    x = images(4)[0]
    per_image = AutoencoderObjective(0.5, "l2").training_losses(ae, x, y=torch.zeros(4, dtype=torch.long),
                                                                generator=torch.Generator().manual_seed(3))
    assert per_image["loss"].shape == per_image["recon"].shape == per_image["kl"].shape == (4,)
    mean = autoencoder_loss(ae, x, 0.5, "l2", generator=torch.Generator().manual_seed(3))
    assert torch.allclose(per_image["loss"].mean(), mean["loss"])
    with pytest.raises(ValueError, match="recon"):
        AutoencoderObjective(recon="ssim")


def test_autoencoder_trains_through_the_trainer(ae_dir):
    history = json.loads((ae_dir / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6] and all(np.isfinite(h["loss"]) for h in history)
    assert (ae_dir / "samples" / "step_000006.png").exists()  # the reconstruction grid
    config = ckpt.load_config(ae_dir, diffusion=False)
    assert config["model_class"] == "AutoencoderKL" and "diffusion_config" not in config
    assert config["extra"]["objective"] == "autoencoder" and config["extra"]["latent_shape"] == [2, 4, 4]
    scale = config["model_config"]["scale_factor"]
    assert scale != 1.0 and scale == config["extra"]["scale_factor"]
    ae = ckpt.load_autoencoder(ae_dir)  # an autoencoder's own checkpoint: itself (EMA weights), scale included
    assert isinstance(ae, AutoencoderKL) and ae.scale_factor == scale and not ae.training
    assert ckpt.load_model(ae_dir).config == ae.config
    with pytest.raises(ckpt.CheckpointError, match="without a diffusion"):
        ckpt.from_pretrained(ae_dir)


def test_autoencoder_run_reconstructs_resumes_exactly_and_has_no_samples(tmp_path):
    data = images()
    straight = Trainer(ae_config(), dataset=data)
    straight.train()
    inputs, recon = straight.reconstruct(3)
    assert inputs.shape == recon.shape == (3, 1, 8, 8) and recon.abs().max() <= 1
    assert straight.samples[-1]["inputs"].shape == (6, 1, 8, 8)
    with pytest.raises(ValueError, match="reconstruct"):
        straight.sample(2)
    first = Trainer(ae_config(tmp_path / "run"), dataset=data)
    first.train(steps=3)
    torch.manual_seed(999)
    resumed = Trainer.resume(tmp_path / "run", dataset=data)
    assert resumed.config.objective == "autoencoder" and resumed.step == 3
    resumed.train()
    for a, b in ((straight.raw_model, resumed.raw_model), (straight.ema.module, resumed.ema.module)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    assert straight.raw_model.scale_factor == resumed.raw_model.scale_factor  # measured at the same weights


@pytest.mark.parametrize("bad, message", [
    (dict(objective="autoencoder", autoencoder="somewhere"), "does not apply"),
    (dict(objective="autoencoder", preset="digits"), "model_kwargs"),
    (dict(objective="gan"), "unknown objective"),
    (dict(recon="l3"), "unknown recon"),
    (dict(autoencoder="somewhere", hflip=True), "hflip"),
])
def test_bad_latent_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"out_dir": None, "progress": False, **bad}).resolved().validate()


def test_autoencoder_must_be_an_autoencoder(tmp_path):
    model = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_groups=8)
    ckpt.save_pretrained(tmp_path / "pixel", model, GaussianDiffusion(timesteps=10))
    assert ckpt.load_autoencoder(tmp_path / "pixel") is None
    with pytest.raises(ckpt.CheckpointError, match="holds a UNet, not an AutoencoderKL"):
        Trainer(latent_config(tmp_path / "pixel"), dataset=images())


def test_latent_training_sampling_and_resume(ae_dir, tmp_path):
    data = images()
    ae = ckpt.load_autoencoder(ae_dir)
    straight = Trainer(latent_config(ae_dir), dataset=data)
    assert straight.images.shape == (48, 2, 4, 4) and straight.sample_shape == (2, 4, 4)
    assert torch.equal(straight.images, latent.encode_images(ae, data[0]))  # posterior means × scale factor
    assert isinstance(straight.raw_model, UNet) and straight.raw_model.num_classes == 10
    straight.train()
    x = straight.sample(5)
    assert x.shape == (5, 1, 8, 8) and x.abs().max() <= 1  # decoded images, not latents

    first = Trainer(latent_config(ae_dir, tmp_path / "run"), dataset=data)
    first.train(steps=3)
    run = tmp_path / "run" / "checkpoint"
    assert (run / "autoencoder" / "config.json").exists()
    extra = ckpt.load_config(run)["extra"]
    assert extra["autoencoder"] == "autoencoder" and extra["image_shape"] == [1, 8, 8]
    assert extra["sample_shape"] == [2, 4, 4]
    assert extra["latent_std"] == pytest.approx(float(first.images.double().std()))
    first.save()  # a second atomic replace keeps the subfolder
    assert (run / "autoencoder" / "model.safetensors").exists()
    torch.manual_seed(5)
    resumed = Trainer.resume(tmp_path / "run", dataset=data, autoencoder=str(tmp_path / "gone"))  # uses its own copy
    resumed.train()
    for (name, a), b in zip(straight.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), name

    model, diffusion = ckpt.from_pretrained(tmp_path / "run")
    carried = ckpt.load_autoencoder(tmp_path / "run")
    assert carried.config == ae.config and all(torch.equal(a, b) for a, b in
                                               zip(carried.state_dict().values(), ae.state_dict().values()))
    y = torch.tensor([0, 1, 2])
    out = latent.sample_images(model, diffusion, (3, 2, 4, 4), autoencoder=carried, steps=2, y=y,
                               generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 8, 8) and out.abs().max() <= 1
    z = latent.sample_latents(model, diffusion, (3, 2, 4, 4), steps=2, y=y, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(latent.decode_latents(carried, z), out)

    # editing: strength 0 returns the autoencoder's reconstruction; inpainting keeps the known pixels exactly
    x0 = data[0][:3]
    recon = latent.decode_latents(carried, latent.encode_images(carried, x0))
    assert torch.allclose(latent.img2img(model, diffusion, carried, x0, 0.0, y=y, steps=3), recon)
    assert latent.img2img(model, diffusion, carried, x0, 0.6, y=y, steps=3).shape == (3, 1, 8, 8)
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 2:5, 3:6] = 0
    filled = latent.inpaint(model, diffusion, carried, x0, keep, y=y, steps=3)
    assert torch.equal(filled[..., :2, :], x0[..., :2, :]) and filled.abs().max() <= 1


def test_latent_mask_keeps_only_fully_kept_positions():
    ae = AutoencoderKL(image_size=(6, 5), channels=(8, 8), latent_channels=2)  # 6×5 -> 3×3 -> 2×2
    keep = torch.ones(1, 1, 6, 5)
    keep[..., 0, 0] = 0
    m = latent.latent_mask(ae, keep)
    assert m.shape == (1, 1, 2, 2) and m.flatten().tolist() == [0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="image size"):
        latent.latent_mask(ae, torch.ones(1, 1, 8, 8))


# -- the command line ----------------------------------------------------------------------------------------

TINY = ["--dataset", "digits", "--max-steps", "3", "--batch-size", "8", "--warmup-steps", "1", "--log-every", "1",
        "--sample-n", "4", "--num-threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    before = torch.get_num_threads()
    root = tmp_path_factory.mktemp("latent_cli")
    assert main(["train-autoencoder", "--out", str(root / "ae"), "--model-kwargs", json.dumps(AE_KWARGS), *TINY]) == 0
    assert main(["train", "--autoencoder", str(root / "ae"), "--out", str(root / "lat"), "--timesteps", "20",
                 "--sample-steps", "2", "--model-kwargs", json.dumps(UNET_KWARGS), *TINY]) == 0
    torch.set_num_threads(before)
    return root


def test_cli_trains_and_samples_a_latent_model(cli_runs, tmp_path, capsys):
    assert ckpt.load_config(cli_runs / "ae", diffusion=False)["model_config"]["scale_factor"] != 1.0
    assert (cli_runs / "lat" / "checkpoint" / "autoencoder" / "config.json").exists()
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(cli_runs / "lat"), "--n", "5", "--steps", "2", "--labels", "3",
                 "--out", str(png), "--save-array", str(npz)]) == 0
    arr = np.load(npz)
    assert arr["images"].shape == (5, 1, 8, 8) and np.abs(arr["images"]).max() <= 1 and png.stat().st_size > 0
    # image-to-image at strength 0: the input as the autoencoder reconstructs it
    out = tmp_path / "e.npz"
    assert main(["sample", "--checkpoint", str(cli_runs / "lat"), "--n", "5", "--steps", "3", "--labels", "3",
                 "--init-image", str(npz), "--strength", "0", "--out", str(tmp_path / "e.png"), "--save-array", str(out)]) == 0
    ae = ckpt.load_autoencoder(cli_runs / "lat")
    x = torch.from_numpy(arr["images"])
    expected = latent.decode_latents(ae, latent.encode_images(ae, x))
    assert np.allclose(np.load(out)["images"], expected.numpy(), atol=1e-5)
    # inpainting: known pixels kept exactly
    mask = np.ones((8, 8), dtype=np.float32)
    mask[2:6, 2:6] = 0
    np.savez(tmp_path / "m.npz", mask=mask)
    assert main(["sample", "--checkpoint", str(cli_runs / "lat"), "--n", "5", "--steps", "3", "--labels", "3",
                 "--init-image", str(npz), "--keep-mask", str(tmp_path / "m.npz"), "--out", str(tmp_path / "i.png"),
                 "--save-array", str(out)]) == 0
    filled = np.load(out)["images"]
    assert np.array_equal(filled[..., mask == 1], arr["images"][..., mask == 1])
    # export keeps the autoencoder subfolder
    assert main(["export", "--checkpoint", str(cli_runs / "lat"), "--out", str(tmp_path / "exp")]) == 0
    assert ckpt.load_autoencoder(tmp_path / "exp").config == ae.config
    capsys.readouterr()


def test_cli_latent_errors_are_one_line(cli_runs, tmp_path, capsys):
    def fails(argv, pattern):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("ddpm_lite: error:") and pattern in err and err.count("\n") == 1, err

    fails(["sample", "--checkpoint", str(cli_runs / "ae")], "holds an autoencoder")
    fails(["train", "--autoencoder", str(cli_runs / "lat" / "checkpoint" / "autoencoder"), "--dataset", "mnist5k",
           "--max-steps", "1", "--out", str(tmp_path / "x")], "takes images of shape [1, 8, 8]")
    fails(["train", "--autoencoder", str(tmp_path / "missing"), "--max-steps", "1", "--out", str(tmp_path / "x")],
          "does not exist")


def test_train_autoencoder_help_lists_only_the_flags_that_apply(capsys):
    from ddpm_lite.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    flags = {o for a in sub.choices["train-autoencoder"]._actions for o in a.option_strings}
    for flag in ("--kl-weight", "--recon", "--max-seconds", "--resume", "--model-kwargs", "--sample-every", "--out"):
        assert flag in flags, flag
    for flag in ("--timesteps", "--schedule", "--sampler", "--autoencoder", "--objective", "--base-channels"):
        assert flag not in flags, flag
    with pytest.raises(SystemExit) as info:
        main(["train-autoencoder", "--help"])
    assert info.value.code == 0 and "scale factor" in capsys.readouterr().out
