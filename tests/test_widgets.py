"""Drive the course widgets headlessly: move the controls, check the picture and the state behind it.

Each widget renders one matplotlib figure (made once) to PNG bytes in `w.image.value`; moving a control must
update those bytes, show the right numbers, and never create another figure.
"""

import gc
import io

import matplotlib

matplotlib.use("Agg")

import ipywidgets  # noqa: E402
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ddpm_lite import plots, widgets  # noqa: E402
from ddpm_lite.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lite.samplers import sample_steps  # noqa: E402


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(png))


def n_figures() -> int:
    gc.collect()
    return sum(issubclass(type(o), Figure) for o in gc.get_objects())


@pytest.fixture
def images():
    """16 smooth 'images' (a blob each) in [-1, 1]: structured, so x_0 and x_T look different."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    centers = torch.rand(16, 2, generator=torch.Generator().manual_seed(0)) * 6 + 1
    blob = torch.exp(-((xx - centers[:, 0, None, None]) ** 2 + (yy - centers[:, 1, None, None]) ** 2) / 4)
    return (blob * 2 - 1)[:, None]


# -- NoiseStepExplorer --------------------------------------------------------------------------------------------

def test_noise_explorer_structure(images):
    w = widgets.NoiseStepExplorer(images, T=1000, t=10)
    assert isinstance(w, ipywidgets.VBox)
    assert "ddpm-noise-explorer" in w._dom_classes
    assert isinstance(w.slider, ipywidgets.IntSlider) and (w.slider.min, w.slider.max) == (0, 999)
    assert isinstance(w.dropdown, ipywidgets.Dropdown)
    assert list(w.dropdown.options) == ["linear", "cosine", "sigmoid"]
    assert isinstance(w.image, ipywidgets.Image) and w.image.format == "png"
    assert w.image.layout.width.endswith("px")
    assert "ddpm-noise-explorer-image" in w.image._dom_classes
    assert "ddpm-noise-explorer-slider" in w.slider._dom_classes
    assert "ddpm-noise-explorer-schedule" in w.dropdown._dom_classes
    assert w.image in w.children and w.info in w.children
    # the image's pinned width is the PNG's width
    png = decode(w.image.value)
    assert png.shape[1] == int(w.image.layout.width[:-2])


def test_noise_explorer_slider_updates_image_and_state(images):
    w = widgets.NoiseStepExplorer(images, T=1000, t=0, seed=3)
    before_png, before_renders = w.image.value, w.renders
    w.slider.value = 600
    assert w.renders == before_renders + 1
    assert w.image.value != before_png
    a, b = decode(before_png), decode(w.image.value)
    assert a.shape == b.shape and np.abs(a - b).mean() > 1e-3
    # the displayed batch is q_sample at t with the widget's fixed noise
    d = GaussianDiffusion("linear", 1000)
    t = torch.full((images.shape[0],), 600, dtype=torch.long)
    torch.testing.assert_close(w.x_t, d.q_sample(images, t, noise=w.noise), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.x_t, w.x_t_at(600), rtol=1e-5, atol=1e-5)
    # ... and is what the image artist holds (grid of the first n_show images)
    np.testing.assert_allclose(w._im.get_array(), plots.to_image_grid(w.x_t[: w.n_show]), atol=1e-6)
    assert "t = 600" in w.info.value and "linear" in w.info.value


def test_noise_explorer_noise_is_fixed_and_t0_is_almost_clean(images):
    w = widgets.NoiseStepExplorer(images, t=0)
    noise = w.noise.clone()
    assert (w.x_t - images).abs().max() < 0.05  # ᾱ_0 = 1 - 1e-4
    w.slider.value = 999
    w.slider.value = 0
    assert torch.equal(w.noise, noise)
    assert (w.x_t - images).abs().max() < 0.05


def test_noise_explorer_dropdown_switches_schedule(images):
    w = widgets.NoiseStepExplorer(images, t=300)
    linear_png, linear_ab = w.image.value, w.alpha_bar()
    w.dropdown.value = "cosine"
    assert w.schedule == "cosine" and w.diffusion.schedule.name == "cosine"
    assert w.image.value != linear_png
    assert w.alpha_bar() > linear_ab  # cosine keeps more signal at t = 300
    torch.testing.assert_close(w.x_t, GaussianDiffusion("cosine", 1000).q_sample(
        images, torch.full((16,), 300, dtype=torch.long), noise=w.noise), rtol=1e-5, atol=1e-5)
    # the marker sits on the cosine curve at t
    mx, my = w._marker.get_data()
    assert mx[0] == 300 and abs(my[0] - w.alpha_bar(300, "cosine")) < 1e-12


def test_noise_explorer_statistics_follow_eq4(images):
    w = widgets.NoiseStepExplorer(images.repeat(8, 1, 1, 1), t=999)  # 128 images -> 8192 pixels
    s = w.stats
    assert abs(s["mean"]) < 0.05 and abs(s["var"] - 1) < 0.05
    w.slider.value = 200
    s = w.stats
    assert abs(s["mean"] - s["expected_mean"]) < 0.05
    assert abs(s["var"] - s["expected_var"]) < 0.06


def test_noise_explorer_histogram_is_of_x_t(images):
    w = widgets.NoiseStepExplorer(images, t=500, bins=20)
    values, edges, _ = w._stairs.get_data()
    counts, _ = np.histogram(w.x_t.numpy().ravel(), bins=edges)
    np.testing.assert_allclose(values, counts / w.x_t.numel() / (edges[1] - edges[0]))


def test_noise_explorer_never_creates_figures(images):
    w = widgets.NoiseStepExplorer(images)
    fig = w.fig
    pyplot_before, figures_before = plt.get_fignums(), n_figures()
    for t in (0, 100, 500, 999, 3):
        w.slider.value = t
    w.dropdown.value = "sigmoid"
    assert w.fig is fig
    assert plt.get_fignums() == pyplot_before
    assert n_figures() <= figures_before  # none created (earlier tests' figures may be freed meanwhile)


def test_noise_explorer_rejects_bad_input(images):
    with pytest.raises(ValueError, match="B×C×H×W"):
        widgets.NoiseStepExplorer(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="schedule"):
        widgets.NoiseStepExplorer(images, schedules=("linear", "quadratic"))
    with pytest.raises(ValueError, match="t must lie"):
        widgets.NoiseStepExplorer(images, T=100, t=100)


# -- SamplingScrubber -------------------------------------------------------------------------------------------------

class TinyModel(torch.nn.Module):
    """A deterministic stand-in for a trained image model: predicts ε = x_t / 2."""

    def __init__(self):
        super().__init__()
        self.config = {"image_size": 4, "in_channels": 1}

    def forward(self, x, t, y=None):
        return 0.5 * x


@pytest.fixture
def steps():
    d = GaussianDiffusion("linear", 100)
    gen = torch.Generator().manual_seed(0)
    return list(sample_steps(TinyModel(), d, (9, 1, 4, 4), sampler="ddpm", generator=gen))


def test_scrubber_structure(steps):
    w = widgets.SamplingScrubber(steps)
    assert isinstance(w, ipywidgets.VBox) and "ddpm-sampling-scrubber" in w._dom_classes
    assert "ddpm-sampling-scrubber-slider" in w.slider._dom_classes
    assert "ddpm-sampling-scrubber-image" in w.image._dom_classes
    assert isinstance(w.play, ipywidgets.Play)
    assert (w.slider.min, w.slider.max, w.slider.value) == (0, 99, 99)  # starts at the final sample
    assert len(w.frames) == 100
    assert decode(w.image.value).shape[1] == int(w.image.layout.width[:-2])


def test_scrubber_slider_shows_the_right_step(steps):
    w = widgets.SamplingScrubber(steps, frame=0)
    first = w.image.value
    w.slider.value = 50
    assert w.image.value != first
    assert np.abs(decode(first) - decode(w.image.value)).mean() > 1e-3
    f = w.frame
    assert f["t"] == steps[50].t == 48 and f["index"] == 50
    torch.testing.assert_close(f["x"], steps[50].x)
    np.testing.assert_allclose(w._im_x.get_array(), plots.to_image_grid(steps[50].x), atol=1e-6)
    np.testing.assert_allclose(w._im_p.get_array(), plots.to_image_grid(steps[50].pred_x0), atol=1e-6)
    assert "t = 48" in w.info.value


def test_scrubber_runs_the_sampler_itself_reproducibly():
    d = GaussianDiffusion("linear", 100)
    w1 = widgets.SamplingScrubber(model=TinyModel(), diffusion=d, n=4, sampler="ddim", steps=10, seed=5, eta=1.0)
    w2 = widgets.SamplingScrubber(model=TinyModel(), diffusion=d, n=4, sampler="ddim", steps=10, seed=5, eta=1.0)
    assert len(w1.frames) == 10 and w1.frames[-1]["t"] == -1
    torch.testing.assert_close(w1.frames[-1]["x"], w2.frames[-1]["x"])
    assert w1.image.value == w2.image.value
    w3 = widgets.SamplingScrubber(model=TinyModel(), diffusion=d, n=4, sampler="ddim", steps=10, seed=6, eta=1.0)
    assert not torch.equal(w1.frames[-1]["x"], w3.frames[-1]["x"])


def test_scrubber_max_frames_keeps_first_and_last(steps):
    w = widgets.SamplingScrubber(steps, max_frames=10)
    assert len(w.frames) == 10
    assert w.frames[0]["index"] == 0 and w.frames[-1]["index"] == 99 and w.frames[-1]["t"] == -1


def test_scrubber_never_creates_figures(steps):
    w = widgets.SamplingScrubber(steps)
    fig = w.fig
    pyplot_before, figures_before = plt.get_fignums(), n_figures()
    for k in (0, 10, 99, 42):
        w.slider.value = k
    assert w.fig is fig and w.renders == 5
    assert plt.get_fignums() == pyplot_before
    assert n_figures() <= figures_before  # none created (earlier tests' figures may be freed meanwhile)


def test_scrubber_rejects_bad_input(steps):
    with pytest.raises(ValueError, match="empty"):
        widgets.SamplingScrubber([])
    with pytest.raises(ValueError, match="not both"):
        widgets.SamplingScrubber(steps, model=TinyModel())
    with pytest.raises(ValueError, match="model"):
        widgets.SamplingScrubber()
    with pytest.raises(ValueError, match="frame"):
        widgets.SamplingScrubber(steps, frame=100)
