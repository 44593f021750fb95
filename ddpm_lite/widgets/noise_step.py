"""`NoiseStepExplorer` (notebook 01: the forward process): scrub t and watch x_t, its histogram and ᾱ_t."""

from __future__ import annotations

import math
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch

from .. import plots
from ..diffusion import GaussianDiffusion
from ..schedules import SCHEDULES
from ._base import Explorer, check_images, show_grid


class NoiseStepExplorer(Explorer):
    """Scrub through the forward process q(x_t | x_0) of Ho et al. 2020 (eq. 4) on a batch of images.

        x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε,   ε ~ N(0, I) drawn **once** (so moving t changes only the mixing
        weights and the pictures change smoothly).

    One figure with three panels, updated in place: (1) x_t for the first ``n_show`` images, (2) the
    histogram of all pixel values of x_t against N(0, 1), (3) ᾱ_t of every schedule with the current t
    marked on the selected one. Below it, a line of text (``w.info``) gives ᾱ_t, SNR(t) and the empirical
    vs. predicted mean and variance of x_t.

    Args:
        images: ``B×C×H×W`` in [−1, 1]. All of them feed the histogram and the statistics; the first
            ``n_show`` are drawn.
        schedules: schedule names offered in the dropdown (`ddpm_lite.schedules.SCHEDULES`).
        T: number of diffusion steps.
        t: initial timestep (0-based: index t is the paper's step t+1).
        seed: seed of the fixed noise ε.
        n_show: images drawn in the grid; ``nrow`` images per row (default ⌈√n_show⌉).

    Attributes (for tests and for curious learners):
        slider (IntSlider over t), dropdown (schedule), image (ipywidgets.Image, PNG), info (HTML),
        x0, noise (the fixed ε), diffusions ({name: GaussianDiffusion}), x_t (the batch now shown),
        fig (the one matplotlib figure), renders (how many frames were drawn).

    DOM (JupyterLab, ipywidgets 8): ``div.ddpm-noise-explorer`` (a VBox) > [``div.ddpm-noise-explorer-controls``
    (HBox) > [``div.ddpm-noise-explorer-schedule`` (select inside), ``div.ddpm-noise-explorer-slider``],
    ``img.ddpm-noise-explorer-image``, ``div.ddpm-noise-explorer-info``].
    """

    CSS_CLASS = "ddpm-noise-explorer"

    def __init__(self, images, schedules: Sequence[str] = SCHEDULES, T: int = 1000, t: int | None = None,
                 seed: int = 0, n_show: int = 16, nrow: int | None = None, bins: int = 48):
        images = check_images(images)
        schedules = list(schedules)
        if not schedules:
            raise ValueError("schedules must name at least one schedule")
        self.diffusions = {name: GaussianDiffusion(name, T) for name in schedules}  # checks the names and T
        self.T = int(T)
        if t is None:
            t = self.T // 4
        if not 0 <= int(t) < self.T:
            raise ValueError(f"t must lie in [0, {self.T - 1}], got {t}")
        self.x0 = images
        self.noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
        self.n_show = max(1, min(int(n_show), images.shape[0]))
        self.nrow = nrow
        self.bins = int(bins)
        # numpy copies for the per-frame work: a multiply-add, a histogram and two moments (cheaper than torch
        # ops on a busy CPU, where intra-op threads contend)
        self._x0_np = self.x0.numpy()
        self._noise_np = self.noise.numpy()
        self._x0_mean = float(self._x0_np.mean(dtype=np.float64))
        self._x0_var = float(self._x0_np.var(dtype=np.float64, ddof=1))
        self._x_t_np = self._x0_np.copy()

        # -- controls -------------------------------------------------------------------------------------
        self.slider = self._styled(widgets.IntSlider(value=int(t), min=0, max=self.T - 1, step=1, description="t",
                                                     continuous_update=True, layout=widgets.Layout(width="420px")),
                                   "slider")
        self.dropdown = self._styled(widgets.Dropdown(options=schedules, value=schedules[0], description="schedule",
                                                      layout=widgets.Layout(width="220px")), "schedule")

        # -- the one figure -------------------------------------------------------------------------------
        self._build_figure()
        self._finish([self.dropdown, self.slider], animated=[
            self._im, self._img_title, self._stairs, self._hist_title, *self._ab_lines.values(), self._vline,
            self._marker, self._ab_title,
        ], observe=[self.slider, self.dropdown])

    # -- state --------------------------------------------------------------------------------------------

    @property
    def t(self) -> int:
        return int(self.slider.value)

    @property
    def schedule(self) -> str:
        return str(self.dropdown.value)

    @property
    def diffusion(self) -> GaussianDiffusion:
        return self.diffusions[self.schedule]

    def alpha_bar(self, t: int | None = None, schedule: str | None = None) -> float:
        """ᾱ_t of a schedule (default: the ones selected)."""
        d = self.diffusions[schedule or self.schedule]
        return float(d.schedule.alphas_cumprod[self.t if t is None else t])

    @property
    def x_t(self) -> torch.Tensor:
        """The batch x_t now shown (all images, not only the drawn ones)."""
        return torch.from_numpy(self._x_t_np)

    def x_t_at(self, t: int, schedule: str | None = None) -> torch.Tensor:
        """x_t of the whole batch with the widget's fixed noise, via `GaussianDiffusion.q_sample`."""
        d = self.diffusions[schedule or self.schedule]
        tt = torch.full((self.x0.shape[0],), int(t), dtype=torch.long)
        return d.q_sample(self.x0, tt, noise=self.noise)

    @property
    def stats(self) -> dict:
        """Empirical mean/variance of all pixels of x_t, and what eq. 4 predicts from x_0's statistics:
        E[x_t] = √ᾱ E[x_0], Var[x_t] = ᾱ Var[x_0] + (1 − ᾱ) (ε independent of x_0)."""
        ab = self.alpha_bar()
        x_t = self._x_t_np
        return {
            "t": self.t,
            "schedule": self.schedule,
            "alpha_bar": ab,
            "snr": ab / (1 - ab) if ab < 1 else math.inf,
            "mean": float(x_t.mean(dtype=np.float64)),
            "var": float(x_t.var(dtype=np.float64, ddof=1)),
            "expected_mean": math.sqrt(ab) * self._x0_mean,
            "expected_var": ab * self._x0_var + (1 - ab),
        }

    # -- drawing ------------------------------------------------------------------------------------------

    def _build_figure(self) -> None:
        fig, (ax_img, ax_hist, ax_ab) = plots.new_figure(figsize=(9.6, 3.1), ncols=3,
                                                         gridspec_kw={"width_ratios": [1.0, 1.15, 1.15]})
        self.fig = fig
        self._im = show_grid(ax_img, plots.to_image_grid(self.x0[: self.n_show], nrow=self.nrow))
        ax_img.set_axis_off()
        self._img_title = ax_img.set_title("x at t = 000")

        self._edges = np.linspace(-4.0, 4.0, self.bins + 1)
        self._stairs = ax_hist.stairs(np.zeros(self.bins), self._edges, fill=True, alpha=0.55,
                                      color="#1f77b4", label=r"pixels of $x_t$")
        xs = np.linspace(-4, 4, 200)
        ax_hist.plot(xs, plots.normal_pdf(xs), color="k", lw=1.2, label=r"$\mathcal{N}(0,1)$")
        ax_hist.set(xlim=(-4, 4), ylim=(0, 1.0), xlabel="pixel value", ylabel="density")
        ax_hist.legend(loc="upper right", fontsize=8, frameon=False)
        ax_hist.grid(alpha=0.3)
        self._hist_title = ax_hist.set_title("mean, var")

        ts = np.arange(self.T)
        self._ab_lines = {}
        for name, d in self.diffusions.items():
            (line,) = ax_ab.plot(ts, d.schedule.alphas_cumprod.numpy(), label=name,
                                 color=plots.SCHEDULE_COLORS.get(name), lw=1.0, alpha=0.5)
            self._ab_lines[name] = line
        self._vline = ax_ab.axvline(0, color="k", lw=0.8, ls="--")
        (self._marker,) = ax_ab.plot([0], [1], "o", color="k", ms=6, zorder=5)
        ax_ab.set(xlim=(0, self.T - 1), ylim=(-0.02, 1.02), xlabel="t", ylabel=r"$\bar\alpha_t$")
        ax_ab.legend(loc="upper right", fontsize=8, frameon=False)
        ax_ab.grid(alpha=0.3)
        self._ab_title = ax_ab.set_title("alpha = 0.000")
        fig.tight_layout()

    def update(self) -> None:
        """Recompute x_t for the current (schedule, t), update the artists and re-render the PNG."""
        t, name = self.t, self.schedule
        sched = self.diffusion.schedule
        # x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (eq. 4): the same numbers as `self.x_t_at(t)` (GaussianDiffusion.q_sample)
        a = np.float32(sched.sqrt_alphas_cumprod[t])
        b = np.float32(sched.sqrt_one_minus_alphas_cumprod[t])
        self._x_t_np = a * self._x0_np + b * self._noise_np
        ab = self.alpha_bar()
        s = self.stats

        self._im.set_data(plots.to_image_grid(self._x_t_np[: self.n_show], nrow=self.nrow))
        self._img_title.set_text(f"x\u209c at t = {t} ({name})")
        counts, _ = np.histogram(self._x_t_np.ravel(), bins=self._edges)
        self._stairs.set_data(counts / self._x_t_np.size / (self._edges[1] - self._edges[0]))
        self._hist_title.set_text(f"mean {s['mean']:+.2f}, var {s['var']:.2f}")
        for n, line in self._ab_lines.items():
            line.set_linewidth(2.2 if n == name else 1.0)
            line.set_alpha(1.0 if n == name else 0.35)
        self._vline.set_xdata([t, t])
        self._marker.set_data([t], [ab])
        self._ab_title.set_text(f"\u1fb1\u209c = {ab:.3f}, SNR = {s['snr']:.3g}")

        self._show(
            f"t = {t} · {name} · ᾱ<sub>t</sub> = {ab:.4f} · √ᾱ<sub>t</sub> = {math.sqrt(ab):.4f} · "
            f"SNR = {s['snr']:.3g} · mean(x<sub>t</sub>) = {s['mean']:+.3f} (eq. 4 predicts {s['expected_mean']:+.3f}) · "
            f"var(x<sub>t</sub>) = {s['var']:.3f} (predicted {s['expected_var']:.3f})"
        )
