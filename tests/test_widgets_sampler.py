"""SamplerExplorer (notebook 07), driven headlessly: choices change the PNG, reuse the cache, time every run,
start every sampler from the same x_T and never create pyplot figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lite import samplers  # noqa: E402
from ddpm_lite.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lite.unet import UNet  # noqa: E402
from ddpm_lite.widgets import SamplerExplorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_heads=1, dropout=0.0, num_groups=4, num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval(), GaussianDiffusion("linear", timesteps=30)


def _make(setup, **kw):
    model, diffusion = setup
    args = dict(n=4, steps=(2, 5, 10), step=5, classifier=None)
    args.update(kw)
    return SamplerExplorer(model, diffusion, **args)


def test_builds_with_css_class_and_png(setup):
    before = plt.get_fignums()
    w = _make(setup)
    assert SamplerExplorer.CSS_CLASS == "ddpm-sampler-explorer"
    assert "ddpm-sampler-explorer" in w._dom_classes
    assert "ddpm-sampler-explorer-image" in w.image._dom_classes
    assert bytes(w.image.value).startswith(PNG_MAGIC)
    assert w.image.layout.width.endswith("px")
    assert w.labels.tolist() == [0, 1, 2, 0]
    assert w.sample_calls == 1 and w.renders == 1  # only the choice shown
    assert list(w.cache) == [("ddim", 5)]
    res = w.cache[("ddim", 5)]
    assert res["x"].shape == (4, 1, 8, 8) and res["nfe"] == 5 and res["seconds"] > 0
    assert "DDIM" in w.info.value and "5 network evaluations" in w.info.value
    assert plt.get_fignums() == before


def test_choices_change_the_image_and_use_the_cache(setup):
    w = _make(setup)
    before = plt.get_fignums()
    first = bytes(w.image.value)
    w.slider.value = 10
    assert bytes(w.image.value) != first and w.sample_calls == 2
    w.dropdown.value = "dpmpp2m"
    assert w.sample_calls == 3 and "DPM-Solver++" in w.info.value
    w.dropdown.value = "ddpm"
    assert w.slider.disabled
    assert ("ddpm", 30) in w.cache and w.cache[("ddpm", 30)]["nfe"] == 30
    assert "30 network evaluations" in w.info.value
    w.dropdown.value = "ddim"
    assert not w.slider.disabled
    w.slider.value = 5
    calls, renders = w.sample_calls, w.renders
    w.slider.value = 10
    w.slider.value = 5
    assert w.sample_calls == calls  # served from the cache
    assert w.renders == renders + 2
    assert plt.get_fignums() == before


def test_same_x_T_for_every_sampler_matches_the_package(setup):
    model, diffusion = setup
    w = _make(setup, precompute=[("ddim", 10), ("dpmpp2m", 5)])
    assert w.sample_calls == 3  # two precomputed + the one shown
    for name, s, kwargs in (("ddim", 10, dict(sampler="ddim", eta=0.0)), ("dpmpp2m", 5, dict(sampler="dpmpp2m"))):
        ref = samplers.sample(model, diffusion, w.x_T.shape, steps=s, y=w.labels, x_T=w.x_T, **kwargs)
        assert torch.allclose(w.run(name, s)["x"], ref, atol=1e-6)
    # the stochastic DDIM (η = 1) differs from the deterministic one from the same x_T
    assert not torch.allclose(w.run("ddim-eta1", 10)["x"], w.run("ddim", 10)["x"])


def test_guidance_and_unconditional(setup):
    model, diffusion = setup
    w = _make(setup, guidance=2.0)
    ref = samplers.sample(model, diffusion, w.x_T.shape, sampler="ddim", steps=5, y=w.labels, guidance=2.0,
                          x_T=w.x_T)
    assert torch.allclose(w.run()["x"], ref, atol=1e-6)
    uncond = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                  attention_resolutions=(), num_groups=4).eval()
    w2 = SamplerExplorer(uncond, diffusion, n=3, steps=(2, 5), step=2, classifier=None)
    assert w2.labels is None and w2.run()["x"].shape == (3, 1, 8, 8)


def test_bad_arguments(setup):
    with pytest.raises(ValueError, match="choices"):
        _make(setup, choices=("euler",))
    with pytest.raises(ValueError, match="one of choices"):
        _make(setup, choices=("ddim",), sampler="dpmpp2m")
    with pytest.raises(ValueError, match="steps must be"):
        _make(setup, steps=(5, 100))
    with pytest.raises(ValueError, match="one of steps"):
        _make(setup, step=7)
    with pytest.raises(ValueError, match="one label per sample"):
        _make(setup, labels=[0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        _make(setup, guidance=-1.0)
