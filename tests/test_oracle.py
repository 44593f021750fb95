"""ddpm_lite.oracle: the tilted distribution against closed forms and quadrature, classifier-free guidance with
the exact denoiser against it, and the discretisation / model error split. Small 2D problems, one thread."""

import math

import pytest
import torch

from ddpm_lite import oracle
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.toy_mlp import ToyMLP
from ddpm_lite.toys import ExactGMMDenoiser, GaussianMixture


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion("linear", 1000)


def three_classes():
    """Three overlapping isotropic classes (the toy of notebook 08)."""
    return GaussianMixture([1.0, 1.0, 1.0], [[-0.6, -0.35], [0.6, -0.35], [0.0, 0.7]], stds=0.3)


def _grid_integral(fn, lo, hi, n=801):
    """Midpoint rule over the square [lo, hi]^2 of fn(points) -> [N] values."""
    h = (hi - lo) / n
    axis = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    return pts, fn(pts), h * h


# -- the tilted distribution -----------------------------------------------------------------------------------


@pytest.mark.parametrize("w", [0.5, 2.0, 5.0])
def test_tilt_of_two_gaussians_is_the_closed_form_gaussian(w):
    # N(a, diag s1²)^{1+w} N(b, diag s2²)^{-w} ∝ N(μ, diag v) with 1/v = (1+w)/s1² − w/s2² and
    # μ = v ((1+w) a/s1² − w b/s2²), per coordinate (s2 > s1 keeps 1/v > 0)
    a, b = torch.tensor([0.3, -0.5], dtype=torch.float64), torch.tensor([-0.2, 0.4], dtype=torch.float64)
    s1, s2 = torch.tensor([0.3, 0.5], dtype=torch.float64) ** 2, torch.tensor([0.8, 1.2], dtype=torch.float64) ** 2
    cond = GaussianMixture([1.0], a[None], variances=s1[None])
    uncond = GaussianMixture([1.0], b[None], variances=s2[None])
    tilted = oracle.TiltedMixture(cond, uncond, w)
    v = 1 / ((1 + w) / s1 - w / s2)
    mu = v * ((1 + w) * a / s1 - w * b / s2)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = GaussianMixture([1.0], mu[None], variances=v[None]).log_prob(x)
    assert torch.allclose(tilted.log_prob(x), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("w", [0.0, 1.0, 4.0])
def test_tilted_class_density_integrates_to_one_and_reduces_to_the_class_at_w0(w):
    mix = three_classes()
    tilted = oracle.TiltedMixture.for_class(mix, 0, w)
    pts, logp, area = _grid_integral(tilted.log_prob, -3.0, 3.0)
    assert float(logp.exp().sum() * area) == pytest.approx(1.0, abs=1e-4)  # quadrature normaliser vs grid
    cond = GaussianMixture([1.0], mix.means[:1].double(), variances=mix.variances[:1].double())
    if w == 0:
        assert tilted.log_normaliser == pytest.approx(0.0, abs=1e-12)
        assert torch.allclose(tilted.log_prob(pts[:100]), cond.log_prob(pts[:100]))
    # p(x|c) p(c|x)^w / Z, written with the mixture's own responsibilities
    resp = mix.responsibilities(pts[:500].float()).double()[:, 0]
    by_bayes = cond.log_prob(pts[:500]) + w * resp.log() - tilted.log_normaliser - w * math.log(1 / 3)
    assert torch.allclose(tilted.log_prob(pts[:500]), by_bayes, atol=1e-4)


def test_rejection_samples_have_the_tilted_moments_and_acceptance_rate():
    mix = three_classes()
    tilted = oracle.TiltedMixture.for_class(mix, 0, 3.0)
    pts, logp, area = _grid_integral(tilted.log_prob, -3.0, 3.0, n=601)
    p = logp.exp() * area
    mean = (p[:, None] * pts).sum(0)
    var = (p[:, None] * (pts - mean) ** 2).sum(0)
    x = tilted.sample(40_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2) and x.dtype == torch.float64
    assert torch.allclose(x.mean(0), mean, atol=4 * (var / 40_000).sqrt().max().item())
    assert torch.allclose(x.var(0), var, rtol=0.03)
    # the tilt moves the class away from the other two: its mean is further out than the class mean
    assert float(mean[0]) < -0.6 - 0.02 and float(mean[1]) < -0.35 - 0.01
    # Z / M^w with M = 1/π_c: the fraction of proposals kept
    assert 0 < tilted.acceptance_rate < 1
    x_all, labels = mix.sample(60_000, generator=torch.Generator().manual_seed(1), return_labels=True)
    xc = x_all[labels == 0]                                      # ~20 000 draws of p(x | 0)
    kept = (mix.responsibilities(xc).double()[:, 0] ** 3).mean()  # E[p(0 | x)^w], w = 3
    assert float(kept) == pytest.approx(tilted.acceptance_rate, rel=0.02)


def test_tilted_mixture_rejects_bad_arguments():
    mix = three_classes()
    with pytest.raises(ValueError, match="w must be"):
        oracle.TiltedMixture.for_class(mix, 0, -1.0)
    with pytest.raises(ValueError, match="component index"):
        oracle.TiltedMixture.for_class(mix, 3, 1.0)
    one = GaussianMixture([1.0], [[0.0, 0.0]], stds=0.5)
    with pytest.raises(ValueError, match="ratio_bound"):
        oracle.TiltedMixture(one, GaussianMixture([1.0], [[0.0, 0.0]], stds=1.0), 1.0).sample(10)
    with pytest.raises(ValueError, match="same dimension"):
        oracle.TiltedMixture(one, GaussianMixture([1.0], [[0.0]], stds=1.0), 1.0)


# -- sampling points, and what guidance samples ----------------------------------------------------------------


def test_sample_points_does_not_clamp(diffusion):
    # a mixture outside [-1, 1]: samplers.sample would clamp it, sample_points must not
    far = GaussianMixture([1.0, 1.0], [[-1.5, 0.0], [1.5, 0.0]], stds=0.1)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    x = oracle.sample_points(ExactGMMDenoiser(far, diffusion.schedule), diffusion, x_T, "ddim", 50)
    assert x.abs().max() > 1.3
    assert (x[:, 0].abs() - 1.5).abs().mean() < 0.15


def test_guidance_with_the_exact_denoiser_is_not_the_tilted_distribution(diffusion):
    gap = oracle.guidance_gap(three_classes(), diffusion, 0, (0.0, 1.0, 3.0), n=1500, sampler="ddim", steps=100)
    rows = {r["w"]: r for r in gap.rows}
    # w = 0: the conditional model itself, reproduced up to discretisation and sampling noise
    assert rows[0.0]["to_tilted"] < 2 * rows[0.0]["floor"]
    # w > 0: far from the target, and further than the tilt itself moves the class
    for w in (1.0, 3.0):
        assert rows[w]["to_tilted"] > 5 * rows[w]["floor"], rows[w]
        assert rows[w]["to_tilted"] > 2 * rows[w]["tilt"], rows[w]
    assert rows[3.0]["to_tilted"] > rows[1.0]["to_tilted"] > rows[0.0]["to_tilted"]
    # guidance overshoots: its samples sit further from the other classes than the tilted target's
    assert float(gap.guided[3.0].mean(0)[0]) < float(gap.tilted[3.0].mean(0)[0]) - 0.2
    assert "CFG" in gap.table() and len(gap.table().splitlines()) == 4


def test_the_guidance_gap_is_not_discretisation(diffusion):
    # the same gap at 50 and 400 steps: it is what guidance converges to, not a sampler error
    mix = three_classes()
    few = oracle.guidance_gap(mix, diffusion, 0, (3.0,), n=1000, sampler="dpmpp2m", steps=50).rows[0]
    many = oracle.guidance_gap(mix, diffusion, 0, (3.0,), n=1000, sampler="dpmpp2m", steps=400).rows[0]
    assert many["to_tilted"] == pytest.approx(few["to_tilted"], rel=0.05)
    assert many["to_tilted"] > 5 * many["floor"]


# -- discretisation error against model error ------------------------------------------------------------------


def test_error_decomposition_with_a_perfect_and_a_shifted_model(diffusion):
    ring = GaussianMixture.ring(8, radius=0.7, std=0.07)
    steps = (2, 5, 20)
    exact = ExactGMMDenoiser(ring, diffusion.schedule)
    perfect = oracle.error_decomposition(ring, diffusion, exact, steps=steps, many_steps=100, n=1000)
    for r in perfect.rows:  # the "learned" model is the exact one: total error is the discretisation error
        assert r["total"] == r["discretisation"]
    for name in ("ddim", "dpmpp2m"):
        assert perfect.model_error[name] == perfect.exact_many[name] < 1.5 * perfect.floor
        disc = [r["discretisation"] for r in perfect.rows if r["sampler"] == name]
        assert disc[0] > 3 * disc[-1]  # more steps, less discretisation error
    by = {(r["sampler"], r["steps"]): r for r in perfect.rows}
    assert by[("dpmpp2m", 5)]["discretisation"] < 0.5 * by[("ddim", 5)]["discretisation"]  # second order

    # a model that has learned the ring shifted by 0.1: its model error is the shift, |s|/√2 in SW_2
    shifted = GaussianMixture(ring.weights, ring.means + torch.tensor([0.1, 0.0]), variances=ring.variances)
    wrong = ExactGMMDenoiser(shifted, diffusion.schedule)
    dec = oracle.error_decomposition(ring, diffusion, wrong, steps=steps, many_steps=100, n=1000)
    for name in ("ddim", "dpmpp2m"):
        assert dec.model_error[name] == pytest.approx(0.1 / math.sqrt(2), abs=0.02)
    many = [r for r in dec.rows if r["steps"] == 20]
    assert all(r["total"] == pytest.approx(dec.model_error[r["sampler"]], rel=0.25) for r in many)
    assert "model error" in dec.table()
    with pytest.raises(ValueError, match="few-step samplers"):
        oracle.error_decomposition(ring, diffusion, exact, sampler_names=("ddpm",), steps=(2,), n=10)


def test_fit_toy_denoiser_is_deterministic_and_learns(diffusion):
    ring = GaussianMixture.ring(8, radius=0.7, std=0.07)
    a = oracle.fit_toy_denoiser(ring, diffusion, steps=60, batch_size=64, hidden=32, num_blocks=1, seed=3)
    b = oracle.fit_toy_denoiser(ring, diffusion, steps=60, batch_size=64, hidden=32, num_blocks=1, seed=3)
    assert isinstance(a, ToyMLP) and not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # better than the untrained model (which predicts 0) at matching the exact ε
    g = torch.Generator().manual_seed(0)
    x0 = ring.sample(2000, generator=g)
    t = torch.randint(0, 1000, (2000,), generator=g)
    xt = diffusion.q_sample(x0, t, generator=g)
    with torch.no_grad():
        target = ExactGMMDenoiser(ring, diffusion.schedule)(xt, t)
        assert float(((a(xt, t) - target) ** 2).mean()) < 0.5 * float((target ** 2).mean())
