"""`GuidanceExplorer` (notebook 05: class conditioning, notebook 08: guidance, thresholding): a slider over the
classifier-free guidance weight w and a grid of class-conditional samples."""

from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch

from .. import plots
from ..device import model_device
from ..diffusion import THRESHOLDS
from ..metrics import resolve_classifier, sample_accuracy, saturated
from ..models import sample_shape
from ..samplers import sample
from ._base import Explorer, show_grid


class GuidanceExplorer(Explorer):
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
            image_shape = sample_shape(model)
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
        self.device = model_device(model)
        noise = torch.randn((self.n_per_class, *self.image_shape), generator=torch.Generator().manual_seed(seed))
        # sample k is class k // n_per_class, seed k % n_per_class: the same x_T for seed j in every class
        self.x_T = noise.repeat(len(classes), 1, 1, 1)
        self.labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(self.n_per_class)
        self.cache: dict = {}
        self.sample_calls = 0
        self.classifier = None if classifier is None else resolve_classifier(classifier, image_shape=self.image_shape)

        # -- controls -------------------------------------------------------------------------------------
        self.slider = self._styled(widgets.SelectionSlider(options=[(f"{v:g}", v) for v in weights], value=w0,
                                                           description="w", continuous_update=True,
                                                           layout=widgets.Layout(width="360px")), "slider")
        self.threshold = self._styled(widgets.ToggleButtons(options=[(str(th), th) for th in thresholds],
                                                            value=thresholds[0], description="x̂₀ clip",
                                                            style={"button_width": "80px"}), "threshold")
        if len(thresholds) == 1:
            self.threshold.layout.display = "none"

        if precompute:
            for th in thresholds:
                for v in weights:
                    self.samples(v, th)
        self._build_figure()
        self._finish([self.slider, self.threshold], animated=[self._im, self._title, self._stairs, self._hist_title],
                     observe=[self.slider, self.threshold])

    # -- sampling (cached) --------------------------------------------------------------------------------

    def samples(self, w: float | None = None, threshold="__current__") -> torch.Tensor:
        """The grid's samples [len(classes) · n_per_class, C, H, W] at guidance weight w (sampled once, cached)."""
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
        self._im = show_grid(ax_img, grid)
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
        at_one = float(saturated(x).double().mean())
        self._hist_title.set_text(f"{100 * at_one:.0f}% of pixels at ±1")
        acc = self.accuracy(w, th)
        acc_text = "" if acc is None else f" · classified as their row's digit: {100 * acc:.0f}%"
        self._show(f"w = {w:g} (s = {1 + w:g}) · x̂<sub>0</sub> threshold: {th} · "
                   f"{len(x)} samples ({self.n_per_class} fixed seeds per class, {self.n_show} shown) · "
                   f"saturated pixels (|x| = 1): {100 * at_one:.1f}%{acc_text}")
