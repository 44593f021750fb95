"""The KL-regularised autoencoder (latent diffusion's first stage): shapes, the KL, the scale factor."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm_lite.autoencoder import AutoencoderKL, DiagonalGaussian, autoencoder_loss, measure_scale_factor


@pytest.mark.parametrize("size, channels, latent", [
    (28, (16, 16), (7, 7)),          # f = 4: 28 → 14 → 7
    ((30, 20), (16, 16), (8, 5)),    # non-square, ragged: 30 → 15 → 8, 20 → 10 → 5
    (8, (16,), (4, 4)),              # f = 2
    (28, (32, 64), (7, 7)),          # the defaults: the channels change between levels
])
def test_shapes_round_trip(size, channels, latent):
    ae = AutoencoderKL(image_size=size, latent_channels=3, channels=channels, num_groups=8)
    H, W = (size, size) if isinstance(size, int) else size
    x = torch.rand(2, 1, H, W) * 2 - 1
    q = ae.encode(x)
    assert q.mean.shape == q.logvar.shape == (2, 3, *latent)
    assert ae.latent_shape == (3, *latent) and ae.downsampling_factor == 2 ** len(channels)
    x_hat, _ = ae(x)
    assert x_hat.shape == x.shape
    with pytest.raises(ValueError, match="expected a tensor"):
        ae.decode(torch.zeros(2, 3, latent[0] + 1, latent[1]))
    with pytest.raises(ValueError, match="expected a tensor"):
        ae.encode(torch.zeros(2, 1, H + 1, W))


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    q = DiagonalGaussian(mean, logvar)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(q.kl(), expected, atol=1e-5)
    assert torch.allclose(DiagonalGaussian(torch.zeros(1, 2), torch.zeros(1, 2)).kl(), torch.zeros(1))


def test_reparameterised_sample_has_the_posterior_moments_and_gradients():
    mean = torch.full((1, 1, 50, 50), 2.0, requires_grad=True)
    logvar = torch.full((1, 1, 50, 50), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    z = DiagonalGaussian(mean, logvar).sample(torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.05 and abs(z.std().item() - 0.5) < 0.05
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_loss_terms_and_weight():
    torch.manual_seed(0)
    ae = AutoencoderKL(image_size=8, channels=(16,), latent_channels=2)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    a = autoencoder_loss(ae, x, kl_weight=0.0, generator=torch.Generator().manual_seed(1))
    b = autoencoder_loss(ae, x, kl_weight=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a["loss"], a["recon"]) and a["kl"] > 0
    assert torch.allclose(b["loss"], b["recon"] + 0.5 * b["kl"])
    b["loss"].backward()
    assert all(p.grad is not None for p in ae.parameters())
    with pytest.raises(ValueError, match="recon"):
        autoencoder_loss(ae, x, recon="l3")


def test_scale_factor_gives_unit_variance():
    torch.manual_seed(0)
    ae = AutoencoderKL(image_size=8, channels=(16,), latent_channels=2)
    with torch.no_grad():  # make the raw latents far from unit variance
        ae.enc_out[-1].weight.mul_(7.0)
        ae.enc_out[-1].bias.add_(0.3)
    x = torch.rand(512, 1, 8, 8) * 2 - 1
    s = measure_scale_factor(ae, x, batch_size=100, generator=torch.Generator().manual_seed(0))
    assert abs(ae.encode(x).sample().std().item() - 1 / s) / (1 / s) < 0.05
    ae.set_scale_factor(s)
    z = ae.encode_scaled(x, generator=torch.Generator().manual_seed(2))
    assert abs(z.std().item() - 1.0) < 0.05
    assert ae.config["scale_factor"] == s
    assert torch.allclose(ae.decode_scaled(z), ae.decode(z / s))
    with pytest.raises(ValueError, match="positive"):
        ae.set_scale_factor(0.0)
