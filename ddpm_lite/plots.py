"""Matplotlib figures used by the course notebooks and widgets.

Conventions (see docs/COURSE_CONVENTIONS.md):

* images come in as ``B×C×H×W`` tensors or arrays in [−1, 1] (the package's data range) and are shown in
  [0, 1]; grey-scale when C = 1, RGB when C = 3;
* every function that draws takes an optional ``ax`` and returns what it drew on (an ``Axes`` or a
  ``Figure``), so notebook cells stay one line long and widgets can keep the artists and update them in
  place;
* ``setup()`` sets a modest dpi (72) so that executed notebooks stay small.

"""

from __future__ import annotations

import io
import math
from typing import Iterable, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "setup",
    "to_numpy",
    "to_image_grid",
    "show_images",
    "plot_schedules",
    "schedule_curves",
    "smooth",
    "plot_loss",
    "plot_histogram_vs_normal",
    "normal_pdf",
    "plot_2d",
    "plot_trajectories",
    "fig_to_png",
    "new_figure",
    "FrameRenderer",
]

DPI = 72

# Colours used consistently across the course: one per noise schedule.
SCHEDULE_COLORS = {"linear": "#1f77b4", "cosine": "#d62728", "sigmoid": "#2ca02c"}


# ==============================================================================================================
# setup and conversions
# ==============================================================================================================


def setup(dpi: int = DPI, style: str = "clean") -> None:
    """Course-wide matplotlib defaults: low dpi (small notebooks), no top/right spines, light grid, nearest-
    neighbour image interpolation (8×8 digits must look like pixels, not blurs), grey colour map.

    Call once at the top of a notebook: ``from ddpm_lite import plots; plots.setup()``.
    """
    if style not in ("clean", "default"):
        raise ValueError(f"style must be 'clean' or 'default', got {style!r}")
    if style == "default":
        plt.rcdefaults()
    matplotlib.rcParams.update(
        {
            "figure.dpi": dpi,
            "savefig.dpi": dpi,
            "figure.figsize": (6.0, 4.0),
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "legend.frameon": False,
            "image.interpolation": "nearest",
            "image.cmap": "gray",
        }
    )
    if style == "clean":
        matplotlib.rcParams.update(
            {
                "axes.spines.top": False,
                "axes.spines.right": False,
                "axes.grid": True,
                "grid.alpha": 0.3,
                "grid.linewidth": 0.6,
                "axes.prop_cycle": matplotlib.cycler(
                    color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
                ),
            }
        )


def to_numpy(x) -> np.ndarray:
    """A torch tensor (any device, with or without grad), array or nested list as a float64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def to_image_grid(images, nrow: int | None = None, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch of images into one array ready for ``imshow``.

    Args:
        images: ``B×C×H×W`` (or one ``C×H×W`` image) in [−1, 1], C = 1 or 3; tensor or array.
        nrow: images per row (torchvision's convention); default ⌈√B⌉.
        padding: pixels between images (and around the border).
        pad_value: colour of the padding, in [0, 1].

    Returns:
        ``H'×W'`` (grey, C = 1) or ``H'×W'×3`` (RGB, C = 3) float array in [0, 1]: values are mapped by
        (x + 1)/2 and clipped, so noisy images outside [−1, 1] saturate instead of wrapping.
    """
    x = to_numpy(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"images must be B×C×H×W (or C×H×W), got shape {x.shape}")
    b, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got C = {c} (shape {x.shape})")
    if b == 0:
        raise ValueError("images is an empty batch (B = 0)")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    nrow = int(math.ceil(math.sqrt(b))) if nrow is None else int(nrow)
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(nrow, b)  # images per row
    nrows = int(math.ceil(b / ncol))
    x = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    grid = np.full(
        (c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value), dtype=np.float64
    )
    for i in range(b):
        r, k = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def new_figure(figsize=(6.0, 4.0), dpi: int | None = None, **subplots_kw):
    """A figure that is *not* registered with pyplot, and its axes: ``fig, axes = new_figure(...)``.

    Widgets use this: the figure is rendered to PNG by `fig_to_png` and never shown by the inline backend,
    and it is garbage-collected with the widget (``plt.get_fignums()`` does not grow).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi or matplotlib.rcParams["figure.dpi"])
    axes = fig.subplots(**subplots_kw)
    return fig, axes


def fig_to_png(fig, dpi: float | None = None) -> bytes:
    """Render a matplotlib figure to PNG bytes (at the figure's own dpi unless given).

    The canvas is not resized (no ``bbox_inches="tight"``), so successive frames of a widget have identical
    pixel sizes.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
    return buf.getvalue()


def rgba_to_png(rgba: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an ``H×W×4`` uint8 RGBA buffer as an RGB PNG (fast, low compression: widgets re-encode often)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class FrameRenderer:
    """Fast repeated rendering of one figure in which only a few artists change ("blitting").

    The figure (axes, ticks, labels, legends: everything static) is drawn once with the ``animated``
    artists left out and kept as a background; `render` then restores that background, draws only the
    animated artists and encodes the pixels as PNG. Redrawing tick labels is what makes a full
    ``savefig`` slow, so this is several times faster, which keeps sliders smooth on a CPU.

    >>> fig, ax = new_figure()                                            # doctest: +SKIP
    >>> (line,) = ax.plot([0, 1], [0, 1]); r = FrameRenderer(fig, [line])  # doctest: +SKIP
    >>> line.set_ydata([1, 0]); png = r.render()                           # doctest: +SKIP

    Changing anything that is not in ``animated`` (say an axis limit) needs `refresh_background`.
    """

    def __init__(self, fig, animated: Iterable):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.fig = fig
        self.canvas = FigureCanvasAgg(fig)
        self.animated = list(animated)
        for artist in self.animated:
            artist.set_animated(True)
        self._background = None

    def refresh_background(self) -> None:
        """Redraw the static part of the figure (call after changing a non-animated artist)."""
        self.canvas.draw()
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)

    def render_rgba(self) -> np.ndarray:
        """The current frame as an ``H×W×4`` uint8 array (a copy)."""
        if self._background is None:
            self.refresh_background()
        self.canvas.restore_region(self._background)
        for artist in self.animated:
            if artist.get_visible():
                self.fig.draw_artist(artist)
        return np.array(self.canvas.buffer_rgba(), copy=True)

    def render(self) -> bytes:
        """The current frame as PNG bytes."""
        return rgba_to_png(self.render_rgba())


# ==============================================================================================================
# images
# ==============================================================================================================


def show_images(images, nrow: int | None = None, title: str | None = None, ax=None,
                labels: Sequence | None = None, padding: int = 1, figsize_per_image: float = 0.6):
    """Show a batch of images (``B×C×H×W`` in [−1, 1]) as one grid, axes off. Returns the ``Axes``.

    ``labels``: one string (or number) per image, written at each image's top-left corner. The grid image
    artist is ``ax.images[-1]`` (widgets update it with ``set_data``). Without ``ax`` a new pyplot figure is
    made whose size grows with the grid.
    """
    grid = to_image_grid(images, nrow=nrow, padding=padding)
    x = to_numpy(images)
    if x.ndim == 3:
        x = x[None]
    b, _, h, w = x.shape
    ncol = min(int(math.ceil(math.sqrt(b))) if nrow is None else int(nrow), b)
    if ax is None:
        nrows = int(math.ceil(b / ncol))
        scale = figsize_per_image  # inches per image, whatever H and W (8×8 digits would be tiny otherwise)
        _, ax = plt.subplots(figsize=(max(2.0, ncol * scale), max(2.0, nrows * scale + (0.3 if title else 0))))
    kwargs = {"cmap": "gray"} if grid.ndim == 2 else {}
    ax.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest", **kwargs)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if labels is not None:
        labels = list(labels)
        if len(labels) != b:
            raise ValueError(f"labels must have one entry per image: expected {b}, got {len(labels)}")
        for i, lab in enumerate(labels):
            r, k = divmod(i, ncol)
            ax.text(padding + k * (w + padding) + 0.1, padding + r * (h + padding) + 0.1, str(lab),
                    color="yellow", fontsize=8, va="top", ha="left")
    return ax


# ==============================================================================================================
# noise schedules
# ==============================================================================================================


def _alphas_cumprod(value) -> np.ndarray:
    """ᾱ_t from a NoiseSchedule, a GaussianDiffusion, a schedule name, or a 1-D tensor/array of ᾱ."""
    if isinstance(value, str):
        from .schedules import NoiseSchedule

        value = NoiseSchedule(value, 1000)
    if hasattr(value, "schedule"):  # GaussianDiffusion
        value = value.schedule
    if hasattr(value, "alphas_cumprod"):
        value = value.alphas_cumprod
    ab = to_numpy(value)
    if ab.ndim != 1:
        raise ValueError(f"alphas_cumprod must be 1-D [T], got shape {ab.shape}")
    return ab


def schedule_curves(schedule) -> dict:
    """t, ᾱ_t and log SNR(t) = log(ᾱ_t/(1−ᾱ_t)) (Kingma et al. 2021's λ) of a schedule, as numpy arrays."""
    ab = _alphas_cumprod(schedule)
    with np.errstate(divide="ignore"):
        log_snr = np.log(ab) - np.log1p(-ab)
    return {"t": np.arange(len(ab)), "alpha_bar": ab, "log_snr": log_snr}


def plot_schedules(schedules: Mapping, axes=None, t_marker: int | None = None):
    """ᾱ_t (left) and log SNR(t) (right) against t for several schedules. Returns the ``Figure``.

    Args:
        schedules: ``{name: schedule}``, each a `NoiseSchedule`, a `GaussianDiffusion`, a schedule name or a
            1-D ᾱ array; or a plain sequence of names.
        axes: two axes to draw on (default: a new 1×2 figure).
        t_marker: draw a vertical line at this timestep.

    ᾱ_t is the fraction of the signal's variance left in x_t (Ho et al. 2020, eq. 4); SNR(t) = ᾱ_t/(1−ᾱ_t)
    (Kingma et al. 2021) and log SNR = 0 is where signal and noise have equal variance.
    """
    if not isinstance(schedules, Mapping):
        schedules = {name: name for name in schedules}
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2))
    else:
        fig = axes[0].figure
    for name, sched in schedules.items():
        c = schedule_curves(sched)
        color = SCHEDULE_COLORS.get(str(name))
        axes[0].plot(c["t"], c["alpha_bar"], label=str(name), color=color)
        axes[1].plot(c["t"], c["log_snr"], label=str(name), color=color)
    axes[0].set(xlabel="timestep t", ylabel=r"$\bar\alpha_t$", title=r"signal left: $\bar\alpha_t$", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="timestep t", ylabel=r"$\log\,\mathrm{SNR}(t)$", title=r"$\log\,\bar\alpha_t/(1-\bar\alpha_t)$")
    axes[1].axhline(0.0, color="k", lw=0.8, ls=":")
    if t_marker is not None:
        for ax in axes:
            ax.axvline(t_marker, color="k", lw=0.8, ls="--")
    axes[0].legend()
    fig.tight_layout()
    return fig


# ==============================================================================================================
# training curves
# ==============================================================================================================


def smooth(values, beta: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (as in Adam / TensorBoard's smoothing): the k-th output is
    Σ_j β^{k−j}(1−β) v_j / (1 − β^{k+1}), so the first values are not pulled towards 0."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    avg = 0.0
    for k, val in enumerate(v):
        avg = beta * avg + (1 - beta) * val
        out[k] = avg / (1 - beta ** (k + 1))
    return out


def plot_loss(history, ax=None, key: str = "loss", beta: float = 0.9, logy: bool = True, label: str | None = None):
    """The training loss against the step: raw values faint, a bias-corrected EMA (`smooth`) on top.

    ``history`` is a list of dicts with "step" and ``key`` (what `Trainer` records); dicts without ``key``
    are skipped. A plain list of numbers is read as losses at steps 0, 1, 2, … Returns the ``Axes``.
    """
    history = list(history)
    if history and isinstance(history[0], Mapping):
        rows = [h for h in history if key in h and h[key] is not None]
        if not rows:
            raise ValueError(f"history has no entries with {key!r}: keys seen {sorted(set().union(*history))}")
        steps = np.array([r.get("step", i) for i, r in enumerate(rows)], dtype=np.float64)
        values = np.array([float(r[key]) for r in rows])
    else:
        values = np.asarray(history, dtype=np.float64)
        steps = np.arange(len(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("history is empty")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.2))
    (line,) = ax.plot(steps, values, alpha=0.25, lw=0.8)
    ax.plot(steps, smooth(values, beta), color=line.get_color(), lw=1.6, label=label or f"{key} (EMA {beta})")
    ax.set(xlabel="step", ylabel=key)
    if logy and (values > 0).all():
        ax.set_yscale("log")
    ax.legend()
    return ax


# ==============================================================================================================
# distributions
# ==============================================================================================================


def normal_pdf(x) -> np.ndarray:
    """Density of N(0, 1)."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def plot_histogram_vs_normal(x, ax=None, bins: int = 60, range: tuple = (-4.0, 4.0), title: str | None = None):
    """Histogram (density) of all values of ``x`` against the N(0, 1) density. Returns the ``Axes``.

    The histogram is one ``StepPatch`` (``ax.patches[0]``; update it with ``set_data(new_density)``);
    values outside ``range`` are not shown. The legend reports the empirical mean and standard deviation.
    """
    v = to_numpy(x).ravel()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.0, 3.0))
    density, edges = np.histogram(v, bins=bins, range=range, density=False)
    density = density / max(v.size, 1) / (edges[1] - edges[0])
    ax.stairs(density, edges, fill=True, alpha=0.5, label=f"values: mean {v.mean():+.2f}, std {v.std():.2f}")
    grid = np.linspace(range[0], range[1], 200)
    ax.plot(grid, normal_pdf(grid), color="k", lw=1.2, label=r"$\mathcal{N}(0, 1)$")
    ax.set(xlim=range, xlabel="value", ylabel="density")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right")
    return ax


def plot_2d(points, ax=None, c=None, s: float = 3.0, alpha: float = 0.6, lim: float | None = 2.0,
            title: str | None = None, label: str | None = None, **scatter_kw):
    """Scatter a 2D point cloud ``[N, 2]`` with equal aspect. ``c``: colours or labels per point; ``lim``: the
    axes show [−lim, lim]² (None: automatic). Returns the ``Axes``; the points are ``ax.collections[-1]``
    (update them with ``set_offsets``)."""
    p = to_numpy(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must be [N, 2], got shape {p.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.6))
    if c is not None and hasattr(c, "detach"):
        c = to_numpy(c)
    if c is not None and "cmap" not in scatter_kw and np.ndim(c) == 1 and not isinstance(c[0], str):
        scatter_kw["cmap"] = "coolwarm"
    ax.scatter(p[:, 0], p[:, 1], c=c, s=s, alpha=alpha, linewidths=0, label=label, **scatter_kw)
    _square_axes(ax, lim, title)
    return ax


def _square_axes(ax, lim: float | None, title: str | None) -> None:
    """Equal aspect, the window [−lim, lim]² (when given) and a title: the frame of every 2D point plot."""
    ax.set_aspect("equal")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if title:
        ax.set_title(title)


def plot_trajectories(trajectory, ax=None, n: int = 64, lim: float | None = 2.5, color="0.5", title: str | None = None,
                      lw: float = 0.5, alpha: float = 0.5, every: int = 1):
    """Paths of 2D particles through sampling: ``trajectory`` is ``[S, N, 2]`` (S states, first = x_T).

    Draws the first ``n`` paths as thin lines, the start points (grey) and the end points (coloured).
    ``color="cycle"`` gives each path its own colour (readable when paths cross); ``every`` > 1 draws only every
    ``every``-th state (always the first and the last), which untangles long jittery (DDPM) paths.
    Returns the ``Axes``.
    """
    tr = to_numpy(trajectory)
    if tr.ndim != 3 or tr.shape[2] != 2:
        raise ValueError(f"trajectory must be [S, N, 2] (steps, points, xy), got shape {tr.shape}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.6))
    sub = tr[:, :n]
    keep = sorted(set(range(0, len(sub), every)) | {len(sub) - 1})
    lines = sub[keep]
    if color == "cycle":
        for i in range(lines.shape[1]):
            ax.plot(lines[:, i, 0], lines[:, i, 1], color=f"C{i % 10}", lw=lw, alpha=alpha)
    else:
        ax.plot(lines[:, :, 0], lines[:, :, 1], color=color, lw=lw, alpha=alpha)
    ax.scatter(sub[0, :, 0], sub[0, :, 1], s=6, color="0.6", label=r"start $x_T$", zorder=3)
    ax.scatter(sub[-1, :, 0], sub[-1, :, 1], s=8, color="#d62728", label=r"end $x_0$", zorder=4)
    _square_axes(ax, lim, title)
    ax.legend(loc="lower right")
    return ax


# --- notebooks 05 and 08 ---
# Class-conditional sample grids, the class-embedding bias, the guidance fidelity/diversity curve and x̂_0
# value histograms (notebook 05: class conditioning, notebook 08: guidance)


def show_class_grid(images, n_rows: int, ax=None, row_labels: Sequence | None = None, title: str | None = None,
                    size_per_image: float = 0.42):
    """A grid with one row per class: ``images`` (``B×C×H×W`` in [−1, 1]) are ordered class by class, ``B / n_rows``
    per class. Rows are labelled (default 0, 1, …) at the left. Returns the ``Axes``; the grid is ``ax.images[-1]``.
    """
    x = to_numpy(images)
    if x.ndim != 4 or x.shape[0] % n_rows:
        raise ValueError(f"images must be B×C×H×W with B a multiple of n_rows = {n_rows}, got shape {x.shape}")
    per_row = x.shape[0] // n_rows
    h = x.shape[2]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(1.6, per_row * size_per_image + 0.4),
                                      max(1.6, n_rows * size_per_image + (0.35 if title else 0.1))))
    grid = to_image_grid(x, nrow=per_row)
    kw = {"cmap": "gray"} if grid.ndim == 2 else {}
    ax.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest", **kw)
    labels = [str(r) for r in range(n_rows)] if row_labels is None else [str(r) for r in row_labels]
    if len(labels) != n_rows:
        raise ValueError(f"row_labels must have {n_rows} entries, got {len(labels)}")
    ax.set_xticks([])
    ax.set_yticks([1 + r * (h + 1) + (h - 1) / 2 for r in range(n_rows)], labels, fontsize=8)
    ax.tick_params(length=0)
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_class_bias(bias, ax=None, row_labels: Sequence | None = None, title: str | None = None, max_channels: int = 64):
    """Heat map of a per-class bias: ``bias`` is ``[num_classes (+1 null), channels]``, one row per class.

    Used for the per-channel bias each class adds inside a U-Net block (the source material's ``class_bias``).
    Shows at most ``max_channels`` channels. Returns the ``Axes``; the colour bar is symmetric around 0.
    """
    b = to_numpy(bias)
    if b.ndim != 2:
        raise ValueError(f"bias must be [classes, channels], got shape {b.shape}")
    b = b[:, :max_channels]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(9.0, 1.2 + 0.11 * b.shape[1]), 0.5 + 0.24 * b.shape[0]))
    vmax = float(np.abs(b).max()) or 1.0
    im = ax.imshow(b, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    labels = [str(r) for r in range(b.shape[0])] if row_labels is None else [str(r) for r in row_labels]
    ax.set_yticks(range(b.shape[0]), labels, fontsize=8)
    ax.set(xlabel="channel", ylabel="class")
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    if title:
        ax.set_title(title)
    return ax


def plot_guidance_tradeoff(results: Sequence[Mapping], axes=None, diversity_key: str | None = "diversity"):
    """The fidelity/diversity trade-off of classifier-free guidance, measured per guidance weight w.

    ``results``: one dict per w with keys ``w``, ``accuracy``, ``precision``, ``recall``, ``fd`` and optionally
    ``fd_real_floor`` and ``diversity_key`` (e.g. mean within-class feature distance relative to real data).
    Three panels: fidelity (accuracy, precision), diversity (recall, diversity) and the Fréchet distance.
    Returns the ``Figure``.
    """
    rows = sorted(results, key=lambda r: r["w"])
    if not rows:
        raise ValueError("results is empty")
    w = np.array([r["w"] for r in rows], dtype=float)
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.2))
    else:
        fig = axes[0].figure

    def col(key):
        return np.array([float(r[key]) for r in rows])

    axes[0].plot(w, col("accuracy"), "o-", label="class accuracy")
    axes[0].plot(w, col("precision"), "s-", label="precision")
    axes[0].set(xlabel="guidance weight w", ylabel="fraction", title="fidelity", ylim=(-0.02, 1.02))
    axes[1].plot(w, col("recall"), "o-", color="#2ca02c", label="recall")
    if diversity_key and all(diversity_key in r for r in rows):
        axes[1].plot(w, col(diversity_key), "s-", color="#9467bd", label="diversity (÷ real)")
    axes[1].set(xlabel="guidance weight w", ylabel="fraction / ratio", title="diversity", ylim=(-0.02, None))
    axes[2].plot(w, col("fd"), "o-", color="#ff7f0e", label="FD (samples vs real)")
    if all("fd_real_floor" in r for r in rows):
        axes[2].axhline(float(np.mean(col("fd_real_floor"))), color="k", ls=":", lw=1, label="real-data floor")
    axes[2].set(xlabel="guidance weight w", ylabel="Fréchet distance", title="FD (classifier features)",
                ylim=(0, None))
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_value_histograms(values: Mapping, ax=None, bins: int = 80, range: tuple = (-3.0, 3.0),
                          title: str | None = None, logy: bool = True):
    """Overlaid histograms (fraction of values per bin) of several tensors, e.g. x̂_0 predictions, with the
    data range [−1, 1] marked. The legend gives each set's fraction of values outside [−1, 1] and at ±1
    (`metrics.saturated`: |x| ≥ 0.999). Values outside ``range`` are counted in the end bins. Returns the
    ``Axes``."""
    from .metrics import saturated

    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.2))
    edges = np.linspace(range[0], range[1], bins + 1)
    for name, v in values.items():
        v = to_numpy(v).ravel()
        counts, _ = np.histogram(np.clip(v, range[0], range[1]), bins=edges)
        outside = float(np.mean(np.abs(v) > 1.0))
        at_one = float(saturated(v).double().mean())
        ax.stairs(counts / max(v.size, 1), edges, lw=1.5,
                  label=f"{name}: {100 * outside:.0f}% outside, {100 * at_one:.0f}% at ±1")
    for edge in (-1.0, 1.0):
        ax.axvline(edge, color="k", ls="--", lw=0.8)
    ax.set(xlim=range, xlabel="value", ylabel="fraction of values")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center")
    return ax


__all__ += ["show_class_grid", "plot_class_bias", "plot_guidance_tradeoff", "plot_value_histograms"]


# --- notebook 07 ---
# Timestep spacings of few-step samplers and the quality / seconds vs network-evaluations comparison (notebook 07:
# fast sampling)


def plot_timestep_spacings(num_timesteps: int, steps: int, spacings: Sequence[str] = ("linspace", "leading",
                           "trailing", "logsnr"), alphas_cumprod=None, ax=None, title: str | None = None):
    """Which timestep indices each spacing of `samplers.timestep_sequence` visits, one row per spacing.

    Each row marks the ``steps`` visited indices (0-based, 0 … T−1) and, in the legend-free label at the left,
    the first (noisiest) index. ``alphas_cumprod`` is needed for "logsnr". Returns the ``Axes``.
    """
    from .samplers import timestep_sequence

    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(8.0, 0.45 * len(spacings) + 0.9))
    labels = []
    for row, name in enumerate(spacings):
        seq = timestep_sequence(num_timesteps, steps, name, alphas_cumprod)
        ax.scatter(seq, np.full(len(seq), row), s=22, marker="|" if steps > 60 else "o", zorder=3)
        labels.append(f"{name} (first t = {seq[0]})")
    ax.axvline(num_timesteps - 1, color="k", ls=":", lw=0.8)
    ax.set_yticks(range(len(spacings)), labels)
    ax.set_ylim(len(spacings) - 0.5, -0.5)
    ax.set(xlim=(-0.02 * num_timesteps, 1.02 * num_timesteps), xlabel=f"timestep index t (T = {num_timesteps})")
    ax.set_title(title or f"the {steps} timesteps each spacing visits")
    if own:
        ax.figure.tight_layout()
    return ax


def plot_sampler_benchmark(rows: Sequence[Mapping], axes=None, floor: float | None = None,
                           floor_label: str = "real-data floor"):
    """Quality and cost of samplers against the number of network evaluations (NFE), measured per run.

    ``rows``: one dict per run with keys ``sampler`` (the curve it belongs to), ``nfe``, ``seconds`` and
    optionally ``accuracy`` and ``fd`` (missing or None: not measured, e.g. a run timed on fewer samples).
    Three panels, NFE on a log axis: class accuracy, Fréchet distance (``floor``: the FD of real data at the
    same sample size as a dotted line, labelled ``floor_label``) and seconds (log–log). Returns the ``Figure``.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty")
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.3))
    else:
        fig = axes[0].figure
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    for name in names:
        sub = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        color = SAMPLER_COLORS.get(name)
        for ax, key, scale in ((axes[0], "accuracy", 100.0), (axes[1], "fd", 1.0), (axes[2], "seconds", 1.0)):
            pts = [(r["nfe"], scale * float(r[key])) for r in sub if r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, "o-", color=color, label=name, ms=5)
    axes[0].set(ylabel="class accuracy (%)", title="fidelity: classified as the label")
    axes[1].set(ylabel="Fréchet distance", title="FD to real digits (classifier features)")
    if floor is not None:
        axes[1].axhline(floor, color="k", ls=":", lw=1, label=floor_label)
    axes[2].set(ylabel="seconds", title="wall-clock time", yscale="log")
    nfe = [r["nfe"] for r in rows]
    ticks = [v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if min(nfe) <= v <= max(nfe)]
    for ax in axes:
        ax.set(xscale="log", xlabel="network evaluations (NFE)", xlim=(0.8 * min(nfe), 1.25 * max(nfe)))
        ax.set_xticks(ticks, [str(v) for v in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    axes[1].set_ylim(0, None)
    fig.tight_layout()
    return fig


# The samplers the course compares, one entry each (keys as in `widgets.SamplerExplorer`): the short name of plot
# legends and benchmark rows (``plot_sampler_benchmark``'s ``sampler``), the label of the explorer's menu, and
# one colour for both.
SAMPLER_STYLES = {
    "ddpm": dict(name="DDPM", label="DDPM (ancestral)", color="#d62728"),
    "ddim": dict(name="DDIM", label="DDIM, η = 0", color="#1f77b4"),
    "ddim-eta1": dict(name="DDIM η=1", label="DDIM, η = 1", color="#9467bd"),
    "dpmpp2m": dict(name="DPM-Solver++(2M)", label="DPM-Solver++(2M)", color="#2ca02c"),
}
SAMPLER_COLORS = {style["name"]: style["color"] for style in SAMPLER_STYLES.values()}  # by short name

__all__ += ["plot_timestep_spacings", "plot_sampler_benchmark", "SAMPLER_STYLES", "SAMPLER_COLORS"]


# ==============================================================================================================
# latent diffusion (notebook 09)
# ==============================================================================================================


def plot_latent_channels(latents, images=None, limit: float | None = None, size: float = 1.1):
    """One row per image: the image itself (if ``images`` is given, ``B×C×H×W`` in [−1, 1]), then each of the c
    channels of its latent (``latents``, ``B×c×h×w``) as a small picture in a diverging colour map centred on
    0 (±``limit``, default the largest |value|). Returns the ``Figure`` (with a shared colour bar)."""
    z = to_numpy(latents)
    if z.ndim != 4:
        raise ValueError(f"latents must be B×c×h×w, got shape {z.shape}")
    b, c = z.shape[:2]
    x = None if images is None else to_numpy(images)
    if x is not None and x.shape[0] != b:
        raise ValueError(f"images and latents must have the same batch size, got {x.shape[0]} and {b}")
    lim = float(limit if limit is not None else np.abs(z).max() or 1.0)
    ncols = c + (x is not None)
    fig, axes = plt.subplots(b, ncols, figsize=(size * ncols + 0.8, size * b + 0.4), squeeze=False)
    im = None
    for i in range(b):
        col = 0
        if x is not None:
            img = (x[i].transpose(1, 2, 0) + 1) / 2
            axes[i, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                              interpolation="nearest")
            col = 1
        for j in range(c):
            im = axes[i, col + j].imshow(z[i, j], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if x is not None:
        axes[0, 0].set_title("image", fontsize=9)
    for j in range(c):
        axes[0, ncols - c + j].set_title(f"channel {j}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="latent value")
    return fig


def plot_signal_fraction(alphas_cumprod, stds: Mapping[str, float], ax=None):
    """For data of standard deviation s (one curve per entry of ``stds``: label → s), the fraction of the
    variance of x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε that is signal, s²ᾱ_t / (s²ᾱ_t + 1 − ᾱ_t), against t (log scale
    on the fraction). The noise schedule assumes s ≈ 1; a larger s leaves signal in x_T, a smaller one drowns
    the data early. Returns the ``Axes``."""
    ab = _alphas_cumprod(alphas_cumprod)
    t = np.arange(len(ab))
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.2))
    for label, s in stds.items():
        frac = s ** 2 * ab / (s ** 2 * ab + 1 - ab)
        ax.plot(t, frac, label=f"{label} (std {s:.2g})")
    ax.set(yscale="log", ylim=(1e-5, 1.5), xlim=(0, len(ab) - 1), xlabel="timestep t",
           ylabel="signal share of Var(x_t)")
    ax.legend(fontsize=8)
    return ax


__all__ += ["plot_latent_channels", "plot_signal_fraction"]


# ==============================================================================================================
# --- notebook 10 ---
# CLIP: images with their captions, the image/caption similarity matrix, a measured attribute's histogram with
# its thresholds, and the scores a CLIP gives each candidate caption of an image
# ==============================================================================================================


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width, break_on_hyphens=False, break_long_words=False)) or str(text)


def _grey(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """One C×H×W image in [−1, 1] as an imshow array in [0, 1] and its keyword arguments."""
    img = np.clip((image.transpose(1, 2, 0) + 1) / 2, 0, 1)
    if img.shape[-1] == 1:
        return img[..., 0], {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    return img, {}


def show_captioned_images(images, captions: Sequence[str], ncols: int | None = None, size: float = 1.25,
                          wrap: int = 18, fontsize: float = 7.5, title: str | None = None):
    """Images (``B×C×H×W`` in [−1, 1]) in a grid, each with its caption (or any text) wrapped to ``wrap``
    characters below it. ``ncols`` defaults to all images in one row. Returns the ``Figure``; image i is
    drawn on ``fig.axes[i]`` and its caption is that axes' x label."""
    x = to_numpy(images)
    if x.ndim != 4:
        raise ValueError(f"images must be B×C×H×W, got shape {x.shape}")
    captions = [str(c) for c in captions]
    if len(captions) != x.shape[0]:
        raise ValueError(f"one caption per image: {x.shape[0]} images, {len(captions)} captions")
    ncols = x.shape[0] if ncols is None else int(ncols)
    nrows = int(math.ceil(x.shape[0] / ncols))
    lines = max(c.count("\n") + 1 for c in (_wrap(c, wrap) for c in captions))
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(size * ncols,
                             nrows * (size + 0.16 * lines * fontsize / 7.5 + 0.1) + (0.3 if title else 0.0)))
    for k, ax in enumerate(axes.ravel()):
        if k < x.shape[0]:
            img, kw = _grey(x[k])
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_xlabel(_wrap(captions[k], wrap), fontsize=fontsize)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        else:
            ax.remove()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_similarity_matrix(sim, images=None, captions: Sequence[str] | None = None, ax=None,
                           title: str | None = None, annotate: bool = True, fmt: str = "{:.0f}", wrap: int = 38,
                           vmin: float | None = None, vmax: float | None = None):
    """Heat map of an image/caption matrix ``sim`` [N images, M captions] (cosine similarities or logits),
    drawn with **captions as rows** (their text as the y tick labels, readable horizontally; ``captions=None``
    leaves them off, e.g. for a second panel beside the first) and **images as columns** (thumbnails above
    the matrix when ``images``, ``N×C×H×W`` in [−1, 1], is given). Matching pairs on the diagonal are
    outlined when N = M. The value of each cell is written in it (``annotate``, formatted with ``fmt``).
    Returns the ``Axes``; the heat map is ``ax.images[0]``, holding ``sim.T``."""
    s = to_numpy(sim).astype(float)
    if s.ndim != 2:
        raise ValueError(f"sim must be [images, captions], got shape {s.shape}")
    n, m = s.shape
    if captions is not None and len(captions) != m:
        raise ValueError(f"one caption per column of sim: {m} columns, {len(captions)} captions")
    x = None if images is None else to_numpy(images)
    if x is not None and (x.ndim != 4 or x.shape[0] != n):
        raise ValueError(f"images must be N×C×H×W with N = {n} (the rows of sim), got shape {x.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.42 * n + (2.6 if captions is not None else 0.4), 0.42 * m + 0.9))
    lo = float(s.min()) if vmin is None else vmin
    hi = float(s.max()) if vmax is None else vmax
    heat = ax.imshow(s.T, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest",
                     extent=(-0.5, n - 0.5, m - 0.5, -0.5))
    if annotate:
        mid = (lo + hi) / 2
        for i in range(n):
            for j in range(m):
                text = fmt.format(s[i, j])
                if text.startswith("-") and not text.strip("-0.,"):   # "-0" reads as a negative number
                    text = text[1:]
                ax.text(i, j, text, ha="center", va="center", fontsize=6.5,
                        color="black" if s[i, j] > mid else "white")
    if n == m:
        from matplotlib.patches import Rectangle

        for i in range(n):
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
    top = -0.5
    if x is not None:
        for i in range(n):
            img, kw = _grey(x[i])
            ax.imshow(img, extent=(i - 0.45, i + 0.45, -0.6, -1.5), interpolation="nearest", **kw)
        top = -1.55
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(m - 0.5, top)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("image", fontsize=8)
    if captions is not None:
        ax.set_yticks(range(m), [_wrap(c, wrap) for c in captions], fontsize=7)
    else:
        ax.set_yticks([])
    ax.tick_params(length=0)
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_threshold_histogram(values, thresholds: Mapping[str, float], ax=None, bins: int = 50,
                             xlabel: str | None = None, title: str | None = None):
    """Histogram of a measured quantity (``values``, e.g. the stroke thickness of every training digit) with
    each threshold (label → value) drawn as a labelled vertical line. Returns the ``Axes``."""
    v = to_numpy(values).astype(float).ravel()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 2.4))
    ax.hist(v, bins=bins, color="0.6")
    for k, (label, t) in enumerate(thresholds.items()):
        ax.axvline(float(t), color=f"C{k + 1}", lw=1.5, ls="--", label=f"{label}: {float(t):.2f}")
    ax.legend(fontsize=7)
    ax.set(xlabel=xlabel or "", ylabel="images")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_caption_scores(images, captions: Sequence[str], scores, top: int | None = None, wrap: int = 50,
                        xlabel: str = "probability"):
    """For each image (``B×C×H×W`` in [−1, 1]), its scores (``scores`` [B, M], e.g. a softmax over the M
    candidate ``captions``) as horizontal bars, highest first (the ``top`` best only, if given), beside the
    image. Returns the ``Figure``: image i on ``fig.axes[2 i]``, its bars on ``fig.axes[2 i + 1]``."""
    x = to_numpy(images)
    p = to_numpy(scores).astype(float)
    if x.ndim != 4 or p.ndim != 2 or p.shape[0] != x.shape[0] or p.shape[1] != len(captions):
        raise ValueError(f"expected images B×C×H×W and scores [B, len(captions)], got {x.shape}, {p.shape} and "
                         f"{len(captions)} captions")
    b = x.shape[0]
    k = p.shape[1] if top is None else min(int(top), p.shape[1])
    fig, axes = plt.subplots(b, 2, figsize=(6.0, b * max(1.0, 0.2 * k + 0.3)), squeeze=False,
                             gridspec_kw={"width_ratios": (1, 4.5)})
    for i in range(b):
        img, kw = _grey(x[i])
        axes[i, 0].imshow(img, interpolation="nearest", **kw)
        axes[i, 0].set_axis_off()
        order = np.argsort(-p[i])[:k]
        ax = axes[i, 1]
        ax.barh(range(k), p[i, order], color=["C1"] + ["C0"] * (k - 1))
        ax.set_yticks(range(k), [_wrap(captions[j], wrap) for j in order], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1.0, float(p.max())) if xlabel == "probability" else None)
        ax.tick_params(axis="x", labelsize=7)
        if i == b - 1:
            ax.set_xlabel(xlabel, fontsize=8)
    fig.tight_layout()
    return fig


__all__ += ["show_captioned_images", "plot_similarity_matrix", "plot_threshold_histogram", "plot_caption_scores"]


# ==============================================================================================================
# text-to-image: a prompt's per-token text states, and which word each position of the U-Net looks at
# ==============================================================================================================


def plot_text_states(states, mask, tokens: Sequence[str], ax=None, limit: float | None = None,
                     title: str | None = None):
    """A prompt's per-token text states (``states`` [L, D], e.g. a `TextCondition`'s context for one prompt) as
    a heat map, one row per token (``tokens``, the L token strings, labelling the rows), padding rows
    (``mask`` [L] False) hatched over. Values in a diverging colour map centred on 0 (±``limit``, default the
    largest |value| of the real tokens). Returns the ``Axes``; the heat map is ``ax.images[0]``."""
    s = to_numpy(states)
    m = to_numpy(mask).astype(bool).ravel()
    if s.ndim != 2:
        raise ValueError(f"states must be [L, D] (one prompt), got shape {s.shape}")
    L, D = s.shape
    if m.shape != (L,) or len(tokens) != L:
        raise ValueError(f"mask and tokens must have one entry per row of states ({L}), got {m.shape[0]} and "
                         f"{len(tokens)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 0.16 * L + 0.9))
    lim = float(limit if limit is not None else (np.abs(s[m]).max() if m.any() else np.abs(s).max()) or 1.0)
    ax.imshow(s, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    from matplotlib.patches import Rectangle

    for i in np.nonzero(~m)[0]:
        ax.add_patch(Rectangle((-0.5, i - 0.5), D, 1, facecolor="white", alpha=0.75, hatch="///", edgecolor="0.7",
                               lw=0))
    ax.set_yticks(range(L), [str(t) for t in tokens], fontsize=6)
    ax.set_xlabel(f"state dimension (width {D})", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_token_attention(maps, tokens: Sequence[str], image=None, size: float = 1.05, vmax: float | None = None,
                         title: str | None = None):
    """Where each word is looked at: per-token cross-attention maps (``maps`` [L, h, w], e.g.
    `transformer.CrossAttentionRecord.token_maps(...)[i]` for one prompt, padding already dropped) as a row of
    small heat maps titled with their tokens, after the generated ``image`` (C×H×W in [−1, 1]) if given, with
    the maps on one colour scale (0 … ``vmax``, default the largest weight). Returns the ``Figure``; the maps'
    axes are the last L of ``fig.axes`` (before the colour bar's)."""
    a = to_numpy(maps)
    if a.ndim != 3:
        raise ValueError(f"maps must be [L, h, w] (one prompt's tokens), got shape {a.shape}")
    if len(tokens) != a.shape[0]:
        raise ValueError(f"one token per map: {a.shape[0]} maps, {len(tokens)} tokens")
    n = a.shape[0] + (image is not None)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.9, size + 0.55), squeeze=False)
    axes = axes[0]
    if image is not None:
        img, kw = _grey(to_numpy(image))
        axes[0].imshow(img, interpolation="nearest", **kw)
        axes[0].set_title("image", fontsize=8)
    hi = float(vmax if vmax is not None else a.max() or 1.0)
    heat = None
    for k, (ax, tok) in enumerate(zip(axes[n - a.shape[0]:], tokens)):
        heat = ax.imshow(a[k], cmap="magma", vmin=0.0, vmax=hi, interpolation="nearest")
        ax.set_title(str(tok), fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.colorbar(heat, ax=list(axes), shrink=0.85, pad=0.02, label="attention")
    if title:
        fig.suptitle(title, fontsize=9, y=1.02)
    return fig


__all__ += ["plot_text_states", "plot_token_attention"]
