"""Image-to-image (SDEdit) and inpainting (RePaint) on the shipped 8×8 digits model."""

from pathlib import Path

import pytest
import torch

from ddpm_lite.checkpoint import from_pretrained
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.editing import img2img, inpaint, inpaint_steps, sampler_timesteps, sdedit_timesteps
from ddpm_lite.samplers import sample

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_model():
    torch.set_num_threads(1)
    return from_pretrained(REPO / "assets" / "checkpoints" / "digits")


@pytest.fixture(scope="module")
def real():
    ds = load_dataset("digits", "test")
    return ds.images[:8], ds.labels[:8]


def _noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_sdedit_timesteps_are_the_tail_of_the_sequence():
    seq = list(range(999, -1, -100))  # 10 steps
    assert sdedit_timesteps(seq, 1.0) == seq
    assert sdedit_timesteps(seq, 0.0) == []
    assert sdedit_timesteps(seq, 0.3) == [299, 199, 99]
    assert sdedit_timesteps(seq, 0.04) == []          # rounds to no step: the input comes back
    with pytest.raises(ValueError, match="strength"):
        sdedit_timesteps(seq, 1.5)


@pytest.mark.parametrize("sampler, steps", [("ddim", 20), ("dpmpp2m", 10)])
def test_img2img_at_strength_one_is_ordinary_sampling_from_the_same_noise(digits_model, real, sampler, steps):
    model, diffusion = digits_model
    x, y = real
    noise = _noise(x.shape)
    edited = img2img(model, diffusion, x, 1.0, sampler=sampler, steps=steps, y=y, noise=noise)
    plain = sample(model, diffusion, x.shape, sampler=sampler, steps=steps, y=y, x_T=noise)
    assert torch.equal(edited, plain)


def test_img2img_at_strength_zero_returns_the_input_and_small_strength_stays_close(digits_model, real):
    model, diffusion = digits_model
    x, y = real
    assert torch.equal(img2img(model, diffusion, x, 0.0, y=y, noise=_noise(x.shape)), x)
    dist = {s: (img2img(model, diffusion, x, s, steps=20, y=y, noise=_noise(x.shape)) - x).abs().mean().item()
            for s in (0.1, 0.5, 1.0)}
    assert dist[0.1] < 0.1, dist           # a light touch: the same digits
    assert dist[0.1] < dist[0.5] < dist[1.0], dist


def test_img2img_at_half_strength_keeps_the_layout_of_the_input(digits_model, real):
    """Relabelled SDEdit at s = 0.5 stays nearer its own input than to the other inputs."""
    model, diffusion = digits_model
    x, y = real
    out = img2img(model, diffusion, x, 0.5, steps=20, y=y, noise=_noise(x.shape, 1))
    d = torch.cdist(out.flatten(1), x.flatten(1))  # [edited, input]
    assert (d.argmin(1) == torch.arange(len(x))).float().mean() >= 0.75


def test_img2img_checks_its_input(digits_model):
    model, diffusion = digits_model
    with pytest.raises(ValueError, match="x / 127.5 - 1"):
        img2img(model, diffusion, torch.full((2, 1, 8, 8), 255.0), 0.5)
    with pytest.raises(ValueError, match="noise must have"):
        img2img(model, diffusion, torch.zeros(2, 1, 8, 8), 0.5, noise=torch.zeros(3, 1, 8, 8))


def test_ddpm_refuses_a_step_count_it_would_ignore(digits_model, real):
    model, diffusion = digits_model
    all_steps = list(range(999, -1, -1))
    assert sampler_timesteps(diffusion, "ddpm") == all_steps == sampler_timesteps(diffusion, "ddpm", 1000)
    with pytest.raises(ValueError, match="all T = 1000 steps; for fewer use 'ddim'"):
        sampler_timesteps(diffusion, "ddpm", 100)
    with pytest.raises(ValueError, match="got steps=100"):
        inpaint(model, diffusion, real[0], torch.ones(1, 1, 8, 8), sampler="ddpm", steps=100, y=real[1])


@pytest.mark.parametrize("sampler, resample", [("ddim", 1), ("ddim", 3), ("ddpm", 1)])
def test_inpainting_keeps_the_known_pixels_exactly(digits_model, real, sampler, resample):
    model, diffusion = digits_model
    x, y = real
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1.0                                   # keep the left half
    g = torch.Generator().manual_seed(0)
    if sampler == "ddpm":  # all T steps: a 100-step process keeps the test short (the model is off its schedule,
        diffusion = GaussianDiffusion(timesteps=100)  # which does not matter for which pixels are kept)
    out = inpaint(model, diffusion, x, mask, sampler=sampler, steps=None if sampler == "ddpm" else 20, y=y,
                  resample=resample, generator=g)
    assert torch.equal(out[..., :4], x[..., :4])
    assert (out[..., 4:] - x[..., 4:]).abs().mean() > 0      # the other half was drawn by the model
    assert out.abs().max() <= 1.0


def test_inpainting_with_extreme_masks(digits_model, real):
    model, diffusion = digits_model
    x, y = real
    x_T = _noise(x.shape)
    nothing_known = inpaint(model, diffusion, x, torch.zeros(1, 1, 8, 8), steps=20, y=y, x_T=x_T)
    assert torch.equal(nothing_known, sample(model, diffusion, x.shape, steps=20, y=y, x_T=x_T))
    assert torch.equal(inpaint(model, diffusion, x, torch.ones(1, 1, 8, 8), steps=20, y=y, x_T=x_T), x)


def test_inpainting_yields_each_step_and_counts_resampled_evaluations(digits_model, real):
    model, diffusion = digits_model
    x, y = real
    steps = list(inpaint_steps(model, diffusion, x, torch.ones(1, 1, 8, 8), steps=5, y=y, resample=2))
    assert [s.t for s in steps] == sampler_timesteps(diffusion, "ddim", 5)[1:] + [-1]
    assert [s.index for s in steps] == [1, 3, 5, 7, 9]


def test_inpainting_errors(digits_model, real):
    model, diffusion = digits_model
    x, _ = real
    with pytest.raises(ValueError, match="single-step samplers"):
        inpaint(model, diffusion, x, torch.ones(1, 1, 8, 8), sampler="dpmpp2m")
    with pytest.raises(ValueError, match="1 where the input is kept"):
        inpaint(model, diffusion, x, torch.full((1, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="broadcasts"):
        inpaint(model, diffusion, x, torch.ones(1, 1, 7, 8))
    with pytest.raises(ValueError, match="resample"):
        inpaint(model, diffusion, x, torch.ones(1, 1, 8, 8), resample=0)
