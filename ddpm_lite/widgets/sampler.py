"""`SamplerExplorer` (notebook 07: fast sampling): pick a sampler and a number of steps, see the samples and the
seconds they took."""

from __future__ import annotations

import time
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch

from .. import plots
from ..device import model_device
from ..diffusion import GaussianDiffusion
from ..metrics import resolve_classifier, sample_accuracy
from ..models import sample_shape
from ..samplers import sample
from ._base import Explorer, grid_shape, show_grid


class SamplerExplorer(Explorer):
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
    # key: (menu label, `samplers.sample` arguments); labels and colours from `plots.SAMPLER_STYLES`
    CHOICES = {key: (plots.SAMPLER_STYLES[key]["label"], kwargs) for key, kwargs in {
        "ddpm": dict(sampler="ddpm"),
        "ddim": dict(sampler="ddim", eta=0.0),
        "ddim-eta1": dict(sampler="ddim", eta=1.0),
        "dpmpp2m": dict(sampler="dpmpp2m"),
    }.items()}
    COLORS = {key: plots.SAMPLER_STYLES[key]["color"] for key in CHOICES}

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
            image_shape = sample_shape(model)
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
        self.device = model_device(model)
        self.x_T = torch.randn((self.n, *self.image_shape), generator=torch.Generator().manual_seed(seed))
        self.cache: dict = {}
        self.sample_calls = 0
        # "auto" needs labels to score the samples against: without them (image_shape=None) it gives None
        self.classifier = None if classifier is None else resolve_classifier(
            classifier, image_shape=self.image_shape if self.labels is not None else None)

        # -- controls -------------------------------------------------------------------------------------
        self.dropdown = self._styled(widgets.Dropdown(options=[(self.CHOICES[c][0], c) for c in choices],
                                                      value=sampler, description="sampler",
                                                      layout=widgets.Layout(width="260px")), "sampler")
        self.slider = self._styled(widgets.SelectionSlider(options=[(str(s), s) for s in steps], value=int(step),
                                                           description="steps", continuous_update=False,
                                                           layout=widgets.Layout(width="340px")), "steps")

        for pair in precompute:
            self.run(*pair)
        self._build_figure()
        self._finish([self.dropdown, self.slider], animated=[self._im, self._title, self._points, self._ring],
                     observe=[self.dropdown, self.slider])

    # -- sampling (timed, cached) -------------------------------------------------------------------------

    def key(self, sampler: str | None = None, steps: int | None = None) -> tuple[str, int]:
        """The cache key of a choice: DDPM always runs all T steps."""
        sampler = self.dropdown.value if sampler is None else sampler
        if sampler not in self.CHOICES:
            raise ValueError(f"sampler must be one of {list(self.CHOICES)}, got {sampler!r}")
        steps = int(self.slider.value if steps is None else steps)
        return sampler, (self.T if sampler == "ddpm" else steps)

    def run(self, sampler: str | None = None, steps: int | None = None) -> dict:
        """Samples of (sampler, steps) from the fixed x_T: {"x" [n, C, H, W], "seconds", "nfe"} (cached)."""
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
        return sample_accuracy(self.run(sampler, steps)["x"], self.labels, self.classifier)

    # -- drawing ------------------------------------------------------------------------------------------

    def _build_figure(self) -> None:
        ncol, nrows = grid_shape(self.n, self.nrow)
        panel_h = 2.6
        grid_w = max(1.6, panel_h * ncol / nrows)
        fig, (ax_img, ax_t) = plots.new_figure(figsize=(grid_w + 3.8, panel_h + 0.5), ncols=2,
                                               gridspec_kw={"width_ratios": [grid_w, 3.4]})
        self.fig = fig
        first = np.zeros((self.n, *self.image_shape), dtype=np.float32) - 1
        self._im = show_grid(ax_img, plots.to_image_grid(first, nrow=ncol))
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
        self._im.set_data(plots.to_image_grid(res["x"], nrow=grid_shape(self.n, self.nrow)[0]))
        self._title.set_text(f"{self.CHOICES[name][0]}, {s} steps: {res['seconds']:.2f} s")
        keys = list(self.cache)
        nfe = np.array([self.cache[k]["nfe"] for k in keys], dtype=float)
        sec = np.array([max(self.cache[k]["seconds"], 1e-4) for k in keys])
        self._points.set_offsets(np.column_stack([nfe, sec]))
        self._points.set_color([self.COLORS[k[0]] for k in keys])
        self._ring.set_data([s], [max(res["seconds"], 1e-4)])
        limits = ((0.7 * min(nfe.min(), min(self.steps_options)), 1.4 * max(nfe.max(), self.T)),
                  (0.5 * sec.min(), 2.0 * sec.max()))
        if limits != (self._ax_t.get_xlim(), self._ax_t.get_ylim()):  # a new run moved the axes: redraw them
            self._ax_t.set_xlim(*limits[0])
            self._ax_t.set_ylim(*limits[1])
            self._renderer.refresh_background()
        acc = self.accuracy(name, s)
        acc_text = "" if acc is None else f" · classified as their label: {100 * acc:.0f}%"
        per_nfe = res["seconds"] / s
        ddpm_note = " (ancestral DDPM always takes all T steps)" if name == "ddpm" else ""
        self._show(f"{self.CHOICES[name][0]} · {s} network evaluations{ddpm_note} · "
                   f"{res['seconds']:.2f} s for {self.n} samples ({1000 * per_nfe:.1f} ms per evaluation)"
                   f"{acc_text} · same x<sub>T</sub> for every sampler")
