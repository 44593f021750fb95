"""The DDPM math, proven against closed forms and independent computations (not shape checks)."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion, bits_per_dim, dynamic_threshold
from ddpm_lite.losses import discretized_gaussian_log_likelihood, min_snr_weight, normal_kl
from ddpm_lite.schedules import NoiseSchedule


def full(b, t):
    return torch.full((b,), t, dtype=torch.long)


def test_iterated_forward_steps_match_closed_form(gen):
    """Applying q(x_t|x_{t-1}) (eq. 2) t times gives the marginal q(x_t|x_0) of eq. 4."""
    d = GaussianDiffusion("linear", 100)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    x = x0
    for t in range(60):
        x = d.q_step(x, full(n, t), generator=gen)
    mean, var, _ = d.q_mean_variance(x0[:1], full(1, 59))
    assert float(x.mean()) == pytest.approx(float(mean), abs=0.01)
    assert float(x.var()) == pytest.approx(float(var), rel=0.02)
    # And q_sample draws from the same law.
    direct = d.q_sample(x0, full(n, 59), generator=gen)
    assert float(direct.mean()) == pytest.approx(float(mean), abs=0.01)
    assert float(direct.var()) == pytest.approx(float(var), rel=0.02)


def test_posterior_is_bayes_rule_in_float64():
    """q(x_{t-1}|x_t, x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0), multiplied out independently with numpy."""
    d = GaussianDiffusion("cosine", 300)
    betas = d.schedule.betas.numpy()
    abar = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    x0, xt = rng.normal(size=(2, 5, 3))
    for t in [1, 17, 150, 299]:
        # q(x_t | x_{t-1}) as a function of x_{t-1}: N(x_t/√α, β/α);  q(x_{t-1}|x_0) = N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1})
        a = 1 - betas[t]
        m1, v1 = xt / np.sqrt(a), betas[t] / a
        m2, v2 = np.sqrt(abar[t - 1]) * x0, 1 - abar[t - 1]
        var = 1 / (1 / v1 + 1 / v2)
        mean = var * (m1 / v1 + m2 / v2)
        got_mean, got_var, got_logvar = d.q_posterior_mean_variance(
            torch.from_numpy(x0), torch.from_numpy(xt), full(5, t))
        assert np.allclose(got_mean.numpy(), mean, rtol=1e-10, atol=1e-12)
        assert np.allclose(got_var.numpy(), var, rtol=1e-10)
        assert np.allclose(got_logvar.numpy(), np.log(var), rtol=1e-10)
    # At the first step the posterior is a point mass at x_0 (β̃ = 0, mean = x_0).
    m, v, _ = d.q_posterior_mean_variance(torch.from_numpy(x0), torch.from_numpy(xt), full(5, 0))
    assert np.allclose(m.numpy(), x0) and float(v.max()) == 0.0


def test_parameterization_round_trips(gen):
    d = GaussianDiffusion("linear", 1000)
    x0 = torch.rand(8, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    xt = d.q_sample(x0, t, eps)
    assert torch.allclose(d.predict_x0_from_eps(xt, t, eps), x0, atol=1e-9)
    assert torch.allclose(d.predict_eps_from_x0(xt, t, x0), eps, atol=1e-6)
    v = d.get_v(x0, eps, t)
    assert torch.allclose(d.predict_x0_from_v(xt, t, v), x0, atol=1e-10)
    assert torch.allclose(d.predict_eps_from_v(xt, t, v), eps, atol=1e-10)
    for p in ["eps", "x0", "v"]:
        dp = GaussianDiffusion("linear", 1000, parameterization=p)
        got_x0, got_eps = dp.output_to_x0_eps(dp.training_target(x0, eps, t), xt, t)
        assert torch.allclose(got_x0, x0, atol=1e-9) and torch.allclose(got_eps, eps, atol=1e-6)


def test_eps_mean_equals_eq_11():
    """Without clipping, the posterior mean with x̂_0 from ε equals eq. 11: (x_t − β/√(1−ᾱ) ε)/√α."""
    d = GaussianDiffusion("linear", 1000)
    xt = torch.randn(4, 2, dtype=torch.float64)
    eps = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([1, 5, 500, 999])
    out = d.p_mean_variance(lambda x, tt, y: eps, xt, t, clip_denoised=False)
    b = d.schedule.betas[t, None]
    ab = d.schedule.alphas_cumprod[t, None]
    expected = (xt - b / torch.sqrt(1 - ab) * eps) / torch.sqrt(1 - b)
    assert torch.allclose(out["mean"], expected, atol=1e-10)
    assert torch.allclose(out["variance"], d.schedule.posterior_variance[t, None].expand_as(xt))
    large = GaussianDiffusion("linear", 1000, variance="fixed_large")
    out = large.p_mean_variance(lambda x, tt, y: eps, xt, t, clip_denoised=False)
    assert torch.allclose(out["variance"], b.expand_as(xt))


def test_training_loss_is_l_simple(gen):
    d = GaussianDiffusion("linear", 100)
    x0 = torch.randn(6, 1, 3, 5, generator=gen)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 5, 10, 50, 90, 99])
    zero_model = lambda x, tt, y: torch.zeros_like(x)
    out = d.training_losses(zero_model, x0, t=t, noise=noise)
    assert torch.allclose(out["loss"], (noise ** 2).mean(dim=(1, 2, 3)))  # ‖ε − 0‖² per sample
    l1 = GaussianDiffusion("linear", 100, loss_type="l1").training_losses(zero_model, x0, t=t, noise=noise)
    assert torch.allclose(l1["loss"], noise.abs().mean(dim=(1, 2, 3)))
    snr = GaussianDiffusion("linear", 100, min_snr_gamma=5.0).training_losses(zero_model, x0, t=t, noise=noise)
    w = min_snr_weight(d.schedule.snr[t].float(), 5.0)
    assert torch.allclose(snr["loss"], out["loss"] * w)
    # Low-noise steps (huge SNR) are down-weighted, noisy steps (SNR < γ) keep weight 1.
    assert float(w[0]) < 0.01 and float(w[-1]) == pytest.approx(1.0)


def test_importance_sampled_timesteps_are_the_same_objective(gen):
    d = GaussianDiffusion("linear", 100, min_snr_gamma=1.0, timestep_sampling="importance")
    w = d.loss_weights()
    assert torch.allclose(w, min_snr_weight(d.schedule.snr, 1.0))
    t, weight = d.sample_weighted_timesteps(200_000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(weight, torch.full_like(weight, float(w.mean())))
    freq = torch.bincount(t, minlength=100).double() / t.numel()
    assert torch.allclose(freq, w / w.sum(), atol=3e-3)  # t ~ w(t) / Σw: the near-zero-weight steps are rare
    assert freq[:5].sum() < 0.002 and freq[-20:].sum() > 0.2
    # E_p[mean(w) L(t)] == E_uniform[w(t) L(t)] for any per-timestep loss L
    L = torch.linspace(0.5, 2.0, 100, dtype=torch.float64) ** 2
    assert float((weight.double() * L[t]).mean()) == pytest.approx(float((w * L).mean()), rel=5e-3)
    # inside training_losses: drawn t get the constant weight; a given t keeps w(t)
    x0 = torch.randn(8, 1, 3, 3, generator=gen)
    zero_model = lambda x, tt, y: torch.zeros_like(x)
    drawn = d.training_losses(zero_model, x0, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    plain = (drawn["target"] ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(drawn["loss"], plain * w.mean().float())
    t_given = torch.arange(8) * 12
    given = d.training_losses(zero_model, x0, t=t_given, noise=noise)
    assert torch.allclose(given["loss"], (noise ** 2).mean(dim=(1, 2, 3)) * w[t_given].float())
    assert GaussianDiffusion.from_config(d.config).timestep_sampling == "importance"
    with pytest.raises(ValueError, match="timestep_sampling"):
        GaussianDiffusion("linear", 100, timestep_sampling="lognormal")


def test_repr_and_loss_label_tell_the_weighting():
    plain, weighted = GaussianDiffusion("linear", 100), GaussianDiffusion("linear", 100, min_snr_gamma=5.0)
    assert "min_snr_gamma=None" in repr(plain) and "min_snr_gamma=5.0" in repr(weighted)
    assert plain.loss_label.startswith("L_simple")
    assert "L_simple" not in weighted.loss_label and "γ=5" in weighted.loss_label
    v = GaussianDiffusion("linear", 100, parameterization="v", loss_type="l1")
    assert "L_simple" not in v.loss_label and "v" in v.loss_label
    assert "γ=1" in GaussianDiffusion("linear", 100, min_snr_gamma=1.0).loss_label


def test_min_snr_weight_values():
    """ε-loss weight min(SNR, γ)/SNR: 1 where SNR ≤ γ (noisy steps), γ/SNR above (clean steps)."""
    snr = torch.tensor([0.25, 1.0, 5.0, 20.0, 1000.0], dtype=torch.float64)
    expected = torch.tensor([1.0, 1.0, 1.0, 0.25, 0.005], dtype=torch.float64)
    assert torch.allclose(min_snr_weight(snr, 5.0), expected)
    assert torch.allclose(min_snr_weight(snr, 1.0), torch.tensor([1.0, 1.0, 0.2, 0.05, 0.001], dtype=torch.float64))


def test_min_snr_weights_agree_across_parameterizations():
    """The three forms put the same weight min(SNR, γ) on the x_0-space error (Hang et al. 2023)."""
    snr = torch.tensor([0.01, 0.5, 5.0, 50.0, 5000.0], dtype=torch.float64)
    # loss_eps = SNR·loss_x0, loss_v = (SNR+1)·loss_x0 for the same x_0 error.
    w_x0 = min_snr_weight(snr, 5.0, "x0")
    assert torch.allclose(min_snr_weight(snr, 5.0, "eps") * snr, w_x0)
    assert torch.allclose(min_snr_weight(snr, 5.0, "v") * (snr + 1), w_x0)


def test_guidance_zero_is_the_conditional_model():
    class Toy(torch.nn.Module):
        num_classes = 3

        def forward(self, x, t, y):
            return x * 0.1 + (y.float() + 1).reshape(-1, 1, 1, 1) * 0.01

    d = GaussianDiffusion("linear", 10)
    x = torch.randn(4, 1, 2, 2)
    t = torch.tensor([1, 2, 3, 9])
    y = torch.tensor([0, 1, 2, 1])
    m = Toy()
    assert torch.equal(d.model_output(m, x, t, y, guidance=0.0), m(x, t, y))
    w = 2.0
    guided = d.model_output(m, x, t, y, guidance=w)
    expected = (1 + w) * m(x, t, y) - w * m(x, t, torch.full_like(y, 3))
    assert torch.allclose(guided, expected)
    with pytest.raises(ValueError, match="unconditional"):
        d.model_output(lambda x, t, y: x, x, t, y, guidance=1.0)


def test_normal_kl_closed_form():
    assert float(normal_kl(0.0, 0.0, 0.0, 0.0)) == 0.0
    # KL(N(1, 2) ‖ N(0, 1)) = ½(2 + 1 − 1 − ln 2)
    got = normal_kl(torch.tensor(1.0), torch.tensor(math.log(2.0)), torch.tensor(0.0), torch.tensor(0.0))
    assert float(got) == pytest.approx(0.5 * (2 + 1 - 1 - math.log(2)))


@pytest.mark.parametrize("levels", [17, 256])
def test_discretized_decoder_is_a_distribution(levels):
    """The probabilities of all grey levels sum to one (eq. 13's open outer bins)."""
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    for mean, log_scale in [(0.0, math.log(0.1)), (0.93, math.log(0.01)), (-2.0, math.log(0.5))]:
        lp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale), levels)
        assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_prior_term_is_tiny_for_linear_schedule():
    d = GaussianDiffusion("linear", 1000)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    assert float(d.prior_bpd(x0).max()) < 1e-4


def test_bits_per_dim_exact_denoiser_beats_zero_model(gen):
    """The bound is tighter for a good model: the exact denoiser of a point-mass dataset vs predicting ε = 0."""
    levels = 17
    d = GaussianDiffusion("linear", 100, data_levels=levels)
    x0 = (torch.randint(0, levels, (1, 1, 4, 4), generator=gen).float() / (levels - 1)) * 2 - 1
    x0 = x0.expand(16, -1, -1, -1).contiguous()

    def exact(xt, t, y):  # data is a single point: E[ε|x_t] = (x_t − √ᾱ x0)/√(1−ᾱ)
        return d.predict_eps_from_x0(xt, t, x0)

    good = d.calc_bpd_loop(exact, x0, generator=gen)
    bad = d.calc_bpd_loop(lambda xt, t, y: torch.zeros_like(xt), x0, generator=gen)
    assert good["vb"].shape == (16, 100)
    assert torch.allclose(good["total_bpd"], good["vb"].sum(1) + good["prior_bpd"])
    # The exact model makes every KL term ~0: only the decoder cost of 17 levels remains.
    assert float(good["total_bpd"].mean()) < 0.2 < float(bad["total_bpd"].mean())


# -- bits per dimension --------------------------------------------------------------------------------------


class _ExactSinglePoint(nn.Module):
    """The optimal ε-predictor when the data is one image x*: ε = (x_t − √ᾱ_t x*) / √(1 − ᾱ_t)."""

    def __init__(self, diffusion, x_star):
        super().__init__()
        self.diffusion, self.x_star = diffusion, x_star

    def forward(self, x, t, y=None):
        return self.diffusion.predict_eps_from_x0(x, t, self.x_star.expand_as(x))


class _Zero(nn.Module):
    def forward(self, x, t, y=None):
        return torch.zeros_like(x)


def test_bits_per_dim_exact_model_beats_zero_model():
    x_star = load_dataset("digits", split="test").images[:1].float()
    diffusion = GaussianDiffusion("linear", timesteps=100, data_levels=17)
    batch = x_star.repeat(4, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    exact = bits_per_dim(_ExactSinglePoint(diffusion, x_star), diffusion, batch, generator=gen,
                         progress=False, return_all=True)
    zero = bits_per_dim(_Zero(), diffusion, batch, generator=gen, progress=False, return_all=True)
    assert exact.shape == (4,) and torch.isfinite(exact).all()
    assert float(exact.min()) >= 0.0
    # every KL term vanishes for the exact model: only the prior and the decoder remain (≪ 1 bit per pixel)
    assert float(exact.max()) < 0.1
    assert float(zero.min()) > float(exact.max()) + 1.0, (exact, zero)
    # the stratified Monte-Carlo estimate agrees with the full sum for the exact model
    strat = bits_per_dim(_ExactSinglePoint(diffusion, x_star), diffusion, batch, timesteps=10,
                         generator=gen, progress=False)
    assert strat == pytest.approx(float(exact.mean()), abs=0.05)


def test_bits_per_dim_rejects_bad_input():
    diffusion = GaussianDiffusion("linear", timesteps=10)
    with pytest.raises(ValueError, match="timesteps"):
        bits_per_dim(_Zero(), diffusion, torch.zeros(2, 1, 8, 8), timesteps=1, progress=False)
    with pytest.raises(ValueError, match="images"):
        bits_per_dim(_Zero(), diffusion, [0.0, 1.0], progress=False)
    with pytest.raises(ValueError, match=r"expected 2 integer class labels"):
        bits_per_dim(_Zero(), diffusion, torch.zeros(2, 1, 8, 8), labels=torch.zeros(3, dtype=torch.long),
                     progress=False)


def test_bits_per_dim_matches_calc_bpd_loop_and_passes_labels(gen):
    """With every timestep, bits_per_dim is calc_bpd_loop's total averaged over batches; labels reach the model."""
    d = GaussianDiffusion("linear", 20, data_levels=17)
    x0 = (torch.randint(0, 17, (6, 1, 4, 4), generator=gen).float() / 16) * 2 - 1
    seen = []

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5))

        def forward(self, x, t, y=None):
            seen.append(y)
            return self.w * x

    model = Scaled().train()
    got = bits_per_dim(model, d, x0, labels=3, batch_size=4, generator=torch.Generator().manual_seed(1),
                       progress=False, return_all=True)
    assert model.training  # the train/eval mode is restored
    assert all(y is not None and bool((y == 3).all()) for y in seen)
    g = torch.Generator().manual_seed(1)
    expected = torch.cat([d.calc_bpd_loop(model, x0[i:i + 4], y=torch.full((len(x0[i:i + 4]),), 3), generator=g)
                          ["total_bpd"] for i in (0, 4)])
    assert torch.allclose(got, expected.double())


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda d: d.q_sample(torch.randn(2, 1, 4, 4), torch.tensor([0, 10])), r"t must lie in \[0, 9\]"),
        (lambda d: d.q_sample(torch.randn(2, 1, 4, 4), torch.tensor([0])), r"t must have shape \[B\] = \[2\]"),
        (lambda d: d.q_sample(torch.randn(2, 1, 4, 4), torch.tensor([0.0, 1.0])), "integer timestep"),
        (lambda d: d.q_sample(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1])), "floating-point"),
        (lambda d: d.q_sample(torch.randn(2, 1, 4, 4), torch.tensor([0, 1]), noise=torch.randn(2, 1, 4, 5)), r"shape \(2, 1, 4, 4\)"),
        (lambda d: d.training_losses(lambda x, t, y: x[..., :3], torch.randn(2, 1, 4, 4)), "shaped like x_t"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(GaussianDiffusion("linear", 10))


def test_bad_configuration():
    with pytest.raises(ValueError, match="unknown parameterization 'score'"):
        GaussianDiffusion(parameterization="score")
    with pytest.raises(ValueError, match="unknown variance"):
        GaussianDiffusion(variance="learned")


def test_config_round_trip():
    d = GaussianDiffusion("cosine", 50, parameterization="v", min_snr_gamma=5.0, data_levels=17)
    d2 = GaussianDiffusion.from_config(d.config)
    assert d2.config == d.config and torch.equal(d2.schedule.betas, d.schedule.betas)


def test_non_square_and_dtype_follow_input():
    d = GaussianDiffusion("linear", 20)
    x0 = torch.randn(3, 2, 5, 7, dtype=torch.float64)
    xt = d.q_sample(x0, torch.tensor([1, 2, 3]))
    assert xt.dtype == torch.float64 and xt.shape == x0.shape
    x16 = d.q_sample(x0.to(torch.bfloat16), torch.tensor([1, 2, 3]))
    assert x16.dtype == torch.bfloat16


def test_dynamic_threshold():
    x = torch.tensor([[[0.5, -3.0, 2.0, 0.1]], [[0.2, -0.4, 0.9, 0.3]]])
    out = dynamic_threshold(x, percentile=1.0)
    # First sample: s = 3 → divided by 3; second: s = max(1, 0.9) = 1 → unchanged.
    assert torch.allclose(out[0], x[0] / 3) and torch.allclose(out[1], x[1])
    assert float(out.abs().max()) <= 1.0


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_eq12_weight_and_constant_match_the_kl_terms(variance):
    """Ho et al. eq. 12: with ε_θ = ε + e, L_{t−1} = λ_t·mean(e²) + C_t (nats per dimension), t ≥ 1."""
    d = GaussianDiffusion(NoiseSchedule("linear", 200), variance=variance)
    g = torch.Generator().manual_seed(3)
    B = 64
    x0 = torch.rand(B, 2, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.randint(1, 200, (B,), generator=g)
    eps = torch.randn(B, 2, generator=g, dtype=torch.float64)
    err = 0.2 * torch.randn(B, 2, generator=g, dtype=torch.float64)
    xt = d.q_sample(x0, t, noise=eps)
    kl_bits = d.vb_terms_bpd(lambda x, tt, y=None: eps + err, x0, xt, t, clip_denoised=False)["output"]
    formula_bits = (d.vlb_eps_weight(t) * (err ** 2).mean(1) + d.vlb_constant(t)) / math.log(2)
    torch.testing.assert_close(kl_bits.double(), formula_bits, rtol=1e-6, atol=1e-9)
    if variance == "fixed_small":
        assert torch.all(d.vlb_constant(t) == 0)
    else:
        assert torch.all(d.vlb_constant(t[t > 1]) > 0)
    assert torch.isnan(d.vlb_eps_weight(torch.tensor([0]))).all()
