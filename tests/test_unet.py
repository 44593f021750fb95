import json

import pytest
import torch

from ddpm_lite.toy_mlp import ToyMLP
from ddpm_lite.unet import PRESETS, UNet, timestep_embedding, unet_preset


def small_unet(image_size=8, in_channels=1, **kw):
    cfg = dict(image_size=image_size, in_channels=in_channels, base_channels=16, channel_mults=(1, 2),
               num_res_blocks=1, attention_resolutions=(4,), num_heads=2, dropout=0.0, num_groups=8)
    cfg.update(kw)
    return UNet(**cfg)


def randomize_(model, seed=0):
    """Zero-initialised output layers make every output 0; give them random weights for shape/path tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize(
    "size, mults, attn",
    [(8, (1, 2), (4,)), (28, (1, 2, 2), (7,)), (32, (1, 2, 2, 2), (16,)), ((8, 12), (1, 2), (4,)), (7, (1, 2), (4,)),
     (7, (1, 2, 2), (2,))],
)
def test_output_shape_all_sizes(size, mults, attn):
    H, W = (size, size) if isinstance(size, int) else size
    for num_classes in (None, 10):
        m = small_unet(size, in_channels=3, channel_mults=mults, attention_resolutions=attn, num_classes=num_classes)
        x = torch.randn(2, 3, H, W)
        t = torch.tensor([0, 999])
        assert m(x, t).shape == x.shape
        if num_classes:
            assert m(x, t, torch.tensor([3, 10])).shape == x.shape


def test_attention_placement_follows_min_side():
    from ddpm_lite.unet import Attention

    # levels 32, 16, 8, 4: attention only at 16 -> 2 down + 3 up + 1 middle
    m = UNet(image_size=32, in_channels=3, base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
             attention_resolutions=(16,), num_groups=8)
    assert sum(isinstance(mod, Attention) for mod in m.modules()) == 6
    # non-square 8x12: min side 8 at level 0, 4 at level 1
    m = small_unet((8, 12), attention_resolutions=(4,))
    assert sum(isinstance(mod, Attention) for mod in m.modules()) == 1 + 2 + 1



@pytest.mark.parametrize("size", [8, 7, (8, 12), (7, 5)])
def test_resample_without_conv(size):
    """resample_with_conv=False: no conv in Down/Upsample (fewer parameters), ragged sizes still round-trip."""
    from ddpm_lite.unet import Downsample, Upsample

    H, W = (size, size) if isinstance(size, int) else size
    with_conv, without = small_unet(size), small_unet(size, resample_with_conv=False)
    down = [m for m in without.modules() if isinstance(m, (Downsample, Upsample))]
    assert len(down) == 2 and all(m.conv is None for m in down)
    n_conv = sum(p.numel() for m in with_conv.modules() if isinstance(m, (Downsample, Upsample)) for p in m.parameters())
    assert sum(p.numel() for p in with_conv.parameters()) - sum(p.numel() for p in without.parameters()) == n_conv > 0
    x = torch.randn(2, 1, H, W)
    assert randomize_(without)(x, torch.tensor([3, 700])).shape == x.shape
    # 2x2 average pooling with a ragged edge: the last row/column averages only the pixels it has
    pooled = Downsample(1, with_conv=False)(torch.arange(9.0).reshape(1, 1, 3, 3))
    assert torch.allclose(pooled, torch.tensor([[[[2.0, 3.5], [6.5, 8.0]]]]))


def test_scale_shift_norm_modulates_with_time_and_class():
    """AdaGN: the embedding scales and shifts the second GroupNorm; a zero projection leaves the plain norm."""
    from ddpm_lite.unet import ResBlock

    block = ResBlock(8, 8, emb_dim=16, dropout=0.0, num_groups=4, scale_shift=True)
    assert block.emb_proj.out_features == 16  # a scale and a shift per channel
    randomize_(block)
    x, emb = torch.randn(3, 8, 4, 4), torch.randn(3, 16)
    with torch.no_grad():
        h = block.conv1(torch.nn.functional.silu(block.norm1(x)))
        scale, shift = block.emb_proj(torch.nn.functional.silu(emb))[:, :, None, None].chunk(2, dim=1)
        expected = block.skip(x) + block.conv2(torch.nn.functional.silu(block.norm2(h) * (1 + scale) + shift))
        assert torch.allclose(block(x, emb), expected, atol=1e-6)
    m = randomize_(small_unet(num_classes=10, scale_shift_norm=True)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    assert not torch.allclose(m(x, t, torch.tensor([1, 1])), m(x, t, torch.tensor([2, 2])))
    assert UNet(**json.loads(json.dumps(m.config))).config["scale_shift_norm"] is True

def test_out_channels_and_zero_init():
    m = small_unet(8, in_channels=1, out_channels=2)
    out = m(torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]))
    assert out.shape == (3, 2, 8, 8)
    assert torch.all(out == 0), "final conv is zero-initialised"


def test_null_class_and_y_none():
    m = randomize_(small_unet(num_classes=10)).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5, 50, 500, 900])
    null = torch.full((4,), 10)
    assert torch.allclose(m(x, t), m(x, t, null))  # y=None == all-null
    assert not torch.allclose(m(x, t, torch.tensor([0, 1, 2, 3])), m(x, t))


def test_config_roundtrip_and_json():
    m = small_unet((8, 12), num_classes=10)
    cfg = json.loads(json.dumps(m.config))
    m2 = UNet(**cfg)
    m2.load_state_dict(m.state_dict())
    assert m2.config == m.config
    assert cfg["image_size"] == [8, 12]
    assert UNet(**small_unet(8).config).config["image_size"] == 8


def test_float_timesteps_and_channels_last():
    m = randomize_(small_unet(8, num_classes=10)).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 7])
    ref = m(x, t)
    assert torch.allclose(m(x, t.float()), ref)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.to(memory_format=torch.channels_last), t)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        (dict(x=torch.randn(1, 8, 8)), ["4 dims", "(1, 8, 8)"]),
        (dict(x=torch.randn(2, 3, 8, 8)), ["1 input channels", "got 3"]),
        (dict(x=torch.randn(2, 1, 8, 9)), ["(8, 8)", "(8, 9)"]),
        (dict(x=torch.zeros(2, 1, 8, 8, dtype=torch.long)), ["floating-point", "torch.int64"]),
        (dict(t=torch.tensor([1, 2, 3])), ["t of shape [B] = (2,)", "(3,)"]),
        (dict(t=torch.tensor(5)), ["t of shape", "()"]),
        (dict(t=torch.zeros(2, 1, dtype=torch.long)), ["t of shape", "(2, 1)"]),
        (dict(y=torch.tensor([0, 11])), ["[0, 10]", "[0, 11]"]),
        (dict(y=torch.tensor([-1, 3])), ["[0, 10]", "[-1, 3]"]),
        (dict(y=torch.tensor([0.0, 1.0])), ["integer", "float32"]),
        (dict(y=torch.tensor([1, 2, 3])), ["(2,)", "(3,)"]),
    ],
)
def test_bad_inputs_raise_value_error(kwargs, fragments):
    m = small_unet(8, num_classes=10)
    args = dict(x=torch.randn(2, 1, 8, 8), t=torch.tensor([1, 2]), y=None)
    args.update(kwargs)
    with pytest.raises(ValueError) as exc:
        m(args["x"], args["t"], args["y"])
    for f in fragments:
        assert f in str(exc.value), (f, str(exc.value))


def test_labels_to_unconditional_model_raise():
    m = small_unet(8, num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        m(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="num_groups"):
        small_unet(8, base_channels=12, num_groups=8)
    with pytest.raises(ValueError, match="num_heads"):
        small_unet(8, base_channels=16, num_heads=3)


def test_presets_build_and_unknown():
    for name in PRESETS:
        m = unet_preset(name)
        assert isinstance(m, UNet)
    assert unet_preset("digits").num_classes == 10
    assert unet_preset("cifar10", num_classes=10).num_classes == 10
    with pytest.raises(ValueError) as exc:
        unet_preset("imagenet")
    assert "imagenet" in str(exc.value) and "digits" in str(exc.value) and "cifar10" in str(exc.value)


def test_cifar10_preset_matches_ddpm_paper_param_count():
    m = unet_preset("cifar10")
    n = sum(p.numel() for p in m.parameters())
    print(f"cifar10 preset (Ho et al. 2020 CIFAR-10 config): {n:,} parameters")
    assert abs(n - 35.7e6) < 0.5e6


def test_digits_preset_forward_and_size():
    m = unet_preset("digits")
    n = sum(p.numel() for p in m.parameters())
    print(f"digits preset: {n:,} parameters")
    assert 0.3e6 <= n <= 1.5e6
    x = torch.randn(4, 1, 8, 8)
    assert m(x, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 5, 9, 10])).shape == x.shape


def test_deterministic_given_seed():
    torch.manual_seed(0)
    a = small_unet(8, num_classes=10)
    torch.manual_seed(0)
    b = small_unet(8, num_classes=10)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    randomize_(a, 1), randomize_(b, 1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([4, 9])
    assert torch.equal(a.eval()(x, t), b.eval()(x, t))


def test_overfit_fixed_batch():
    """A digits-sized model drives the MSE on a fixed batch well down in a few Adam steps."""
    torch.manual_seed(0)
    m = UNet(image_size=8, in_channels=1, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
             attention_resolutions=(4,), num_heads=4, dropout=0.0, num_groups=8, num_classes=10)
    x = torch.randn(16, 1, 8, 8)
    target = torch.randn(16, 1, 8, 8).clamp(-1, 1) * 0.5
    t = torch.randint(0, 1000, (16,))
    y = torch.randint(0, 11, (16,))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = (m(x, t, y) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 10, 999]), 32)
    assert e.shape == (3, 32)
    assert torch.allclose(e[0, :16], torch.zeros(16)) and torch.allclose(e[0, 16:], torch.ones(16))
    assert timestep_embedding(torch.tensor([1.5]), 7).shape == (1, 7)


# ---------------------------------------------------------------------- ToyMLP

def test_toy_mlp_shapes_classes_and_errors():
    m = ToyMLP(dim=2, hidden=64, num_blocks=2, num_classes=3)
    x, t = torch.randn(5, 2), torch.randint(0, 100, (5,))
    assert m(x, t).shape == (5, 2)
    assert torch.all(m(x, t) == 0)  # zero-initialised output
    assert m(x, t, torch.tensor([0, 1, 2, 3, 3])).shape == (5, 2)
    assert ToyMLP(**json.loads(json.dumps(m.config))).config == m.config
    assert ToyMLP(dim=3)(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        m(torch.randn(5, 3), t)
    with pytest.raises(ValueError, match="t of shape"):
        m(x, t[:2])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        m(x, t, torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="unconditional"):
        ToyMLP()(x, t, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="floating-point"):
        m(x.long(), t)


def test_toy_mlp_learns():
    torch.manual_seed(0)
    m = ToyMLP(hidden=64, num_blocks=2)
    x, t = torch.randn(64, 2), torch.randint(0, 1000, (64,))
    target = torch.randn(64, 2)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = (m(x, t) - target).pow(2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
