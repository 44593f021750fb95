"""Interactive ipywidgets explorers for the course notebooks.

Every widget here follows the same recipe (docs/COURSE_CONVENTIONS.md):

* it *is* an ``ipywidgets.VBox`` (so a cell can end with ``w`` or ``display(w)``) with a stable CSS class
  (``add_class``) that a browser test can look for;
* its controls and its picture are attributes (``w.slider``, ``w.dropdown``, ``w.image``, ``w.info``), so a
  test can set ``w.slider.value = 500`` headlessly and read ``w.image.value`` (PNG bytes);
* the matplotlib figure is made **once** (a bare ``matplotlib.figure.Figure``, not registered with pyplot,
  so the inline backend never shows it and ``plt.get_fignums()`` does not change), and each move only
  updates the artists (``set_data``, ``set_offsets``, …) and re-encodes the PNG;
* the heavy work is done up front (fixed noise, every sampling step computed once), so scrubbing is
  responsive on a CPU.

Sections: shared helpers, `NoiseStepExplorer` (notebook 01), `SamplingScrubber` (notebook 05),
`GuidanceExplorer` (notebooks 04 and 07), `SamplerExplorer` (notebook 06).
"""

from __future__ import annotations

import math
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch

from . import plots
from .diffusion import GaussianDiffusion
from .schedules import SCHEDULES

__all__ = ["NoiseStepExplorer", "SamplingScrubber"]


# ==============================================================================================================
# shared helpers
# ==============================================================================================================


def _image_widget(fig, css_class: str) -> widgets.Image:
    """An empty PNG ``Image`` whose width is pinned to the figure's pixel width (so it is not stretched)."""
    width_px = int(round(fig.get_figwidth() * fig.dpi))
    img = widgets.Image(format="png", layout=widgets.Layout(width=f"{width_px}px", height="auto"))
    img.add_class(css_class)
    return img


def _check_images(images, name: str = "images") -> torch.Tensor:
    if not torch.is_tensor(images):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"{name} must be a B×C×H×W tensor with C = 1 or 3 and B >= 1, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {images.dtype}")
    return images.detach().to("cpu", torch.float32)


def _grid_shape(n: int, nrow: int | None) -> tuple[int, int]:
    ncol = min(n, nrow or int(math.ceil(math.sqrt(n))))
    return ncol, int(math.ceil(n / ncol))


# ==============================================================================================================
# NoiseStepExplorer (notebook 01: the forward process)
# ==============================================================================================================


class NoiseStepExplorer(widgets.VBox):
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
        images = _check_images(images)
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
        self.renders = 0
        # numpy copies for the per-frame work: a multiply-add, a histogram and two moments (cheaper than torch
        # ops on a busy CPU, where intra-op threads contend)
        self._x0_np = self.x0.numpy()
        self._noise_np = self.noise.numpy()
        self._x0_mean = float(self._x0_np.mean(dtype=np.float64))
        self._x0_var = float(self._x0_np.var(dtype=np.float64, ddof=1))
        self._x_t_np = self._x0_np.copy()

        # -- controls -------------------------------------------------------------------------------------
        self.slider = widgets.IntSlider(value=int(t), min=0, max=self.T - 1, step=1, description="t",
                                        continuous_update=True, layout=widgets.Layout(width="420px"))
        self.slider.add_class(f"{self.CSS_CLASS}-slider")
        self.dropdown = widgets.Dropdown(options=schedules, value=schedules[0], description="schedule",
                                         layout=widgets.Layout(width="220px"))
        self.dropdown.add_class(f"{self.CSS_CLASS}-schedule")
        controls = widgets.HBox([self.dropdown, self.slider])
        controls.add_class(f"{self.CSS_CLASS}-controls")

        # -- the one figure -------------------------------------------------------------------------------
        self._build_figure()
        self.image = _image_widget(self.fig, f"{self.CSS_CLASS}-image")
        self.info = widgets.HTML()
        self.info.add_class(f"{self.CSS_CLASS}-info")

        super().__init__([controls, self.image, self.info])
        self.add_class(self.CSS_CLASS)
        self.slider.observe(self._on_change, names="value")
        self.dropdown.observe(self._on_change, names="value")
        self.update()

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
        grid = plots.to_image_grid(self.x0[: self.n_show], nrow=self.nrow)
        kw = {"cmap": "gray"} if grid.ndim == 2 else {}
        self._im = ax_img.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest", **kw)
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
        self._renderer = plots.FrameRenderer(fig, [
            self._im, self._img_title, self._stairs, self._hist_title, *self._ab_lines.values(), self._vline,
            self._marker, self._ab_title,
        ])

    def _on_change(self, change=None) -> None:
        self.update()

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

        self.image.value = self._renderer.render()
        self.renders += 1
        snr = s["snr"]
        self.info.value = (
            f"<code>t = {t} · {name} · ᾱ<sub>t</sub> = {ab:.4f} · √ᾱ<sub>t</sub> = {math.sqrt(ab):.4f} · "
            f"SNR = {snr:.3g} · mean(x<sub>t</sub>) = {s['mean']:+.3f} (eq. 4 predicts {s['expected_mean']:+.3f}) · "
            f"var(x<sub>t</sub>) = {s['var']:.3f} (predicted {s['expected_var']:.3f})</code>"
        )


# ==============================================================================================================
# SamplingScrubber (notebook 05: the reverse process, step by step)
# ==============================================================================================================


class SamplingScrubber(widgets.VBox):
    """Scrub through a finished sampling run: x_t after each reverse step beside the x̂_0 predicted there.

    Build it from the steps of any sampler (``SamplingScrubber(list(samplers.sample_steps(...)))``, each a
    `Step` with ``x``, ``pred_x0``, ``t``), or let it run the sampler: ``SamplingScrubber(model=m,
    diffusion=d, n=16, sampler="ddim", steps=50, seed=0, y=labels)``. Every frame is computed once, up front; the slider then
    only swaps two pre-tiled image grids in one figure (``set_data``) and re-encodes the PNG.

    In ancestral sampling (Ho et al. 2020, Algorithm 2) the step from x_t to x_{t−1} goes through the
    model's estimate x̂_0 = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t (eq. 4 solved for x_0; eq. 15 of the paper); early on x̂_0
    is a blurry average, late it is almost x_{t−1} itself.

    Args:
        steps_list: a sequence of `Step` (or anything with ``.x``, ``.pred_x0``, ``.t``), first = first update.
        model, diffusion, n, sampler, seed, sample_kwargs: used when ``steps_list`` is None: the sampler is run on
            ``n`` samples from ``torch.Generator().manual_seed(seed)`` via `samplers.sample_steps` (with
            ``sample_kwargs``, e.g. ``steps=50`` for DDIM, ``y=labels``, ``guidance=2``). Image shape is taken
            from ``image_shape`` or from ``model.config`` (``in_channels``/``image_size``).
        max_frames: keep at most this many frames (evenly spaced, always the last one), e.g. 200 of DDPM's
            1000 steps, to bound memory for larger images.
        n_show, nrow: how many samples to draw and how many per row.

    Attributes: slider (IntSlider over frames), play (Play, linked to the slider in the browser), image
    (ipywidgets.Image, PNG), info (HTML), frames (list of dicts: index, t, x, pred_x0), fig, renders.

    DOM: ``div.ddpm-sampling-scrubber`` (VBox) > [``div.ddpm-sampling-scrubber-controls`` (HBox) >
    [``div.ddpm-sampling-scrubber-play``, ``div.ddpm-sampling-scrubber-slider``],
    ``img.ddpm-sampling-scrubber-image``, ``div.ddpm-sampling-scrubber-info``].
    """

    CSS_CLASS = "ddpm-sampling-scrubber"

    def __init__(self, steps_list=None, model=None, diffusion=None, n: int = 16, sampler: str = "ddpm",
                 seed: int = 0, image_shape: tuple | None = None, max_frames: int | None = None, n_show: int = 16,
                 nrow: int | None = None, frame: int | None = None, **sample_kwargs):
        if steps_list is None:
            steps = self._run_sampler(model, diffusion, n, sampler, seed, image_shape, sample_kwargs)
        elif sample_kwargs or model is not None:
            raise ValueError("pass either steps_list=[...] or model=..., diffusion=... (with sampler options such "
                             "as steps=50), not both")
        else:
            steps = steps_list
        steps = list(steps)
        if not steps:
            raise ValueError("steps is empty: nothing to scrub through")
        for s in steps[:1]:
            if not all(hasattr(s, a) for a in ("x", "pred_x0", "t")):
                raise ValueError(f"each step needs .x, .pred_x0 and .t (a samplers.Step), got {type(s).__name__}")
        keep = list(range(len(steps)))
        if max_frames is not None and len(steps) > max_frames:
            if max_frames < 2:
                raise ValueError(f"max_frames must be >= 2, got {max_frames}")
            keep = sorted(set(np.round(np.linspace(0, len(steps) - 1, max_frames)).astype(int).tolist()))
        b = steps[0].x.shape[0]
        self.n_show = max(1, min(int(n_show), b))
        self.nrow = nrow
        self.frames = []
        for k in keep:
            s = steps[k]
            x = s.x[: self.n_show].detach().float().cpu()
            p = s.pred_x0[: self.n_show].detach().float().cpu()
            self.frames.append({"index": int(getattr(s, "index", k)), "t": int(s.t), "x": x, "pred_x0": p})
        self._grids = [(plots.to_image_grid(f["x"], nrow=nrow), plots.to_image_grid(f["pred_x0"], nrow=nrow))
                       for f in self.frames]
        self.renders = 0

        last = len(self.frames) - 1
        frame = last if frame is None else int(frame)
        if not 0 <= frame <= last:
            raise ValueError(f"frame must lie in [0, {last}], got {frame}")
        self.slider = widgets.IntSlider(value=frame, min=0, max=last, step=1, description="step",
                                        continuous_update=True, layout=widgets.Layout(width="420px"))
        self.slider.add_class(f"{self.CSS_CLASS}-slider")
        self.play = widgets.Play(value=frame, min=0, max=last, step=max(1, len(self.frames) // 100), interval=60,
                                 description="play")
        self.play.add_class(f"{self.CSS_CLASS}-play")
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        controls = widgets.HBox([self.play, self.slider])
        controls.add_class(f"{self.CSS_CLASS}-controls")

        self._build_figure()
        self.image = _image_widget(self.fig, f"{self.CSS_CLASS}-image")
        self.info = widgets.HTML()
        self.info.add_class(f"{self.CSS_CLASS}-info")
        super().__init__([controls, self.image, self.info])
        self.add_class(self.CSS_CLASS)
        self.slider.observe(lambda change: self.update(), names="value")
        self.update()

    @staticmethod
    def _run_sampler(model, diffusion, n, sampler, seed, image_shape, sample_kwargs):
        from .samplers import sample_steps

        if model is None or diffusion is None:
            raise ValueError("pass steps_list=[...] from samplers.sample_steps, or both model= and diffusion=")
        if image_shape is None:
            cfg = getattr(model, "config", None) or {}
            if "image_size" not in cfg:
                raise ValueError("cannot tell the image shape from the model: pass image_shape=(C, H, W)")
            image_shape = (cfg.get("in_channels", 1), cfg["image_size"], cfg["image_size"])
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            gen = torch.Generator().manual_seed(seed)
            return list(sample_steps(model, diffusion, (n, *image_shape), sampler=sampler, generator=gen,
                                     **sample_kwargs))
        finally:
            if was_training:
                model.train()

    @property
    def frame(self) -> dict:
        """The frame now shown: index, t, x (x_t after the step) and pred_x0."""
        return self.frames[int(self.slider.value)]

    def _build_figure(self) -> None:
        ncol, nrows = _grid_shape(self.n_show, self.nrow)
        panel_h = 2.6
        panel_w = max(2.2, panel_h * ncol / nrows)
        fig, (ax_x, ax_p) = plots.new_figure(figsize=(2 * panel_w + 0.4, panel_h + 0.45), ncols=2)
        self.fig = fig
        g_x, g_p = self._grids[0]
        kw = {"cmap": "gray"} if g_x.ndim == 2 else {}
        self._im_x = ax_x.imshow(g_x, vmin=0.0, vmax=1.0, interpolation="nearest", **kw)
        self._im_p = ax_p.imshow(g_p, vmin=0.0, vmax=1.0, interpolation="nearest", **kw)
        for ax in (ax_x, ax_p):
            ax.set_axis_off()
        self._title_x = ax_x.set_title("x at t = 000")
        self._title_p = ax_p.set_title("predicted x0")
        fig.tight_layout()
        self._renderer = plots.FrameRenderer(fig, [self._im_x, self._im_p, self._title_x, self._title_p])

    def update(self) -> None:
        k = int(self.slider.value)
        f = self.frames[k]
        g_x, g_p = self._grids[k]
        self._im_x.set_data(g_x)
        self._im_p.set_data(g_p)
        where = "x\u2080 (done)" if f["t"] < 0 else f"x\u209c, t = {f['t']}"
        self._title_x.set_text(f"after step {f['index'] + 1}: {where}")
        self._title_p.set_text(f"predicted x\u0302\u2080 at step {f['index'] + 1}")
        self.image.value = self._renderer.render()
        self.renders += 1
        x = f["x"]
        self.info.value = (
            f"<code>frame {k + 1}/{len(self.frames)} · network call {f['index'] + 1} · now at t = {f['t']} "
            f"(−1 = the final sample) · std(x<sub>t</sub>) = {float(x.std()):.3f} · "
            f"mean |x<sub>t</sub> − x̂<sub>0</sub>| = {float((x - f['pred_x0']).abs().mean()):.3f}</code>"
        )


# --- notebooks 04 and 07 ---
# GuidanceExplorer: a slider over the classifier-free guidance weight w (notebook 04: class conditioning,
# notebook 07: guidance, thresholding)


class GuidanceExplorer(widgets.VBox):
    """Slide the classifier-free guidance weight w and watch a grid of class-conditional samples change.

    Guidance (Ho & Salimans 2021, eq. 6), in this package's convention:

        ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅),     w = 0: the plain conditional model (a "guidance scale"
                                                      s = 1 + w in diffusers / Stable Diffusion).

    The grid has one row per class and one column per seed. The starting noise x_T is drawn **once** (column j
    uses the same x_T in every row and for every w), so moving the slider changes only the guidance: the same
    sample becomes more prototypical (and, with static clipping at large w, saturated). Every (w, threshold)
    grid is sampled once and cached; with ``precompute=True`` all of them are sampled up front, so the slider
    only swaps an image (``set_data``) and re-encodes the PNG.

    Beside the grid, a histogram of all pixel values of the grid (piling up at ±1 = saturated pixels) and a
    line of text (``w.info``) with the fraction of saturated pixels and, when the digits classifier is
    available (`ddpm_lite.metrics`), the fraction of samples classified as their intended class.

    Args:
        model, diffusion: a class-conditional model (``num_classes`` set, null class ``num_classes``) and its
            `GaussianDiffusion`.
        weights: the guidance weights the slider offers (w >= 0).
        classes: the class labels, one row each (default: all ``model.num_classes``).
        n_per_class: samples per class (all of them feed the histogram, the accuracy and `samples()`, so a
            notebook can reuse them for its measurements).
        n_show: columns drawn per class (default: min(n_per_class, 6)).
        seed: seed of the fixed x_T.
        sampler, steps, eta, percentile: passed to `samplers.sample` (default DDIM, 20 steps, deterministic).
        thresholds: the x̂_0 thresholding modes offered ("static", "dynamic", None); with more than one a
            toggle appears (``w.threshold``).
        w: the initial weight (default: the first of ``weights``).
        image_shape: (C, H, W), default from ``model.config``.
        precompute: sample every grid now (else on first view).
        classifier: a `metrics` classifier, "digits", or None to skip the accuracy read-out. "auto" (default)
            uses the shipped digits classifier when it exists and the images are 1×8×8.
        class_names: row labels (default: the class indices).

    Attributes: slider (SelectionSlider over w), threshold (ToggleButtons), image (ipywidgets.Image, PNG),
    info (HTML), x_T (the fixed noise), labels (the class of every grid cell), cache ({(w, threshold):
    samples}), fig, renders, sample_calls (how many grids were sampled).

    DOM: ``div.ddpm-guidance-explorer`` (VBox) > [``div.ddpm-guidance-explorer-controls`` (HBox) >
    [``div.ddpm-guidance-explorer-slider``, ``div.ddpm-guidance-explorer-threshold``],
    ``img.ddpm-guidance-explorer-image``, ``div.ddpm-guidance-explorer-info``].
    """

    CSS_CLASS = "ddpm-guidance-explorer"

    def __init__(self, model, diffusion, weights: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
                 classes: Sequence[int] | None = None, n_per_class: int = 6, seed: int = 0, sampler: str = "ddim",
                 steps: int | None = 20, eta: float = 0.0, thresholds: Sequence = ("static",),
                 percentile: float = 0.995, w: float | None = None, image_shape: tuple | None = None,
                 precompute: bool = True, classifier="auto", class_names: Sequence | None = None,
                 n_show: int | None = None):
        from .diffusion import THRESHOLDS

        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError("GuidanceExplorer needs a class-conditional model (num_classes set, with a null class "
                             "for classifier-free guidance); this model is unconditional")
        weights = [float(v) for v in weights]
        if not weights:
            raise ValueError("weights must hold at least one guidance weight")
        if any(v < 0 for v in weights):
            raise ValueError(f"guidance weights must be >= 0 (w = 0: no guidance), got {weights}")
        if len(set(weights)) != len(weights):
            raise ValueError(f"weights must be distinct, got {weights}")
        thresholds = list(thresholds)
        if not thresholds or any(th not in THRESHOLDS for th in thresholds):
            raise ValueError(f"thresholds must be a non-empty list of {THRESHOLDS}, got {thresholds}")
        classes = list(range(num_classes)) if classes is None else [int(c) for c in classes]
        if not classes or min(classes) < 0 or max(classes) >= num_classes:
            raise ValueError(f"classes must be labels in [0, {num_classes - 1}], got {classes}")
        if n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
        n_show = min(int(n_per_class), 6) if n_show is None else int(n_show)
        if not 1 <= n_show <= n_per_class:
            raise ValueError(f"n_show must be in [1, n_per_class = {n_per_class}], got {n_show}")
        if image_shape is None:
            cfg = getattr(model, "config", None) or {}
            if "image_size" not in cfg:
                raise ValueError("cannot tell the image shape from the model: pass image_shape=(C, H, W)")
            size = cfg["image_size"]
            h, wd = (size, size) if isinstance(size, int) else tuple(size)
            image_shape = (int(cfg.get("in_channels", 1)), int(h), int(wd))
        w0 = weights[0] if w is None else float(w)
        if w0 not in weights:
            raise ValueError(f"w must be one of weights {weights}, got {w}")

        self.model, self.diffusion = model, diffusion
        self.weights, self.classes, self.n_per_class, self.n_show = weights, classes, int(n_per_class), n_show
        self.sampler, self.steps, self.eta, self.percentile = sampler, steps, float(eta), float(percentile)
        self.image_shape = tuple(image_shape)
        self.class_names = [str(c) for c in (class_names if class_names is not None else classes)]
        if len(self.class_names) != len(classes):
            raise ValueError(f"class_names must have one entry per class ({len(classes)}), got {len(self.class_names)}")
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
        self.device = device
        noise = torch.randn((self.n_per_class, *self.image_shape), generator=torch.Generator().manual_seed(seed))
        # sample k is class k // n_per_class, seed k % n_per_class: the same x_T for seed j in every class
        self.x_T = noise.repeat(len(classes), 1, 1, 1)
        self.labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(self.n_per_class)
        self.cache: dict = {}
        self.sample_calls = 0
        self.renders = 0
        self.classifier = self._resolve_classifier(classifier)

        # -- controls -------------------------------------------------------------------------------------
        self.slider = widgets.SelectionSlider(options=[(f"{v:g}", v) for v in weights], value=w0,
                                              description="w", continuous_update=True,
                                              layout=widgets.Layout(width="360px"))
        self.slider.add_class(f"{self.CSS_CLASS}-slider")
        self.threshold = widgets.ToggleButtons(options=[(str(th), th) for th in thresholds], value=thresholds[0],
                                               description="x̂₀ clip", style={"button_width": "80px"})
        self.threshold.add_class(f"{self.CSS_CLASS}-threshold")
        if len(thresholds) == 1:
            self.threshold.layout.display = "none"
        controls = widgets.HBox([self.slider, self.threshold])
        controls.add_class(f"{self.CSS_CLASS}-controls")

        if precompute:
            for th in thresholds:
                for v in weights:
                    self.samples(v, th)
        self._build_figure()
        self.image = _image_widget(self.fig, f"{self.CSS_CLASS}-image")
        self.info = widgets.HTML()
        self.info.add_class(f"{self.CSS_CLASS}-info")
        super().__init__([controls, self.image, self.info])
        self.add_class(self.CSS_CLASS)
        self.slider.observe(lambda change: self.update(), names="value")
        self.threshold.observe(lambda change: self.update(), names="value")
        self.update()

    # -- sampling (cached) --------------------------------------------------------------------------------

    def _resolve_classifier(self, classifier):
        if classifier is None or not isinstance(classifier, str):
            return classifier
        from . import metrics

        if classifier == "auto" and self.image_shape != (1, 8, 8):
            return None
        try:
            return metrics.load_classifier("digits" if classifier == "auto" else classifier)
        except (FileNotFoundError, ValueError):
            if classifier == "auto":
                return None
            raise

    def samples(self, w: float | None = None, threshold="__current__") -> torch.Tensor:
        """The grid's samples [len(classes) · n_per_class, C, H, W] at guidance weight w (sampled once, cached)."""
        from .samplers import sample

        w = float(self.slider.value if w is None else w)
        if threshold == "__current__":
            threshold = self.threshold.value
        key = (w, threshold)
        if key not in self.cache:
            x = sample(self.model, self.diffusion, self.x_T.shape, sampler=self.sampler, steps=self.steps,
                       y=self.labels.to(self.device), guidance=w, eta=self.eta, threshold=threshold,
                       percentile=self.percentile, x_T=self.x_T.to(self.device),
                       generator=torch.Generator().manual_seed(12345))
            self.cache[key] = x.detach().float().cpu()
            self.sample_calls += 1
        return self.cache[key]

    def accuracy(self, w: float | None = None, threshold="__current__") -> float | None:
        """Fraction of the grid's samples the digits classifier assigns to their row's class (None if no
        classifier)."""
        if self.classifier is None:
            return None
        from .metrics import sample_accuracy

        return sample_accuracy(self.samples(w, threshold), self.labels, self.classifier)

    # -- drawing ------------------------------------------------------------------------------------------

    def shown(self, x: torch.Tensor) -> torch.Tensor:
        """The first `n_show` samples of every class (the cells of the drawn grid), row by row."""
        x = x.reshape(len(self.classes), self.n_per_class, *x.shape[1:])[:, : self.n_show]
        return x.reshape(-1, *x.shape[2:])

    def _build_figure(self) -> None:
        c, h, wd = self.image_shape
        rows, cols = len(self.classes), self.n_show
        grid_h = 0.32 * rows * max(h, wd) / 8 + 0.5
        grid_w = grid_h * (cols * (wd + 1) + 1) / (rows * (h + 1) + 1)
        fig, (ax_img, ax_hist) = plots.new_figure(figsize=(grid_w + 3.6, max(2.8, grid_h)), ncols=2,
                                                  gridspec_kw={"width_ratios": [max(grid_w, 0.8), 2.8]})
        self.fig = fig
        grid = plots.to_image_grid(self.shown(self.samples(self.weights[0], self.threshold.value)), nrow=cols)
        kw = {"cmap": "gray"} if grid.ndim == 2 else {}
        self._im = ax_img.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest", **kw)
        ax_img.set_xticks([])
        ax_img.set_yticks([1 + r * (h + 1) + (h - 1) / 2 for r in range(rows)], self.class_names, fontsize=8)
        ax_img.tick_params(length=0)
        for side in ("top", "right", "bottom", "left"):
            ax_img.spines[side].set_visible(False)
        ax_img.grid(False)
        self._title = ax_img.set_title("", fontsize=10)

        self._edges = np.linspace(-1.0, 1.0, 41)
        self._stairs = ax_hist.stairs(np.zeros(len(self._edges) - 1), self._edges, fill=True, alpha=0.6,
                                      color="#1f77b4")
        ax_hist.set(xlim=(-1.05, 1.05), ylim=(0, 1), xlabel="pixel value of the samples", ylabel="fraction")
        ax_hist.set_yscale("symlog", linthresh=0.01)
        ax_hist.set_ylim(0, 1)
        self._hist_title = ax_hist.set_title("", fontsize=10)
        fig.tight_layout()

    def update(self) -> None:
        """Show the grid for the current (w, threshold): swap the image data and re-render the PNG."""
        w, th = float(self.slider.value), self.threshold.value
        x = self.samples(w, th)
        self._im.set_data(plots.to_image_grid(self.shown(x), nrow=self.n_show))
        self._title.set_text(f"w = {w:g}  (scale s = 1 + w = {1 + w:g})")
        counts, _ = np.histogram(x.clamp(-1, 1).numpy().ravel(), bins=self._edges)
        self._stairs.set_data(counts / x.numel())
        saturated = float((x.abs() >= 0.999).double().mean())
        self._hist_title.set_text(f"{100 * saturated:.0f}% of pixels at ±1")
        self.image.value = plots.fig_to_png(self.fig)
        self.renders += 1
        acc = self.accuracy(w, th)
        acc_text = "" if acc is None else f" · classified as their row's digit: {100 * acc:.0f}%"
        self.info.value = (f"<code>w = {w:g} (s = {1 + w:g}) · x̂<sub>0</sub> threshold: {th} · "
                           f"{len(x)} samples ({self.n_per_class} fixed seeds per class, {self.n_show} shown) · "
                           f"saturated pixels (|x| = 1): {100 * saturated:.1f}%{acc_text}</code>")
__all__ += ["GuidanceExplorer"]


# --- notebook 06 ---
# SamplerExplorer: pick a sampler and a number of steps, see the samples and the seconds they took (notebook 06:
# fast sampling)


import time  # noqa: E402  (used by SamplerExplorer only)


class SamplerExplorer(widgets.VBox):
    """Pick a sampler and a number of steps; see the samples, the network evaluations and the seconds they took.

    Every choice starts from the **same** x_T (drawn once from ``seed``) with the same class labels, so the
    grids differ only by the sampler. Each (sampler, steps) pair is sampled once when first shown, timed
    with ``time.perf_counter`` and cached; moving back to it only swaps the image. The right panel plots the
    seconds of every run so far against its number of network evaluations (NFE), the current one ringed.

    Sampler choices (keys of ``CHOICES``):
        "ddpm"       ancestral sampling, Ho et al. 2020, Algorithm 2: always all T steps (the steps control
                     is disabled)
        "ddim"       DDIM with η = 0 (deterministic; Song et al. 2021)
        "ddim-eta1"  DDIM with η = 1 (DDPM's variance on a sub-sequence of timesteps)
        "dpmpp2m"    DPM-Solver++(2M), Lu et al. 2022 (deterministic, second order)

    Args:
        model, diffusion: the network and its `GaussianDiffusion`.
        n: number of samples (default 10: one per class for a 10-class model).
        labels: class labels [n] (default: 0, 1, … cycling over ``model.num_classes``; None for an
            unconditional model).
        choices: the sampler keys offered. steps: the step counts offered for the few-step samplers.
        sampler, step: the initial choice. seed: seed of the fixed x_T. guidance: classifier-free guidance
            weight w passed to `samplers.sample` (each NFE then runs the network on a batch of 2n).
        precompute: (sampler, steps) pairs to sample up front. image_shape: (C, H, W), default from the model.
        classifier: a `metrics` classifier, "auto" (the shipped digits classifier for 1×8×8 images when it
            exists) or None; when set, the info line reports the fraction of samples classified as their label.

    Attributes: dropdown (sampler), slider (SelectionSlider over steps), image (ipywidgets.Image, PNG), info
    (HTML), x_T, labels, cache ({(sampler, steps): {"x", "seconds", "nfe"}}), fig, renders, sample_calls.

    DOM: ``div.ddpm-sampler-explorer`` (VBox) > [``div.ddpm-sampler-explorer-controls`` (HBox) >
    [``div.ddpm-sampler-explorer-sampler``, ``div.ddpm-sampler-explorer-steps``],
    ``img.ddpm-sampler-explorer-image``, ``div.ddpm-sampler-explorer-info``].
    """

    CSS_CLASS = "ddpm-sampler-explorer"
    CHOICES = {
        "ddpm": ("DDPM (ancestral)", dict(sampler="ddpm")),
        "ddim": ("DDIM, η = 0", dict(sampler="ddim", eta=0.0)),
        "ddim-eta1": ("DDIM, η = 1", dict(sampler="ddim", eta=1.0)),
        "dpmpp2m": ("DPM-Solver++(2M)", dict(sampler="dpmpp2m")),
    }
    COLORS = {"ddpm": "#d62728", "ddim": "#1f77b4", "ddim-eta1": "#9467bd", "dpmpp2m": "#2ca02c"}

    def __init__(self, model, diffusion: GaussianDiffusion, n: int = 10, labels="auto",
                 choices: Sequence[str] = ("ddpm", "ddim", "ddim-eta1", "dpmpp2m"),
                 steps: Sequence[int] = (5, 10, 20, 50, 100), sampler: str = "ddim", step: int = 20, seed: int = 0,
                 guidance: float = 0.0, precompute: Sequence = (), image_shape: tuple | None = None,
                 classifier="auto", nrow: int | None = None):
        choices = list(choices)
        unknown = [c for c in choices if c not in self.CHOICES]
        if not choices or unknown:
            raise ValueError(f"choices must be a non-empty list of {list(self.CHOICES)}, got {choices}")
        if sampler not in choices:
            raise ValueError(f"sampler must be one of choices {choices}, got {sampler!r}")
        T = int(diffusion.num_timesteps)
        steps = [int(s) for s in steps]
        if not steps or any(not 1 <= s <= T for s in steps) or len(set(steps)) != len(steps):
            raise ValueError(f"steps must be distinct step counts in [1, T = {T}], got {steps}")
        if int(step) not in steps:
            raise ValueError(f"step must be one of steps {steps}, got {step}")
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if guidance < 0:
            raise ValueError(f"guidance weight w must be >= 0, got {guidance}")
        if image_shape is None:
            cfg = getattr(model, "config", None) or {}
            if "image_size" not in cfg:
                raise ValueError("cannot tell the image shape from the model: pass image_shape=(C, H, W)")
            size = cfg["image_size"]
            h, wd = (size, size) if isinstance(size, int) else tuple(size)
            image_shape = (int(cfg.get("in_channels", 1)), int(h), int(wd))
        num_classes = getattr(model, "num_classes", None)
        if isinstance(labels, str) and labels == "auto":
            labels = None if num_classes is None else torch.arange(int(n)) % int(num_classes)
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if labels.shape != (int(n),):
                raise ValueError(f"labels must hold one label per sample: expected shape [{n}], got {tuple(labels.shape)}")
        if guidance > 0 and labels is None:
            raise ValueError("guidance needs class labels (a class-conditional model)")

        self.model, self.diffusion, self.T = model, diffusion, T
        self.n, self.labels, self.guidance, self.nrow = int(n), labels, float(guidance), nrow
        self.image_shape = tuple(image_shape)
        self.steps_options = steps
        try:
            self.device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            self.device = torch.device("cpu")
        self.x_T = torch.randn((self.n, *self.image_shape), generator=torch.Generator().manual_seed(seed))
        self.cache: dict = {}
        self.sample_calls = 0
        self.renders = 0
        self.classifier = self._resolve_classifier(classifier)

        # -- controls -------------------------------------------------------------------------------------
        self.dropdown = widgets.Dropdown(options=[(self.CHOICES[c][0], c) for c in choices], value=sampler,
                                         description="sampler", layout=widgets.Layout(width="260px"))
        self.dropdown.add_class(f"{self.CSS_CLASS}-sampler")
        self.slider = widgets.SelectionSlider(options=[(str(s), s) for s in steps], value=int(step),
                                              description="steps", continuous_update=False,
                                              layout=widgets.Layout(width="340px"))
        self.slider.add_class(f"{self.CSS_CLASS}-steps")
        controls = widgets.HBox([self.dropdown, self.slider])
        controls.add_class(f"{self.CSS_CLASS}-controls")

        for pair in precompute:
            self.run(*pair)
        self._build_figure()
        self.image = _image_widget(self.fig, f"{self.CSS_CLASS}-image")
        self.info = widgets.HTML()
        self.info.add_class(f"{self.CSS_CLASS}-info")
        super().__init__([controls, self.image, self.info])
        self.add_class(self.CSS_CLASS)
        self.dropdown.observe(lambda change: self.update(), names="value")
        self.slider.observe(lambda change: self.update(), names="value")
        self.update()

    # -- sampling (timed, cached) -------------------------------------------------------------------------

    def _resolve_classifier(self, classifier):
        if classifier is None or not isinstance(classifier, str):
            return classifier
        from . import metrics

        if classifier == "auto" and (self.image_shape != (1, 8, 8) or self.labels is None):
            return None
        try:
            return metrics.load_classifier("digits" if classifier == "auto" else classifier)
        except (FileNotFoundError, ValueError):
            if classifier == "auto":
                return None
            raise

    def key(self, sampler: str | None = None, steps: int | None = None) -> tuple[str, int]:
        """The cache key of a choice: DDPM always runs all T steps."""
        sampler = self.dropdown.value if sampler is None else sampler
        if sampler not in self.CHOICES:
            raise ValueError(f"sampler must be one of {list(self.CHOICES)}, got {sampler!r}")
        steps = int(self.slider.value if steps is None else steps)
        return sampler, (self.T if sampler == "ddpm" else steps)

    def run(self, sampler: str | None = None, steps: int | None = None) -> dict:
        """Samples of (sampler, steps) from the fixed x_T: {"x" [n, C, H, W], "seconds", "nfe"} (cached)."""
        from .samplers import sample

        key = self.key(sampler, steps)
        if key not in self.cache:
            name, s = key
            kwargs = dict(self.CHOICES[name][1])
            y = None if self.labels is None else self.labels.to(self.device)
            start = time.perf_counter()
            x = sample(self.model, self.diffusion, self.x_T.shape, steps=None if name == "ddpm" else s, y=y,
                       guidance=self.guidance, x_T=self.x_T.to(self.device),
                       generator=torch.Generator(device=self.device).manual_seed(1), **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            self.cache[key] = {"x": x.detach().float().cpu(), "seconds": seconds, "nfe": s}
            self.sample_calls += 1
        return self.cache[key]

    def accuracy(self, sampler: str | None = None, steps: int | None = None) -> float | None:
        """Fraction of the samples the classifier assigns to their label (None without a classifier)."""
        if self.classifier is None:
            return None
        from .metrics import sample_accuracy

        return sample_accuracy(self.run(sampler, steps)["x"], self.labels, self.classifier)

    # -- drawing ------------------------------------------------------------------------------------------

    def _build_figure(self) -> None:
        ncol, nrows = _grid_shape(self.n, self.nrow)
        panel_h = 2.6
        grid_w = max(1.6, panel_h * ncol / nrows)
        fig, (ax_img, ax_t) = plots.new_figure(figsize=(grid_w + 3.8, panel_h + 0.5), ncols=2,
                                               gridspec_kw={"width_ratios": [grid_w, 3.4]})
        self.fig = fig
        first = np.zeros((self.n, *self.image_shape), dtype=np.float32) - 1
        grid = plots.to_image_grid(first, nrow=ncol)
        kw = {"cmap": "gray"} if grid.ndim == 2 else {}
        self._im = ax_img.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest", **kw)
        ax_img.set_axis_off()
        self._title = ax_img.set_title("", fontsize=10)
        self._ax_t = ax_t
        self._points = ax_t.scatter([], [], s=28, zorder=3)
        (self._ring,) = ax_t.plot([], [], "o", ms=12, mfc="none", mec="k", mew=1.5, zorder=4)
        ax_t.set_xlim(0.7 * min(self.steps_options), 1.4 * self.T)
        ax_t.set_ylim(1e-3, 1.0)
        ax_t.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="seconds")
        ax_t.grid(alpha=0.3, which="both")
        ax_t.set_title("every run so far", fontsize=10)
        fig.tight_layout()

    def update(self) -> None:
        """Show the current choice (sampling it first if new) and redraw the PNG."""
        name, s = self.key()
        self.slider.disabled = name == "ddpm"
        res = self.run(name, s)
        self._im.set_data(plots.to_image_grid(res["x"], nrow=_grid_shape(self.n, self.nrow)[0]))
        self._title.set_text(f"{self.CHOICES[name][0]}, {s} steps: {res['seconds']:.2f} s")
        keys = list(self.cache)
        nfe = np.array([self.cache[k]["nfe"] for k in keys], dtype=float)
        sec = np.array([max(self.cache[k]["seconds"], 1e-4) for k in keys])
        self._points.set_offsets(np.column_stack([nfe, sec]))
        self._points.set_color([self.COLORS[k[0]] for k in keys])
        self._ring.set_data([s], [max(res["seconds"], 1e-4)])
        self._ax_t.set_xlim(0.7 * min(nfe.min(), min(self.steps_options)), 1.4 * max(nfe.max(), self.T))
        self._ax_t.set_ylim(0.5 * sec.min(), 2.0 * sec.max())
        self.image.value = plots.fig_to_png(self.fig)
        self.renders += 1
        acc = self.accuracy(name, s)
        acc_text = "" if acc is None else f" · classified as their label: {100 * acc:.0f}%"
        per_nfe = res["seconds"] / s
        ddpm_note = " (ancestral DDPM always takes all T steps)" if name == "ddpm" else ""
        self.info.value = (f"<code>{self.CHOICES[name][0]} · {s} network evaluations{ddpm_note} · "
                           f"{res['seconds']:.2f} s for {self.n} samples ({1000 * per_nfe:.1f} ms per evaluation)"
                           f"{acc_text} · same x<sub>T</sub> for every sampler</code>")


__all__ += ["SamplerExplorer"]
