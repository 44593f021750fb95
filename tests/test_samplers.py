"""Samplers: agreement with each other and with the exact answer of a Gaussian mixture."""

import pytest
import torch

from ddpm_lite import samplers
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.samplers import ddim_sigma, make_denoiser, sample, sample_steps, timestep_sequence
from ddpm_lite.toys import ExactGMMDenoiser, GaussianMixture


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_eps_model(x, t, y=None):
    return 0.3 * x + 0.01 * t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) / 100


@pytest.fixture
def gmm_setup():
    d = GaussianDiffusion("linear", 1000)
    mix = GaussianMixture.ring(k=4, radius=1.0, std=0.1)
    return d, mix, ExactGMMDenoiser(mix, d.schedule.alphas_cumprod)


def test_ddim_eta_one_variance_is_posterior_variance():
    d = GaussianDiffusion("cosine", 200)
    ab = d.schedule.alphas_cumprod
    for t in [1, 50, 199]:
        sigma = ddim_sigma(float(ab[t]), float(ab[t - 1]), eta=1.0)
        assert sigma ** 2 == pytest.approx(float(d.schedule.posterior_variance[t]), rel=1e-9)


def test_ddim_eta_one_on_all_steps_equals_ancestral():
    """DDIM with η = 1 over all T steps takes the same step (mean and variance) as DDPM with β̃ (Song et al.
    2021, §4.1): with the same noise draws the two trajectories coincide at every step."""
    d = GaussianDiffusion("linear", 100)
    x_T = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    den = make_denoiser(linear_eps_model, d, threshold=None)
    ddpm = list(samplers.ddpm_steps(den, d, x_T, generator=torch.Generator().manual_seed(2)))
    ddim = list(samplers.ddim_steps(den, d, x_T, steps=100, eta=1.0, spacing="trailing",
                                    generator=torch.Generator().manual_seed(2)))
    assert len(ddpm) == len(ddim) == 100
    for a, b in zip(ddpm, ddim):
        assert a.t == b.t
        assert torch.allclose(a.x, b.x, atol=1e-8), f"step {a.index} differs"


def test_ancestral_step_matches_p_sample():
    d = GaussianDiffusion("linear", 50)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 30, dtype=torch.long)
    noise = torch.randn(4, 2, dtype=torch.float64)
    out = d.p_sample(linear_eps_model, x, t, clip_denoised=False, noise=noise)
    mv = d.p_mean_variance(linear_eps_model, x, t, clip_denoised=False)
    assert torch.allclose(out["sample"], mv["mean"] + mv["variance"].sqrt() * noise)


@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpmpp2m", 20), ("ddim", 10)])
def test_few_step_samplers_match_the_mixture(gmm_setup, sampler, steps):
    """With the exact denoiser, deterministic samplers reproduce the mixture's mean and covariance."""
    d, mix, model = gmm_setup
    x = sample(model, d, (4000, 2), sampler=sampler, steps=steps, threshold=None,
               generator=torch.Generator().manual_seed(0))
    tol = 0.05 if steps >= 20 else 0.1
    assert torch.allclose(x.mean(0), mix.mean().float(), atol=tol)
    assert torch.allclose(torch.cov(x.T), mix.covariance().float(), atol=2 * tol)
    # Samples land on the ring's modes: distance to the nearest mean is a few standard deviations at most.
    dist = torch.cdist(x, mix.means.float()).min(1).values
    assert float(dist.median()) < (0.25 if steps >= 20 else 0.4)


def test_ode_samplers_converge_to_the_same_solution(gmm_setup):
    """DDIM (η = 0) and DPM-Solver++(2M) integrate the same ODE: both approach the 1000-step solution, DDIM
    at first order (error ~ 1/n) and DPM-Solver++ at second order (error ~ 1/n²) on logSNR-uniform steps."""
    d, mix, model = gmm_setup
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kw = dict(threshold=None, x_T=x_T, spacing="logsnr")
    ref = sample(model, d, x_T.shape, sampler="ddim", steps=1000, threshold=None, x_T=x_T)
    err = {(s, n): float((sample(model, d, x_T.shape, sampler=s, steps=n, **kw) - ref).norm(dim=1).mean())
           for s in ["ddim", "dpmpp2m"] for n in [10, 40]}
    assert err["dpmpp2m", 40] < 0.3 * err["ddim", 40]
    # Four times the steps: first order gains ~4x, second order ~16x (allow slack for the final jump).
    assert err["ddim", 10] / err["ddim", 40] < 6
    assert err["dpmpp2m", 10] / err["dpmpp2m", 40] > 8


def test_samplers_are_reproducible_with_a_seeded_generator():
    d = GaussianDiffusion("linear", 100)
    model = ExactGMMDenoiser(GaussianMixture.ring(k=4), d.schedule)
    for sampler, steps in [("ddpm", None), ("ddim", 10), ("dpmpp2m", 10)]:
        kw = dict(sampler=sampler, steps=steps, eta=0.5)
        a = sample(model, d, (16, 2), generator=torch.Generator().manual_seed(7), **kw)
        b = sample(model, d, (16, 2), generator=torch.Generator().manual_seed(7), **kw)
        c = sample(model, d, (16, 2), generator=torch.Generator().manual_seed(8), **kw)
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_zero_equals_conditional_sampling(gmm_setup):
    d, _, model = gmm_setup
    y = torch.tensor([0, 1, 2, 3] * 4)
    kw = dict(sampler="ddim", steps=10, y=y, threshold=None)
    plain = sample(model, d, (16, 2), generator=torch.Generator().manual_seed(0), **kw)
    w0 = sample(model, d, (16, 2), guidance=0.0, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(plain, w0)
    # Conditional samples land on their own component.
    nearest = torch.cdist(plain, model.mixture.means.float()).argmin(1)
    assert torch.equal(nearest, y)


def test_sample_steps_yield_every_intermediate(gmm_setup):
    d, _, model = gmm_setup
    steps = list(sample_steps(model, d, (5, 2), sampler="ddim", steps=7, generator=torch.Generator().manual_seed(0)))
    assert [s.index for s in steps] == list(range(7))
    assert steps[-1].t == -1 and all(s.pred_x0.shape == (5, 2) for s in steps)
    ts = [s.t for s in steps]
    assert ts == sorted(ts, reverse=True)


def test_timestep_spacings():
    assert timestep_sequence(1000, 10, "trailing")[0] == 999
    assert timestep_sequence(1000, 10, "leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timestep_sequence(1000, 10, "linspace")[0] == 999 and timestep_sequence(1000, 10, "linspace")[-1] == 0
    assert timestep_sequence(10, 10, "trailing") == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="steps must be between 1 and T = 10"):
        timestep_sequence(10, 20)
    seq = timestep_sequence(1000, 50, "logsnr", GaussianDiffusion("linear", 1000).schedule.alphas_cumprod)
    assert len(seq) == 50 and seq[0] == 999 and seq[-1] == 0
    with pytest.raises(ValueError, match="needs the schedule"):
        timestep_sequence(1000, 50, "logsnr")
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        timestep_sequence(10, 5, "quadratic")


def test_bad_sampler_arguments(gmm_setup):
    d, _, model = gmm_setup
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample(model, d, (2, 2), sampler="euler")
    with pytest.raises(ValueError, match="ancestral DDPM runs all T"):
        sample(model, d, (2, 2), sampler="ddpm", steps=50)
    with pytest.raises(ValueError, match=r"one label per sample: expected shape \[2\]"):
        sample(model, d, (2, 2), y=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="eta must be in"):
        sample(model, d, (2, 2), eta=2.0)


def test_dynamic_thresholding_keeps_x0_in_range_at_large_guidance(gmm_setup):
    d, _, model = gmm_setup
    y = torch.tensor([0, 1, 2, 3] * 8)
    x0s = {}
    for th in ["static", "dynamic"]:
        steps = list(sample_steps(model, d, (32, 2), sampler="ddim", steps=20, y=y, guidance=10.0, threshold=th,
                                  percentile=0.9, generator=torch.Generator().manual_seed(0)))
        x0s[th] = torch.stack([s.pred_x0 for s in steps])
    assert float(x0s["dynamic"].abs().max()) <= 1.0 + 1e-6
    # Static clipping piles predictions up exactly at the boundary; dynamic thresholding does not.
    at_edge = lambda v: float((v.abs() > 0.999).float().mean())
    assert at_edge(x0s["static"]) > at_edge(x0s["dynamic"])
