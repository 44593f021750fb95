"""`record_cross_attention`: the per-token cross-attention maps of a U-Net, per layer, while a block runs."""

import pytest
import torch

from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.samplers import sample
from ddpm_lite.conditioning import TextCondition
from ddpm_lite.transformer import SpatialTransformer, record_cross_attention
from ddpm_lite.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=2, dropout=0.0, num_groups=8, context_dim=12)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _text(B=2, L=5, D=12, real=(2, 4)):
    g = torch.Generator().manual_seed(2)
    mask = torch.arange(L)[None] < torch.tensor(real)[:, None]
    return TextCondition(torch.randn(B, L, D, generator=g), mask, torch.randn(L, D, generator=g),
                         torch.arange(L) < 1, ["a", "b"])


def test_records_every_layer_and_restores_the_modules(unet):
    cond = _text()
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([10, 500])
    before = unet(x, t, **cond.model_kwargs())
    with record_cross_attention(unet) as rec:
        during = unet(x, t, **cond.model_kwargs())
    names = [n for n, m in unet.named_modules() if isinstance(m, SpatialTransformer)]
    assert rec.layers() == names and len(rec) == len(names)            # one call per layer
    assert torch.allclose(before, during, atol=1e-5)                   # recording changes nothing
    assert rec.sizes[names[0]] == (4, 4) and rec.maps[names[0]][0].shape == (2, 2, 4, 4, 5)
    maps = rec.token_maps((4, 4))
    assert maps.shape == (2, 5, 4, 4)
    assert torch.allclose(maps.sum(1), torch.ones(2, 4, 4), atol=1e-5)  # each position's weights sum to 1
    assert torch.all(maps[0, 2:] == 0) and torch.all(maps[1, 4:] == 0)  # padding gets no attention
    for _, m in unet.named_modules():
        if isinstance(m, SpatialTransformer):
            assert m.block.cross_attn.store_attention is False and m.block.cross_attn.attention is None
    unet(x, t, **cond.model_kwargs())
    assert len(rec) == len(names)                                      # hooks removed


def test_sampling_with_guidance_keeps_the_conditional_half(unet):
    cond = _text()
    diffusion = GaussianDiffusion(timesteps=50)
    with record_cross_attention(unet, layers=["mid.1"]) as rec:
        sample(unet, diffusion, (2, 1, 8, 8), steps=3, y=cond, guidance=2.0,
               generator=torch.Generator().manual_seed(0))
    assert rec.layers() == ["mid.1"] and len(rec) == 3
    assert rec.maps["mid.1"][0].shape[0] == 4                          # conditional + unconditional
    maps = rec.token_maps((4, 4), rows=2)
    assert maps.shape == (2, 5, 4, 4) and torch.all(maps[0, 2:] == 0)
    with pytest.raises(ValueError, match="no cross-attention recorded at"):
        rec.token_maps((8, 8))


def test_rejects_models_and_layers_without_cross_attention(unet):
    with pytest.raises(ValueError, match="no SpatialTransformer named"):
        with record_cross_attention(unet, layers=["nope"]):
            pass
    plain = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(8,), num_heads=1, num_groups=4)
    with pytest.raises(ValueError, match="no SpatialTransformer"):
        with record_cross_attention(plain):
            pass
