import json
import math

import pytest
import torch

from ddpm_lite import checkpoint as ckpt
from ddpm_lite.train import NonFiniteError, TrainConfig, Trainer
from ddpm_lite.unet import UNet


# tiny models: one intra-op thread is fastest and avoids oversubscribing a busy 2-core machine (conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def points(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.1 + labels[:, None].float() - 0.5
    return x, labels


def cfg(tmp_path=None, **kw) -> TrainConfig:
    """A tiny, fast run: 2-D points with a small ToyMLP."""
    base = dict(dataset="points", preset="toy_mlp", model_kwargs={"hidden": 16, "num_blocks": 1}, timesteps=50,
                batch_size=16, max_steps=10, max_seconds=None, warmup_steps=2, log_every=2, save_every=0,
                sample_n=8, sample_steps=4, progress=False, out_dir=str(tmp_path / "run") if tmp_path else None)
    return TrainConfig(**{**base, **kw})


def tiny_unet() -> UNet:
    torch.manual_seed(3)
    return UNet(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(), num_groups=8, num_classes=10, dropout=0.1)


def images(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def test_history_lr_schedule_and_outputs(tmp_path):
    trainer = Trainer(cfg(tmp_path, max_steps=10), dataset=points())
    history = trainer.train()
    assert trainer.step == 10 and [h["step"] for h in history] == [2, 4, 6, 8, 10]
    for h in history:
        assert set(h) == {"step", "loss", "lr", "images_per_sec", "time"}
        assert math.isfinite(h["loss"]) and h["images_per_sec"] > 0
    # warm-up to lr over 2 steps, then cosine down to 10% at max_steps
    c = trainer.config
    assert trainer.lr_at(0) == pytest.approx(c.lr / 2) and trainer.lr_at(1) == pytest.approx(c.lr)
    assert trainer.lr_at(10) == pytest.approx(0.1 * c.lr) and trainer.lr_at(6) == pytest.approx(0.55 * c.lr)
    assert history[-1]["lr"] == pytest.approx(trainer.lr_at(9))
    # outputs: checkpoint (loadable), history.json, samples kept in memory (2-D points: no PNG)
    run = tmp_path / "run"
    assert json.loads((run / "history.json").read_text()) == history
    model, diffusion = ckpt.from_pretrained(run)
    assert model.num_classes == 2 and diffusion.num_timesteps == 50
    assert ckpt.load_config(run)["extra"]["sample_shape"] == [2]
    assert trainer.samples[-1]["step"] == 10 and trainer.samples[-1]["images"].shape == (8, 2)


def test_max_seconds_stops_training():
    trainer = Trainer(cfg(max_steps=None, max_seconds=0.3), dataset=points())
    trainer.train()
    assert trainer.step > 0
    assert trainer.elapsed < 0.3 + 5.0  # one step past the limit at most (plus a slow CI machine)


def test_time_bounded_run_decays_lr_over_its_wall_clock_budget():
    trainer = Trainer(cfg(max_steps=None, max_seconds=0.5, warmup_steps=0, log_every=1), dataset=points())
    c = trainer.config
    # the cosine over the time fraction: full lr at the start, half-way down in the middle, min at the end
    assert trainer.lr_at(5, 0.0) == pytest.approx(c.lr)
    assert trainer.lr_at(5, 0.5) == pytest.approx(0.55 * c.lr)
    assert trainer.lr_at(5, 1.7) == pytest.approx(0.1 * c.lr)
    assert trainer.lr_at(5) == pytest.approx(c.lr)  # outside train(): no time horizon
    history = trainer.train()
    lrs = [h["lr"] for h in history]
    assert len(lrs) >= 2 and lrs[-1] < lrs[0] and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert trainer._time_fraction() is None  # cleared after train()


def test_exact_resume_is_bitwise_identical(tmp_path):
    # UNet with dropout: also checks that the global RNG (dropout masks) is restored
    data = images()
    config = dict(dataset="tiny", max_steps=8, batch_size=8, timesteps=50, warmup_steps=3, log_every=2,
                  label_dropout=0.3, sample_n=4, sample_steps=2, progress=False, max_seconds=None, save_every=0)
    straight = Trainer(TrainConfig(**config, out_dir=None), model=tiny_unet(), dataset=data)
    straight.train()

    first = Trainer(TrainConfig(**config, out_dir=str(tmp_path / "run")), model=tiny_unet(), dataset=data)
    first.train(steps=4)
    assert first.step == 4
    torch.manual_seed(12345)  # a "fresh process": whatever the global RNG was, resume restores it
    resumed = Trainer.resume(tmp_path / "run", dataset=data)
    assert resumed.step == 4 and resumed.out_dir == tmp_path / "run"
    resumed.train()
    assert resumed.step == 8
    for a, b in ((straight.raw_model, resumed.raw_model), (straight.ema.module, resumed.ema.module)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    assert [h["step"] for h in resumed.history] == [2, 4, 6, 8]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_keyboard_interrupt_saves_a_checkpoint(tmp_path, capsys):
    trainer = Trainer(cfg(tmp_path, max_steps=50), dataset=points())
    real_step = trainer.train_step

    def step_then_interrupt():
        if trainer.step == 3:
            raise KeyboardInterrupt
        return real_step()

    trainer.train_step = step_then_interrupt
    trainer.train()  # returns normally
    assert trainer.interrupted and trainer.step == 3
    assert "interrupted at step 3" in capsys.readouterr().out
    assert ckpt.load_trainer_state(tmp_path / "run")["step"] == 3
    resumed = Trainer.resume(tmp_path / "run", dataset=points(), max_steps=5)
    resumed.train()
    assert resumed.step == 5 and not resumed.interrupted


def test_a_failing_sample_grid_does_not_cost_the_checkpoint(tmp_path):
    # the final (and periodic) checkpoint is written before the sample grid is drawn: a grid that fails (here a
    # sampler that raises; once, a module edited under a long run) must not lose the steps since the last save
    trainer = Trainer(cfg(tmp_path, max_steps=6, save_every=4, sample_every=4), dataset=points())

    def broken_sample(*args, **kwargs):
        raise RuntimeError("the grid failed")

    trainer.sample = broken_sample
    with pytest.raises(RuntimeError, match="the grid failed"):
        trainer.train()                                  # the periodic grid at step 4 fails...
    assert ckpt.load_trainer_state(tmp_path / "run")["step"] == 4   # ...after step 4 was saved
    resumed = Trainer.resume(tmp_path / "run", dataset=points(), max_steps=6)
    resumed.sample = broken_sample
    with pytest.raises(RuntimeError, match="the grid failed"):
        resumed.train()                                  # the final grid fails after the final save
    assert ckpt.load_trainer_state(tmp_path / "run")["step"] == 6


def test_label_dropout_grad_accum_and_images(tmp_path):
    x, y = images()
    trainer = Trainer(TrainConfig(max_steps=2, batch_size=8, grad_accum=2, timesteps=50, label_dropout=0.5,
                                  sample_n=10, sample_steps=2, progress=False, max_seconds=None,
                                  out_dir=str(tmp_path / "img")), model=tiny_unet(), dataset=(x, y))
    batches = [trainer._next_batch()[1] for _ in range(50)]
    dropped = torch.cat(batches) == 10  # the null class
    assert 0.35 < dropped.float().mean() < 0.65
    trainer.train()
    assert trainer.step == 2
    assert (tmp_path / "img" / "samples" / "step_000002.png").exists()
    assert trainer.samples[-1]["images"].shape == (10, 1, 8, 8)


def test_default_digits_model_from_config():
    config = TrainConfig(model_kwargs={"base_channels": 16}, max_steps=1, batch_size=8, out_dir=None,
                         progress=False, timesteps=20, sample_n=2, sample_steps=1)
    trainer = Trainer(config)
    assert isinstance(trainer.raw_model, UNet) and trainer.raw_model.num_classes == 10
    assert trainer.images.shape[1:] == (1, 8, 8)
    trainer.train()
    assert trainer.step == 1


def test_recipes_fill_only_what_is_left_unset():
    from ddpm_lite.train import DEFAULT_MIN_SNR_GAMMA, RECIPES

    digits = TrainConfig().resolved()
    assert (digits.batch_size, digits.lr, digits.min_snr_gamma) == (
        RECIPES["digits"]["batch_size"], RECIPES["digits"]["lr"], RECIPES["digits"]["min_snr_gamma"])
    assert TrainConfig(dataset="cifar10").resolved().min_snr_gamma == DEFAULT_MIN_SNR_GAMMA
    assert TrainConfig(preset="mnist", dataset="digits").resolved().lr == RECIPES["mnist"]["lr"]
    # explicit values win; None keeps min-SNR off (plain L_simple), it is not "unset"
    mine = TrainConfig(batch_size=7, lr=1e-4, min_snr_gamma=None).resolved()
    assert (mine.batch_size, mine.lr, mine.min_snr_gamma) == (7, 1e-4, None)
    assert TrainConfig(min_snr_gamma=2.5).resolved().min_snr_gamma == 2.5
    trainer = Trainer(TrainConfig(out_dir=None, progress=False, max_steps=0, model_kwargs={"base_channels": 16}))
    assert trainer.diffusion.min_snr_gamma == RECIPES["digits"]["min_snr_gamma"]
    assert trainer.config.min_snr_gamma == RECIPES["digits"]["min_snr_gamma"]  # saved resolved, not "auto"


@pytest.mark.parametrize("bad, message", [
    (dict(max_steps=None, max_seconds=None), "never stops"),
    (dict(lr_schedule="linear"), "unknown lr_schedule"),
    (dict(amp="fp8"), "unknown amp"),
    (dict(batch_size=0), "batch_size"),
    (dict(min_snr_gamma=0.0), "min_snr_gamma"),
    (dict(min_snr_gamma="five"), "min_snr_gamma"),
    (dict(label_dropout=1.0), "label_dropout"),
    (dict(preset="huge"), "unknown preset"),
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(dataset="swiss_roll"), "conditional=True needs class labels"),
    (dict(sampler="euler"), "unknown sampler"),
])
def test_bad_config_raises_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        Trainer(TrainConfig(**{"out_dir": None, "progress": False, **bad}))


def test_resume_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        Trainer.resume(tmp_path / "missing")
    model = UNet(image_size=8, in_channels=1, base_channels=16, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_groups=8)
    from ddpm_lite.diffusion import GaussianDiffusion

    ckpt.save_pretrained(tmp_path / "plain", model, GaussianDiffusion(timesteps=10))
    with pytest.raises(ckpt.CheckpointError, match="no trainer state"):
        Trainer.resume(tmp_path / "plain")


# -- NaN/inf data or loss: a clear error, and the last good checkpoint stays on disk --------------------------

def _checkpoint_files(run) -> dict:
    return {p.name: p.read_bytes() for p in sorted((run / "checkpoint").iterdir())}


def _finite(module) -> bool:
    return all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())


def _nan_loss_at(trainer, step: int, monkeypatch):
    """Make the loss NaN during the step that ends at `step` (1-based, as in the history)."""
    real = trainer.diffusion.training_losses

    def losses(*args, **kwargs):
        out = real(*args, **kwargs)
        if trainer.step == step - 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer.diffusion, "training_losses", losses)


@pytest.mark.parametrize("every_step", [True, False], ids=["cpu-check-every-step", "gpu-style-deferred-check"])
def test_nan_data_stops_training_naming_the_step_and_the_samples(tmp_path, every_step):
    x, y = points(32)
    x[[3, 17]] = float("nan")
    x[20, 1] = float("inf")
    trainer = Trainer(cfg(tmp_path, batch_size=32), dataset=(x, y))  # every batch holds the 3 bad samples
    trainer._check_every_step = every_step  # False: the GPU path, which checks only at log/save/sample steps
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    with pytest.raises(NonFiniteError, match="3 of 32 samples in the batch at step 1 contain NaN/inf") as info:
        trainer.train()
    message = str(info.value)
    assert "dataset 'points' has 3 such samples out of 32 (indices 3, 17, 20)" in message
    assert "Clean the data" in message and "Nothing was saved" in message
    assert (info.value.step, info.value.kind, info.value.bad_samples) == (1, "data", 3)
    assert trainer.history == [] and not (tmp_path / "run" / "checkpoint").exists()
    if every_step:  # stopped before the step: nothing changed
        assert trainer.step == 0
        assert all(torch.equal(v, before[k]) for k, v in trainer.raw_model.state_dict().items())
    else:  # found at the first log step; the weights in memory are gone, and the message says so
        assert trainer.step == 2 and "no longer finite" in message and not _finite(trainer.raw_model)


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(cfg(tmp_path, max_steps=10, save_every=4), dataset=points())
    trainer.train(steps=4)  # a good checkpoint at step 4
    good = _checkpoint_files(run)
    _nan_loss_at(trainer, 6, monkeypatch)
    with pytest.raises(NonFiniteError, match="the loss became NaN/inf at step 6 although the batch was finite"
                       ) as info:
        trainer.train()
    message = str(info.value)
    assert "Lower the learning rate" in message
    assert f"the last good checkpoint, {run / 'checkpoint'} (step 4), is untouched" in message
    assert info.value.kind == "loss" and trainer.step == 5 and [h["step"] for h in trainer.history] == [2, 4]
    assert _checkpoint_files(run) == good
    model, _ = ckpt.from_pretrained(run)
    assert _finite(model) and ckpt.load_trainer_state(run)["step"] == 4
    # on the CPU the bad step was not applied: the trainer is intact and can go on
    assert _finite(trainer.raw_model) and _finite(trainer.ema.module)
    monkeypatch.undo()
    trainer.train()
    assert trainer.step == 10 and _finite(trainer.raw_model)


def test_deferred_check_never_saves_nan_weights(tmp_path, monkeypatch):
    """The GPU path (no host sync per step), forced on the CPU: the NaN loss of step 6 is only seen when step 8
    is about to be saved, and that save is refused, as is any later one."""
    run = tmp_path / "run"
    trainer = Trainer(cfg(tmp_path, max_steps=12, save_every=4, log_every=10), dataset=points())
    trainer._check_every_step = False
    trainer.train(steps=4)
    good = _checkpoint_files(run)
    _nan_loss_at(trainer, 6, monkeypatch)
    with pytest.raises(NonFiniteError, match="the loss became NaN/inf at step 6") as info:
        trainer.train()
    assert trainer.step == 8 and "here at step 8" in str(info.value) and not _finite(trainer.raw_model)
    assert _checkpoint_files(run) == good
    with pytest.raises(NonFiniteError):
        trainer.save()
    assert _checkpoint_files(run) == good and _finite(ckpt.from_pretrained(run)[0])
