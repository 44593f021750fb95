"""Tests for ddpm_lite.plots: grid layout and value mapping, and that every figure helper draws what it says."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lite import plots  # noqa: E402
from ddpm_lite.schedules import NoiseSchedule  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_setup_sets_low_dpi():
    plots.setup()
    assert matplotlib.rcParams["figure.dpi"] == 72
    assert matplotlib.rcParams["savefig.dpi"] == 72
    assert matplotlib.rcParams["image.interpolation"] == "nearest"
    with pytest.raises(ValueError, match="style"):
        plots.setup(style="fancy")


def test_to_image_grid_layout_and_values():
    # image i is constant with value -1 + 2 * i / 5, so its grid cell must read i / 5
    b, h, w = 6, 3, 4
    imgs = torch.stack([torch.full((1, h, w), -1 + 2 * i / 5) for i in range(b)])
    grid = plots.to_image_grid(imgs, nrow=4, padding=1, pad_value=0.25)
    # 4 per row -> 2 rows, 4 columns
    assert grid.shape == (2 * (h + 1) + 1, 4 * (w + 1) + 1)
    for i in range(b):
        r, k = divmod(i, 4)
        cell = grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w]
        np.testing.assert_allclose(cell, i / 5, atol=1e-12)
    # padding rows/cols and the two empty slots hold pad_value
    assert (grid[0] == 0.25).all() and (grid[:, 0] == 0.25).all()
    assert (grid[1 + (h + 1):, 1 + 2 * (w + 1):] == 0.25).all()


def test_to_image_grid_defaults_rgb_and_clipping():
    x = torch.linspace(-3, 3, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    grid = plots.to_image_grid(x, padding=0)
    assert grid.shape == (2, 4, 3)  # ceil(sqrt(2)) = 2 per row, RGB last
    assert grid.min() == 0.0 and grid.max() == 1.0  # out-of-range values saturate
    one = plots.to_image_grid(np.zeros((1, 5, 5)), padding=0)  # a single C×H×W image
    assert one.shape == (5, 5) and np.allclose(one, 0.5)
    default = plots.to_image_grid(torch.zeros(10, 1, 8, 8))
    assert default.shape == (3 * 9 + 1, 4 * 9 + 1)


@pytest.mark.parametrize("bad", [torch.zeros(2, 2, 4, 4), torch.zeros(4, 4), torch.zeros(0, 1, 4, 4)])
def test_to_image_grid_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        plots.to_image_grid(bad)


def test_show_images_draws_grid_and_labels():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    ax = plots.show_images(x, nrow=2, title="four", labels=["a", "b", "c", "d"])
    np.testing.assert_allclose(ax.images[-1].get_array(), plots.to_image_grid(x, nrow=2))
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c", "d"]
    assert ax.get_title() == "four"
    with pytest.raises(ValueError, match="labels"):
        plots.show_images(x, labels=["only one"])


def test_plot_schedules_curves():
    fig = plots.plot_schedules({"linear": NoiseSchedule("linear", 100), "cosine": "cosine"}, t_marker=10)
    ab_ax, snr_ax = fig.axes
    lin = ab_ax.lines[0]
    np.testing.assert_allclose(lin.get_ydata(), NoiseSchedule("linear", 100).alphas_cumprod.numpy())
    lin_snr = snr_ax.lines[0].get_ydata()
    np.testing.assert_allclose(lin_snr, np.log(NoiseSchedule("linear", 100).snr.numpy()), rtol=1e-10)
    assert [line.get_label() for line in ab_ax.get_legend().get_lines()] == ["linear", "cosine"]
    assert len(plots.schedule_curves("sigmoid")["t"]) == 1000


def test_smooth_and_plot_loss():
    v = np.array([4.0, 4.0, 4.0])
    np.testing.assert_allclose(plots.smooth(v, 0.9), v)  # bias correction: a constant stays constant
    history = [{"step": 10 * i, "loss": 1.0 / (i + 1)} for i in range(50)] + [{"step": 500, "lr": 1e-3}]
    ax = plots.plot_loss(history)
    raw, smoothed = ax.lines[:2]
    assert raw.get_xdata()[-1] == 490
    np.testing.assert_allclose(smoothed.get_ydata(), plots.smooth([1.0 / (i + 1) for i in range(50)]))
    assert ax.get_yscale() == "log"
    ax2 = plots.plot_loss([0.5, 0.4, 0.3], logy=False)
    assert ax2.get_yscale() == "linear"
    with pytest.raises(ValueError):
        plots.plot_loss([{"step": 1, "lr": 0.1}])


def test_plot_histogram_vs_normal_is_a_density():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    ax = plots.plot_histogram_vs_normal(x, bins=40)
    values, edges, _ = ax.patches[0].get_data()
    assert abs((values * np.diff(edges)).sum() - 1.0) < 0.01  # almost all mass inside [-4, 4]
    centers = (edges[1:] + edges[:-1]) / 2
    assert np.abs(values - plots.normal_pdf(centers)).max() < 0.03


def test_plot_2d_and_trajectories():
    pts = torch.randn(50, 2)
    ax = plots.plot_2d(pts, c=torch.arange(50) % 2, lim=3, title="pts")
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), pts.numpy(), rtol=1e-6)
    assert ax.get_xlim() == (-3, 3)
    with pytest.raises(ValueError):
        plots.plot_2d(torch.zeros(5, 3))
    tr = torch.randn(7, 20, 2)
    ax = plots.plot_trajectories(tr, n=5)
    assert len(ax.lines) == 5
    with pytest.raises(ValueError):
        plots.plot_trajectories(torch.zeros(3, 2))
    ax = plots.plot_trajectories(tr, n=3, color="cycle", every=3, lw=1.0)   # states 0, 3, 6 (the last is kept)
    assert len(ax.lines) == 3 and len({line.get_color() for line in ax.lines}) == 3
    np.testing.assert_allclose(ax.lines[0].get_xydata(), tr[[0, 3, 6], 0].numpy(), rtol=1e-6)
    ax = plots.plot_trajectories(tr[:6], n=2, every=4)                      # states 0, 4 and the last, 5
    np.testing.assert_allclose(ax.lines[1].get_xydata(), tr[[0, 4, 5], 1].numpy(), rtol=1e-6)
    with pytest.raises(ValueError):
        plots.plot_trajectories(tr, every=0)


def test_fig_to_png_and_new_figure():
    before = plt.get_fignums()
    fig, ax = plots.new_figure(figsize=(2, 1), dpi=50)
    assert plt.get_fignums() == before  # not registered with pyplot
    ax.plot([0, 1], [0, 1])
    png = plots.fig_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(png))
    assert img.shape[:2] == (50, 100)


# -- latent diffusion (notebook 09) --------------------------------------------------------------------------------

def test_plot_latent_channels_one_row_per_image_and_a_column_per_channel():
    z = torch.randn(3, 4, 7, 7)
    fig = plots.plot_latent_channels(z, torch.zeros(3, 1, 28, 28))
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3 * 5                      # image + 4 channels per row (+ a colour bar axis)
    lim = float(z.abs().max())
    assert image_axes[1].images[0].get_clim() == pytest.approx((-lim, lim))   # diverging, centred on 0
    assert len([ax for ax in plots.plot_latent_channels(z).axes if ax.images]) == 3 * 4
    with pytest.raises(ValueError, match="batch size"):
        plots.plot_latent_channels(z, torch.zeros(2, 1, 28, 28))
    plt.close("all")


def test_plot_signal_fraction_curves():
    ax = plots.plot_signal_fraction("linear", {"unit": 1.0, "wide": 5.0})
    unit, wide = (line.get_ydata() for line in ax.get_lines())
    assert unit[0] > 0.99 and unit[-1] < 1e-3           # from all signal to (almost) all noise
    assert np.all(wide >= unit)                          # wider data keeps more signal at every t
    plt.close("all")


# -- CLIP (notebook 10) ----------------------------------------------------------------------------------------------

def test_show_captioned_images_one_axes_per_image_with_its_caption():
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    caps = ["a seven", "a thick upside-down two, shifted to the left", "a three", "a one", "a small nine"]
    fig = plots.show_captioned_images(x, caps, ncols=3)
    assert len(fig.axes) == 5                                         # the sixth, empty slot is removed
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), (x[1, 0].numpy() + 1) / 2, rtol=1e-6)
    assert fig.axes[1].get_xlabel().replace("\n", " ") == caps[1]     # wrapped, not cut
    assert max(len(line) for line in fig.axes[1].get_xlabel().splitlines()) <= 18
    with pytest.raises(ValueError, match="one caption per image"):
        plots.show_captioned_images(x, caps[:2])


def test_plot_similarity_matrix_captions_as_rows_images_as_columns():
    sim = torch.tensor([[3.0, -0.2, 1.0], [0.5, 2.0, -1.0]])          # 2 images × 3 captions
    x = torch.zeros(2, 1, 8, 8)
    ax = plots.plot_similarity_matrix(sim, x, ["a one", "a two", "a three"], title="t")
    np.testing.assert_allclose(ax.images[0].get_array(), sim.T.numpy())   # captions are the rows
    assert len(ax.images) == 1 + 2                                     # heat map + one thumbnail per image
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a one", "a two", "a three"]
    texts = [t.get_text() for t in ax.texts]
    assert texts[:3] == ["3", "0", "1"] and "-0" not in texts          # values written in; no "-0"
    square = plots.plot_similarity_matrix(torch.eye(4), annotate=False)
    assert len(square.patches) == 4 and not square.texts and not square.get_yticks().size  # diagonal outlined
    with pytest.raises(ValueError, match="one caption per column"):
        plots.plot_similarity_matrix(sim, captions=["a one"])
    with pytest.raises(ValueError, match="images"):
        plots.plot_similarity_matrix(sim, torch.zeros(3, 1, 8, 8))


def test_plot_threshold_histogram_draws_each_threshold():
    ax = plots.plot_threshold_histogram(torch.randn(200), {"thin": -0.5, "thick": 0.5}, bins=20, xlabel="w")
    assert sum(p.get_height() for p in ax.patches) == 200
    assert [line.get_xdata()[0] for line in ax.lines] == [-0.5, 0.5]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["thin: -0.50", "thick: 0.50"]


def test_plot_caption_scores_sorted_bars_per_image():
    x = torch.zeros(2, 1, 8, 8)
    caps = ["a one", "a two", "a three", "a four"]
    p = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.7, 0.05, 0.05, 0.2]])
    fig = plots.plot_caption_scores(x, caps, p, top=3)
    bars = fig.axes[1]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["a two", "a three", "a one"]   # highest first
    np.testing.assert_allclose([r.get_width() for r in bars.patches], [0.6, 0.2, 0.1], rtol=1e-6)
    assert [t.get_text() for t in fig.axes[3].get_yticklabels()][0] == "a one"
    with pytest.raises(ValueError, match="scores"):
        plots.plot_caption_scores(x, caps[:3], p)


def test_plot_text_states_rows_are_tokens_and_padding_is_hatched():
    states = torch.randn(6, 10)
    mask = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    tokens = ["<start>", "a", "seven", "<end>", "<pad>", "<pad>"]
    states[3:] = 100.0                                      # padding does not set the colour scale
    ax = plots.plot_text_states(states, mask, tokens, title="t")
    heat = ax.images[0]
    assert heat.get_array().shape == (6, 10) and heat.get_clim()[1] == pytest.approx(float(states[:3].abs().max()))
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert len(ax.patches) == 3 and ax.get_title() == "t"
    with pytest.raises(ValueError, match=r"\[L, D\]"):
        plots.plot_text_states(torch.zeros(2, 3, 4), mask, tokens)
    with pytest.raises(ValueError, match="one entry per row"):
        plots.plot_text_states(states, mask, tokens[:-1])


def test_plot_token_attention_one_map_per_token_after_the_image():
    maps = torch.rand(4, 7, 7)
    fig = plots.plot_token_attention(maps, ["a", "thick", "seven", "<end>"], image=torch.zeros(1, 28, 28))
    axes = fig.axes[:-1]                                    # the last one is the colour bar
    assert len(axes) == 5 and axes[0].get_title() == "image"
    assert [ax.get_title() for ax in axes[1:]] == ["a", "thick", "seven", "<end>"]
    assert np.allclose(axes[2].images[0].get_array(), maps[1].numpy())
    assert axes[1].images[0].get_clim() == (0.0, pytest.approx(float(maps.max())))
    fig2 = plots.plot_token_attention(maps[:2], ["a", "b"], vmax=1.0)
    assert len(fig2.axes) == 3 and fig2.axes[0].images[0].get_clim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="one token per map"):
        plots.plot_token_attention(maps, ["a"])
    with pytest.raises(ValueError, match=r"\[L, h, w\]"):
        plots.plot_token_attention(maps[0], ["a"])
