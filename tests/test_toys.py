"""Tests for ddpm_lite.toys: the 2D point clouds and the exact diffused Gaussian-mixture quantities."""

import math

import pytest
import torch

from ddpm_lite.toys import (
    ExactGMMDenoiser,
    GaussianMixture,
    TOY_NAMES,
    make_moons,
    make_swiss_roll,
    sample_toy,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: intra-op threads only add overhead (and stall badly on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _aniso_mixture(dtype=torch.float64):
    """Unequal weights, diagonal (non-isotropic) variances and a non-zero mean: catches formulas that only
    hold for the symmetric presets."""
    return GaussianMixture(
        weights=torch.tensor([0.5, 0.3, 0.2], dtype=dtype),
        means=torch.tensor([[1.0, 0.5], [-1.0, 0.0], [0.2, -1.2]], dtype=dtype),
        variances=torch.tensor([[0.05, 0.02], [0.03, 0.10], [0.08, 0.04]], dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------------------
# point clouds
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("maker", [make_moons, make_swiss_roll])
def test_point_cloud_shape_dtype_range(maker):
    x = maker(1001)
    assert x.shape == (1001, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.abs().max() < 1.5  # roughly fills [-1, 1]^2
    assert x.abs().max() > 0.6
    assert maker(7, dtype=torch.float64).dtype == torch.float64
    assert maker(0).shape == (0, 2)


@pytest.mark.parametrize("maker", [make_moons, make_swiss_roll])
def test_point_cloud_determinism(maker):
    a = maker(500, generator=torch.Generator().manual_seed(3))
    b = maker(500, generator=torch.Generator().manual_seed(3))
    c = maker(500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_moons_labels():
    x, y = make_moons(1001, noise=0.0, return_labels=True, generator=torch.Generator().manual_seed(0))
    assert y.shape == (1001,) and y.dtype == torch.long
    assert int((y == 0).sum()) == 501 and int((y == 1).sum()) == 500
    # noise-free: each moon is a half circle of radius 1/1.5 about its own centre
    centers = torch.tensor([[0.0 - 0.5, 0.0 - 0.25], [1.0 - 0.5, 0.5 - 0.25]]) / 1.5
    r = (x - centers[y]).norm(dim=1)
    assert torch.allclose(r, torch.full_like(r, 1 / 1.5), atol=1e-5)
    # the outer moon is the upper half circle, the inner the lower one
    assert (x[y == 0, 1] >= centers[0, 1] - 1e-6).all()
    assert (x[y == 1, 1] <= centers[1, 1] + 1e-6).all()


def test_swiss_roll_labels_and_spiral():
    x, u = make_swiss_roll(2000, noise=0.0, return_labels=True, generator=torch.Generator().manual_seed(0))
    assert u.shape == (2000,) and (u >= 0).all() and (u <= 1).all()
    t = 1.5 * math.pi * (1 + 2 * u.double())
    # the radius grows linearly with the angle
    assert torch.allclose(x.double().norm(dim=1), t / (4.5 * math.pi), atol=1e-5)


def test_sample_toy_and_bad_input():
    for name in TOY_NAMES:
        assert sample_toy(name, 10, generator=torch.Generator().manual_seed(0)).shape == (10, 2)
    with pytest.raises(ValueError):
        sample_toy("nope", 10)
    with pytest.raises(ValueError):
        make_moons(-1)
    with pytest.raises(ValueError):
        make_swiss_roll(10, noise=-0.1)


# ---------------------------------------------------------------------------------------------------------
# the mixture itself
# ---------------------------------------------------------------------------------------------------------


def test_presets():
    ring = GaussianMixture.ring(k=8, radius=2.0, std=0.1)
    assert ring.means.shape == (8, 2) and ring.dtype == torch.float32
    assert torch.allclose(ring.means.norm(dim=1), torch.full((8,), 2.0))
    assert torch.allclose(ring.variances, torch.full((8, 2), 0.01))
    grid = GaussianMixture.grid(size=4, extent=1.5, std=0.05)
    assert grid.num_components == 16 and grid.dim == 2
    assert torch.allclose(grid.means.min(0).values, torch.tensor([-1.5, -1.5]))
    assert torch.allclose(grid.weights.sum(), torch.tensor(1.0))


def test_log_prob_matches_torch_distributions():
    gm = _aniso_mixture()
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights),
        torch.distributions.Independent(torch.distributions.Normal(gm.means, gm.variances.sqrt()), 1),
    )
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    assert torch.allclose(gm.log_prob(x), ref.log_prob(x), atol=1e-10)


def test_sample_labels_and_determinism():
    gm = _aniso_mixture(torch.float32)
    x, k = gm.sample(100_000, generator=torch.Generator().manual_seed(0), return_labels=True)
    assert x.shape == (100_000, 2) and k.shape == (100_000,)
    freq = torch.bincount(k, minlength=3).double() / k.numel()
    assert torch.allclose(freq, gm.weights.double(), atol=0.01)
    # per-component moments
    for j in range(3):
        xj = x[k == j].double()
        assert torch.allclose(xj.mean(0), gm.means[j].double(), atol=0.01)
        assert torch.allclose(xj.var(0), gm.variances[j].double(), rtol=0.05)
    x2 = gm.sample(100_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_constructor_validation():
    with pytest.raises(ValueError):
        GaussianMixture([1.0], [[0.0, 0.0]])  # neither variances nor stds
    with pytest.raises(ValueError):
        GaussianMixture([1.0, 1.0], [[0.0, 0.0]], stds=0.1)  # weights/means mismatch
    with pytest.raises(ValueError):
        GaussianMixture([1.0], [[0.0, 0.0]], variances=[[0.1, 0.1, 0.1]])
    with pytest.raises(ValueError):
        GaussianMixture([1.0], [[0.0, 0.0]], variances=0.0)
    # isotropic per-component std and scalar variance forms
    gm = GaussianMixture([1.0, 3.0], [[0.0, 0.0], [1.0, 1.0]], stds=[0.1, 0.2])
    assert torch.allclose(gm.variances, torch.tensor([[0.01, 0.01], [0.04, 0.04]]))
    assert torch.allclose(gm.weights, torch.tensor([0.25, 0.75]))


# ---------------------------------------------------------------------------------------------------------
# exact diffused quantities
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha_bar", [0.3, 0.7, 0.95])
def test_posterior_mean_matches_importance_sampling(alpha_bar):
    """Self-normalised importance sampling: with x0_i ~ p, E[x0 | x_t] ~= sum_i w_i x0_i, w_i ∝ q(x_t | x0_i)."""
    gm = _aniso_mixture()
    x0 = gm.sample(200_000, generator=torch.Generator().manual_seed(1))
    x_t = torch.tensor([[0.9, 0.4], [0.0, 0.0], [-0.5, -0.8], [1.2, -1.0]], dtype=torch.float64)
    exact = gm.posterior_mean_x0(x_t, alpha_bar)
    a = alpha_bar
    d2 = ((x_t[:, None, :] - math.sqrt(a) * x0[None]) ** 2).sum(-1)  # [4, N]
    w = torch.softmax(-d2 / (2 * (1 - a)), dim=1)
    est = w @ x0
    ess = 1.0 / (w * w).sum(1)
    assert (ess > 1000).all()
    # standard error of the self-normalised estimate ~ posterior std / sqrt(ESS); allow 5 of them
    post_sd = (w[..., None] * (x0[None] - est[:, None]) ** 2).sum(1).sqrt()
    tol = 5 * post_sd / ess.sqrt()[:, None] + 1e-6
    assert ((est - exact).abs() < tol).all(), ((est - exact).abs(), tol)
    # ...and the check is sharp enough to reject plausible wrong answers: the naive x_t / sqrt(abar), and
    # the unweighted average of the per-component conditional means
    assert ((x_t / math.sqrt(a) - est).abs() > tol).any()
    v, m = gm.variances, gm.means
    comp = m + math.sqrt(a) * v / (a * v + 1 - a) * (x_t[:, None] - math.sqrt(a) * m)  # [4, K, D]
    assert ((comp.mean(1) - est).abs() > tol).any()


@pytest.mark.parametrize("alpha_bar", [1.0, 0.9, 0.5, 0.05])
def test_score_matches_finite_differences(alpha_bar):
    gm = _aniso_mixture()
    p_t = gm.diffused(alpha_bar)
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1.5
    h = 1e-5
    fd = torch.empty_like(x)
    for d in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[d] = h
        fd[:, d] = (p_t.log_prob(x + e) - p_t.log_prob(x - e)) / (2 * h)
    s = gm.score(x, alpha_bar)
    assert torch.allclose(s, fd, rtol=1e-5, atol=1e-5)
    # and against autograd
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(p_t.log_prob(xg).sum(), xg)
    assert torch.allclose(s, g, atol=1e-9)


@pytest.mark.parametrize("alpha_bar", [0.99, 0.6, 0.1])
def test_tweedie_identity(alpha_bar):
    """E[x0|x_t] (by Gaussian conditioning) and the score (by differentiation) are computed independently;
    Tweedie: E[eps | x_t] = (x_t - sqrt(a) E[x0|x_t]) / sqrt(1-a) = -sqrt(1-a) * score."""
    gm = _aniso_mixture()
    x_t = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = alpha_bar
    x0_hat = gm.posterior_mean_x0(x_t, a)
    s = gm.score(x_t, a)
    eps_from_x0 = (x_t - math.sqrt(a) * x0_hat) / math.sqrt(1 - a)
    assert torch.allclose(eps_from_x0, -math.sqrt(1 - a) * s, atol=1e-10)
    assert torch.allclose(gm.optimal_eps(x_t, a), eps_from_x0, atol=1e-10)
    assert torch.allclose(x0_hat, (x_t + (1 - a) * s) / math.sqrt(a), atol=1e-10)


@pytest.mark.parametrize("alpha_bar", [0.8, 0.2])
def test_diffused_mixture_matches_noising(alpha_bar):
    gm = _aniso_mixture()
    g = torch.Generator().manual_seed(4)
    n = 200_000
    x0 = gm.sample(n, generator=g)
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    p_t = gm.diffused(alpha_bar)
    y = p_t.sample(n, generator=g)
    # analytic moments of the diffused mixture: mean sqrt(a) mu, covariance a Sigma + (1 - a) I
    mu, cov = gm.mean(), gm.covariance()
    assert torch.allclose(p_t.mean(), math.sqrt(alpha_bar) * mu, atol=1e-12)
    assert torch.allclose(p_t.covariance(), alpha_bar * cov + (1 - alpha_bar) * torch.eye(2, dtype=torch.float64), atol=1e-12)
    se = 5 * math.sqrt(2.0 / n)  # ~5 standard errors for unit-scale moments
    for z in (x_t, y):
        assert torch.allclose(z.mean(0), p_t.mean(), atol=se)
        assert torch.allclose(torch.cov(z.T), p_t.covariance(), atol=2 * se)
    # a finer statistic: both samples put the same mass in a few half planes
    for v in (torch.tensor([1.0, 0.0]), torch.tensor([0.3, -1.0])):
        v = v.double()
        assert abs(((x_t @ v) > 0.1).double().mean() - ((y @ v) > 0.1).double().mean()) < 0.01


def test_limits_of_alpha_bar():
    gm = _aniso_mixture()
    # abar -> 1: almost no noise, so the denoiser returns (nearly) its input near a mode
    x_t = gm.means + torch.tensor([[0.05, -0.03], [0.02, 0.04], [-0.04, 0.01]], dtype=torch.float64)
    assert torch.allclose(gm.posterior_mean_x0(x_t, 1 - 1e-6), x_t, atol=1e-4)
    assert torch.allclose(gm.posterior_mean_x0(x_t, 1.0), x_t, atol=1e-12)
    # abar -> 0: x_t carries no information, so the denoiser returns the mixture mean
    x_t = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 3
    mu = gm.mean().expand(10, 2)
    assert mu.abs().max() > 0.1  # a non-trivial mean
    assert torch.allclose(gm.posterior_mean_x0(x_t, 1e-8), mu, atol=1e-3)
    assert torch.allclose(gm.posterior_mean_x0(x_t, 0.0), mu, atol=1e-12)
    # and the optimal eps at abar = 0 is x_t itself (x_t is pure noise)
    assert torch.allclose(gm.optimal_eps(x_t, 0.0), x_t, atol=1e-12)


def test_per_sample_alpha_bar_batch():
    gm = _aniso_mixture()
    x_t = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ab = torch.tensor([0.99, 0.7, 0.4, 0.1, 0.01], dtype=torch.float64)
    for fn in (gm.posterior_mean_x0, gm.score, gm.optimal_eps):
        batched = fn(x_t, ab)
        rows = torch.cat([fn(x_t[i : i + 1], float(ab[i])) for i in range(5)])
        assert torch.allclose(batched, rows, atol=1e-12)
        assert torch.allclose(fn(x_t, torch.tensor(0.7)), fn(x_t, 0.7), atol=1e-12)  # 0-d tensor
    with pytest.raises(ValueError):
        gm.score(x_t, torch.rand(3))
    with pytest.raises(ValueError):
        gm.score(x_t, 1.5)
    with pytest.raises(ValueError):
        gm.score(x_t[:, :1], 0.5)
    with pytest.raises(ValueError):
        gm.diffused(ab)


def test_dtype_device_and_stability_far_from_modes():
    gm = GaussianMixture.ring(std=0.05)  # stored in float32
    for dtype in (torch.float32, torch.float64):
        x_t = torch.tensor([[1e3, -2e3], [0.0, 0.0], [-50.0, 7.0]], dtype=dtype)
        for fn in (gm.posterior_mean_x0, gm.score, gm.optimal_eps):
            out = fn(x_t, 0.999)
            assert out.dtype == dtype and torch.isfinite(out).all()
        # far from every mode all responsibility goes to the mode in the direction of x_t (no 0/0), and the
        # denoiser is that single component's Gaussian conditional mean
        k = int((gm.means.to(dtype) @ x_t[0]).argmax())
        r = gm.responsibilities(x_t[:1], 0.999)
        assert r.dtype == dtype and torch.isfinite(r).all() and r[0, k] > 0.999
        single = GaussianMixture([1.0], gm.means[k : k + 1], variances=gm.variances[k : k + 1])
        assert torch.allclose(gm.posterior_mean_x0(x_t[:1], 0.999), single.posterior_mean_x0(x_t[:1], 0.999), rtol=1e-4)
        assert gm.log_prob(x_t).dtype == dtype and torch.isfinite(gm.log_prob(x_t)).all()


def test_component_conditioning():
    gm = _aniso_mixture()
    x_t = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 1, 2, 3, 3, 1])  # 3 = K = null class = whole mixture
    out = gm.posterior_mean_x0(x_t, 0.5, y=y)
    for i in range(6):
        k = int(y[i])
        if k == 3:
            ref = gm.posterior_mean_x0(x_t[i : i + 1], 0.5)
        else:
            single = GaussianMixture([1.0], gm.means[k : k + 1], variances=gm.variances[k : k + 1])
            ref = single.posterior_mean_x0(x_t[i : i + 1], 0.5)
        assert torch.allclose(out[i : i + 1], ref, atol=1e-12)
    with pytest.raises(ValueError):
        gm.score(x_t, 0.5, y=torch.full((6,), 4))


# ---------------------------------------------------------------------------------------------------------
# ExactGMMDenoiser
# ---------------------------------------------------------------------------------------------------------


def _linear_alphas_cumprod(T):
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def test_exact_denoiser_is_a_model():
    gm = GaussianMixture.ring()
    ac = _linear_alphas_cumprod(100)
    model = ExactGMMDenoiser(gm, ac)
    assert "num_components=8" in repr(model) and "num_timesteps=100" in repr(model)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([0, 10, 50, 99])
    out = model(x_t, t)
    assert out.shape == x_t.shape and out.dtype == x_t.dtype
    assert torch.allclose(out, gm.optimal_eps(x_t, ac[t]), atol=1e-6)
    assert torch.allclose(model.predict_x0(x_t, t), gm.posterior_mean_x0(x_t, ac[t]), atol=1e-6)
    y = torch.tensor([0, 8, 3, 8])
    assert torch.allclose(model(x_t, t, y=y), gm.optimal_eps(x_t, ac[t], y=y), atol=1e-6)

    class Sched:  # duck-typed noise schedule
        alphas_cumprod = ac

    assert torch.allclose(ExactGMMDenoiser(gm, Sched())(x_t, t), out)
    with pytest.raises(ValueError):
        model(x_t, torch.tensor([0, 1, 2, 100]))
    with pytest.raises(ValueError):
        model(x_t, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        model(x_t, torch.tensor([0, 1]))


def test_ancestral_sampling_with_exact_model_recovers_data():
    """End to end: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) driven by the exact eps recovers the
    mixture, so the exact model really is the 'perfect model'."""
    gm = _aniso_mixture(torch.float32)
    T = 300
    ac = _linear_alphas_cumprod(T)
    alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    model = ExactGMMDenoiser(gm, ac)
    g = torch.Generator().manual_seed(9)
    n = 4000
    x = torch.randn(n, 2, generator=g)
    for i in reversed(range(T)):
        t = torch.full((n,), i, dtype=torch.long)
        eps = model(x, t)
        a, abar = float(alphas[i]), float(ac[i])
        x = (x - (1 - a) / math.sqrt(1 - abar) * eps) / math.sqrt(a)
        if i > 0:
            x = x + math.sqrt(1 - a) * torch.randn(n, 2, generator=g)
    x = x.double()
    ref = gm.to(dtype=torch.float64)
    assert torch.allclose(x.mean(0), ref.mean(), atol=0.05)
    assert torch.allclose(torch.cov(x.T), ref.covariance(), atol=0.05)
    # mass per component (nearest mean under the component's own metric) matches the weights
    k = ref.responsibilities(x).argmax(1)
    assert torch.allclose(torch.bincount(k, minlength=3).double() / n, ref.weights, atol=0.03)
    # the samples have (close to) the data's likelihood
    assert abs(ref.log_prob(x).mean() - ref.log_prob(ref.sample(n, generator=g)).mean()) < 0.1
