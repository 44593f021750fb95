"""GuidanceExplorer (notebooks 05 and 08), driven headlessly: slider moves change the PNG, reuse the cache and
never create pyplot figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lite import samplers  # noqa: E402
from ddpm_lite.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lite.unet import UNet  # noqa: E402
from ddpm_lite.widgets import GuidanceExplorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_model(num_classes=3):
    """A small class-conditional UNet with random (non-zero) output layers, so guidance visibly matters."""
    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_heads=1, dropout=0.0, num_groups=4, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    model = _tiny_model()
    diffusion = GaussianDiffusion("linear", timesteps=50)
    return model, diffusion


def _make(setup, **kw):
    model, diffusion = setup
    args = dict(weights=(0.0, 2.0, 8.0), n_per_class=2, steps=4, classifier=None)
    args.update(kw)
    return GuidanceExplorer(model, diffusion, **args)


def test_builds_with_css_class_and_png(setup):
    before = plt.get_fignums()
    w = _make(setup)
    assert GuidanceExplorer.CSS_CLASS == "ddpm-guidance-explorer"
    assert "ddpm-guidance-explorer" in w._dom_classes
    assert "ddpm-guidance-explorer-image" in w.image._dom_classes
    assert bytes(w.image.value).startswith(PNG_MAGIC)
    assert w.image.layout.width.endswith("px")
    assert list(w.slider.options) == [("0", 0.0), ("2", 2.0), ("8", 8.0)]
    assert w.samples().shape == (6, 1, 8, 8)
    assert plt.get_fignums() == before


def test_slider_changes_image_without_new_figures_and_uses_cache(setup):
    w = _make(setup)
    before_figs = plt.get_fignums()
    calls = w.sample_calls
    assert calls == 3  # precomputed: one grid per weight
    first = bytes(w.image.value)
    renders = w.renders
    w.slider.value = 8.0
    assert bytes(w.image.value) != first
    assert w.renders == renders + 1
    assert "w = 8" in w.info.value
    w.slider.value = 0.0
    assert bytes(w.image.value) == first  # deterministic: same seeds, same picture
    assert w.sample_calls == calls  # served from the cache
    assert plt.get_fignums() == before_figs


def test_fixed_seeds_match_the_sampler(setup):
    model, diffusion = setup
    w = _make(setup)
    ref = samplers.sample(model, diffusion, w.x_T.shape, sampler="ddim", steps=4, y=w.labels, guidance=2.0,
                          x_T=w.x_T)
    assert torch.allclose(w.samples(2.0), ref, atol=1e-6)
    # column j starts from the same noise in every row (class)
    assert torch.equal(w.x_T[0], w.x_T[2]) and torch.equal(w.x_T[1], w.x_T[3])
    assert w.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # guidance changes the samples
    assert not torch.allclose(w.samples(0.0), w.samples(8.0))


def test_lazy_sampling_and_threshold_toggle(setup):
    w = _make(setup, precompute=False, thresholds=("static", "dynamic"), percentile=0.9)
    assert w.sample_calls == 1  # only the grid shown
    assert w.threshold.layout.display != "none"
    w.slider.value = 8.0
    static_png = bytes(w.image.value)
    w.threshold.value = "dynamic"
    assert bytes(w.image.value) != static_png
    assert w.sample_calls == 3
    assert "dynamic" in w.info.value
    assert float(w.samples(8.0, "dynamic").abs().max()) <= 1.0


def test_n_show_limits_the_grid_not_the_samples(setup):
    w = _make(setup, n_per_class=3, n_show=1, weights=(0.0,))
    assert w.samples().shape[0] == 9
    assert w.shown(w.samples()).shape[0] == 3
    assert torch.equal(w.shown(w.samples())[1], w.samples()[3])


def test_bad_arguments(setup):
    model, diffusion = setup
    with pytest.raises(ValueError, match=">= 0"):
        _make(setup, weights=(0.0, -1.0))
    with pytest.raises(ValueError, match="one of weights"):
        _make(setup, w=3.0)
    with pytest.raises(ValueError, match="classes"):
        _make(setup, classes=[5])
    with pytest.raises(ValueError, match="thresholds"):
        _make(setup, thresholds=("soft",))
    uncond = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                  attention_resolutions=(), num_groups=4)
    with pytest.raises(ValueError, match="class-conditional"):
        GuidanceExplorer(uncond, diffusion)
