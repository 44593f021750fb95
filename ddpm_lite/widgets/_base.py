"""What every explorer shares: the `Explorer` base class and a few small helpers.

An explorer *is* an ``ipywidgets.VBox`` with a stable CSS class, laid out as

    [controls row (HBox)]      <CSS_CLASS>-controls, each control with its own class
    [image (PNG)]              <CSS_CLASS>-image: one matplotlib figure, made once, rendered by `plots.FrameRenderer`
    [info line (HTML)]         <CSS_CLASS>-info

A subclass builds its controls and its figure (``self.fig``, via `plots.new_figure`), then calls `_finish`
with the controls, the artists that change from frame to frame and the controls whose value triggers
`update`. Its `update` changes those artists and ends with `_show(info)`, which re-renders the PNG, counts the
frame in ``renders`` and sets the info line.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np
import torch

from .. import plots


class Explorer(widgets.VBox):
    """Base class of the course's explorers (see the module docstring for the recipe)."""

    CSS_CLASS = "ddpm-explorer"

    def _styled(self, control: widgets.Widget, part: str) -> widgets.Widget:
        """`control` with the CSS class ``<CSS_CLASS>-<part>`` (for the browser tests)."""
        control.add_class(f"{self.CSS_CLASS}-{part}")
        return control

    def _finish(self, controls: list, animated: list, observe: list) -> None:
        """Lay out [controls row, image, info], set up the fast renderer of ``self.fig`` for the `animated`
        artists, call `update` whenever a control in `observe` changes value, and draw the first frame."""
        self.renders = 0
        self._renderer = plots.FrameRenderer(self.fig, animated)
        width_px = int(round(self.fig.get_figwidth() * self.fig.dpi))  # pinned, so the PNG is not stretched
        self.image = self._styled(widgets.Image(format="png", layout=widgets.Layout(width=f"{width_px}px",
                                                                                      height="auto")), "image")
        self.info = self._styled(widgets.HTML(), "info")
        super().__init__([self._styled(widgets.HBox(controls), "controls"), self.image, self.info])
        self.add_class(self.CSS_CLASS)
        for control in observe:
            control.observe(self._on_change, names="value")
        self.update()

    def _on_change(self, change=None) -> None:
        self.update()

    def update(self) -> None:  # pragma: no cover - every explorer defines it
        raise NotImplementedError

    def _show(self, info_html: str) -> None:
        """Render the frame to ``image`` (PNG), count it and set the info line."""
        self.image.value = self._renderer.render()
        self.renders += 1
        self.info.value = f"<code>{info_html}</code>"


def check_images(images, name: str = "images") -> torch.Tensor:
    """`images` as a float32 CPU tensor B×C×H×W (C = 1 or 3), or a ValueError saying what is wrong."""
    if not torch.is_tensor(images):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"{name} must be a B×C×H×W tensor with C = 1 or 3 and B >= 1, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {images.dtype}")
    return images.detach().to("cpu", torch.float32)


def grid_shape(n: int, nrow: int | None) -> tuple[int, int]:
    """(columns, rows) of a grid of `n` images with `nrow` per row (default ⌈√n⌉)."""
    ncol = min(n, nrow or int(math.ceil(math.sqrt(n))))
    return ncol, int(math.ceil(n / ncol))


def show_grid(ax, grid: np.ndarray):
    """Draw an image grid from `plots.to_image_grid` (values in [0, 1], grey when 2D); returns the artist."""
    kw = {"cmap": "gray"} if grid.ndim == 2 else {}
    return ax.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest", **kw)
