import math

import numpy as np
import pytest
import torch

from ddpm_lite.schedules import NoiseSchedule, cosine_beta_schedule, linear_beta_schedule


def test_linear_endpoints_follow_ho_et_al():
    betas = linear_beta_schedule(1000)
    assert float(betas[0]) == pytest.approx(1e-4)
    assert float(betas[-1]) == pytest.approx(0.02)
    # Scaled by 1000/T for shorter chains: same total noise.
    short = linear_beta_schedule(100)
    assert float(short[0]) == pytest.approx(1e-3) and float(short[-1]) == pytest.approx(0.2)


@pytest.mark.parametrize("T", [2, 10, 20])
def test_linear_short_chains_stay_valid(T):
    """1000/T scaling would give β ≥ 1 below T = 20 (ᾱ ≤ 0): β is clipped at 0.999 instead."""
    s = NoiseSchedule("linear", T)
    assert float(s.betas.max()) <= 0.999 and bool((s.alphas_cumprod > 0).all())
    assert torch.isfinite(s.sqrt_recip_alphas_cumprod).all() and float(s.alphas_cumprod[-1]) < 1e-2


def test_cosine_matches_closed_form():
    T, s = 1000, 0.008
    betas = cosine_beta_schedule(T)
    alphas_cumprod = torch.cumprod(1 - betas, 0).numpy()
    t = np.arange(1, T + 1)
    f = np.cos(((t / T) + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    # Equal wherever clipping at 0.999 has not kicked in (the very last steps).
    assert np.allclose(alphas_cumprod[:-5], f[:-5], rtol=1e-9, atol=1e-12)
    assert float(betas.max()) <= 0.999


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_derived_coefficients(name):
    s = NoiseSchedule(name, 200)
    b = s.betas
    a = 1 - b
    ab = torch.cumprod(a, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    assert torch.allclose(s.alphas_cumprod, ab)
    assert torch.allclose(s.alphas_cumprod_prev, ab_prev)
    assert torch.allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, torch.ones_like(ab))
    assert torch.allclose(s.sqrt_recipm1_alphas_cumprod ** 2, 1 / ab - 1)
    assert torch.allclose(s.posterior_variance, b * (1 - ab_prev) / (1 - ab))
    assert float(s.posterior_variance[0]) == 0.0
    assert float(s.posterior_log_variance_clipped[0]) == pytest.approx(math.log(float(s.posterior_variance[1])))
    assert torch.allclose(s.snr, ab / (1 - ab))
    # ᾱ decreases monotonically from ~1 to ~0: information disappears.
    assert (ab[1:] < ab[:-1]).all() and float(ab[0]) > 0.9 and float(ab[-1]) < 0.01


def test_to_follows_dtype_and_device():
    s = NoiseSchedule("cosine", 50).to("cpu", torch.float32)
    assert s.betas.dtype == torch.float32 and s.posterior_mean_coef2.dtype == torch.float32
    assert s.device.type == "cpu"


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        NoiseSchedule("quadratic", 10)
    with pytest.raises(ValueError, match="timesteps must be an integer >= 2"):
        NoiseSchedule("linear", 1)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        NoiseSchedule(betas=torch.tensor([0.1, 1.5]))
