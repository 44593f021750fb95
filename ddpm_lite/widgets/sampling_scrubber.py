"""`SamplingScrubber` (notebook 06: the reverse process, step by step): scrub through a finished sampling run."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch

from .. import plots
from ..models import eval_mode, sample_shape
from ..samplers import sample_steps
from ._base import Explorer, grid_shape, show_grid


class SamplingScrubber(Explorer):
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
            from ``image_shape`` or from the model (`ddpm_lite.models.sample_shape`).
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

        last = len(self.frames) - 1
        frame = last if frame is None else int(frame)
        if not 0 <= frame <= last:
            raise ValueError(f"frame must lie in [0, {last}], got {frame}")
        self.slider = self._styled(widgets.IntSlider(value=frame, min=0, max=last, step=1, description="step",
                                                     continuous_update=True, layout=widgets.Layout(width="420px")),
                                   "slider")
        self.play = self._styled(widgets.Play(value=frame, min=0, max=last, step=max(1, len(self.frames) // 100),
                                              interval=60, description="play"), "play")
        widgets.jslink((self.play, "value"), (self.slider, "value"))  # the browser moves the slider

        self._build_figure()
        self._finish([self.play, self.slider], animated=[self._im_x, self._im_p, self._title_x, self._title_p],
                     observe=[self.slider])

    @staticmethod
    def _run_sampler(model, diffusion, n, sampler, seed, image_shape, sample_kwargs):
        if model is None or diffusion is None:
            raise ValueError("pass steps_list=[...] from samplers.sample_steps, or both model= and diffusion=")
        if image_shape is None:
            image_shape = sample_shape(model)
        with eval_mode(model):
            gen = torch.Generator().manual_seed(seed)
            return list(sample_steps(model, diffusion, (n, *image_shape), sampler=sampler, generator=gen,
                                     **sample_kwargs))

    @property
    def frame(self) -> dict:
        """The frame now shown: index, t, x (x_t after the step) and pred_x0."""
        return self.frames[int(self.slider.value)]

    def _build_figure(self) -> None:
        ncol, nrows = grid_shape(self.n_show, self.nrow)
        panel_h = 2.6
        panel_w = max(2.2, panel_h * ncol / nrows)
        fig, (ax_x, ax_p) = plots.new_figure(figsize=(2 * panel_w + 0.4, panel_h + 0.45), ncols=2)
        self.fig = fig
        g_x, g_p = self._grids[0]
        self._im_x, self._im_p = show_grid(ax_x, g_x), show_grid(ax_p, g_p)
        for ax in (ax_x, ax_p):
            ax.set_axis_off()
        self._title_x = ax_x.set_title("x at t = 000")
        self._title_p = ax_p.set_title("predicted x0")
        fig.tight_layout()

    def update(self) -> None:
        k = int(self.slider.value)
        f = self.frames[k]
        g_x, g_p = self._grids[k]
        self._im_x.set_data(g_x)
        self._im_p.set_data(g_p)
        where = "x\u2080 (done)" if f["t"] < 0 else f"x\u209c, t = {f['t']}"
        self._title_x.set_text(f"after step {f['index'] + 1}: {where}")
        self._title_p.set_text(f"predicted x\u0302\u2080 at step {f['index'] + 1}")
        x = f["x"]
        self._show(
            f"frame {k + 1}/{len(self.frames)} · network call {f['index'] + 1} · now at t = {f['t']} "
            f"(−1 = the final sample) · std(x<sub>t</sub>) = {float(x.std()):.3f} · "
            f"mean |x<sub>t</sub> − x̂<sub>0</sub>| = {float((x - f['pred_x0']).abs().mean()):.3f}"
        )
