"""Helpers appended for notebooks 07 and 08: `metrics.within_class_spread`, `plots.plot_timestep_spacings`,
`plots.plot_sampler_benchmark`."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lite import metrics, plots  # noqa: E402
from ddpm_lite.diffusion import GaussianDiffusion  # noqa: E402


def test_within_class_spread_matches_the_trace_of_the_class_covariance():
    g = torch.Generator().manual_seed(0)
    n, d = 20000, 4
    stds = torch.tensor([0.5, 2.0])
    labels = torch.arange(n) % 2
    means = torch.tensor([[10.0] * d, [-10.0] * d])
    feats = means[labels] + stds[labels, None] * torch.randn(n, d, generator=g)
    # tr Cov = d·σ² per class, averaged over the classes; the class means do not count
    expected = d * float((stds ** 2).mean())
    assert metrics.within_class_spread(feats, labels) == pytest.approx(expected, rel=0.03)
    # collapsing every class onto one point gives 0
    assert metrics.within_class_spread(means[labels], labels) == pytest.approx(0.0, abs=1e-12)
    # a class with one member is skipped
    assert metrics.within_class_spread(torch.cat([feats[:10], means[:1] + 99]), torch.cat([labels[:10], torch.tensor([7])])) \
        == pytest.approx(metrics.within_class_spread(feats[:10], labels[:10]))
    with pytest.raises(ValueError, match="two or more"):
        metrics.within_class_spread(feats[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        metrics.within_class_spread(feats[:4], torch.tensor([0, 1]))


def test_plot_timestep_spacings_marks_every_visited_step():
    d = GaussianDiffusion("linear", 1000)
    ax = plots.plot_timestep_spacings(1000, 10, alphas_cumprod=d.schedule.alphas_cumprod)
    assert len(ax.collections) == 4 and all(len(c.get_offsets()) == 10 for c in ax.collections)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[1] == "leading (first t = 900)" and labels[2] == "trailing (first t = 999)"
    plt.close(ax.figure)


def test_plot_sampler_benchmark_skips_unmeasured_values():
    rows = [dict(sampler="DDIM", nfe=n, seconds=0.01 * n, accuracy=0.9, fd=2.0) for n in (5, 10, 20)]
    rows.append(dict(sampler="DDPM", nfe=1000, seconds=10.0, accuracy=None, fd=None))
    fig = plots.plot_sampler_benchmark(rows, floor=1.0)
    acc_ax, fd_ax, sec_ax = fig.axes[:3]
    assert [len(line.get_xdata()) for line in acc_ax.lines] == [3]
    assert sorted(len(line.get_xdata()) for line in sec_ax.lines) == [1, 3]
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in fd_ax.lines)  # the floor
    assert list(acc_ax.lines[0].get_ydata()) == [90.0, 90.0, 90.0]
    plt.close(fig)
    with pytest.raises(ValueError, match="empty"):
        plots.plot_sampler_benchmark([])


def test_saturated_fraction_counts_both_ends_per_image():
    x = torch.zeros(3, 1, 2, 2)
    x[0, 0, 0, 0] = 1.0
    x[0, 0, 1, 1] = -1.0
    x[1] = -0.9995
    got = metrics.saturated_fraction(x)
    assert got.tolist() == [0.5, 1.0, 0.0]
    assert metrics.saturated_fraction(x, tol=0.0).tolist() == [0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="batch"):
        metrics.saturated_fraction(torch.zeros(4))
