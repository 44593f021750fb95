"""`Img2ImgExplorer` (notebook 09: latent diffusion): a strength slider from "same image" to "new image" over
image-to-image (SDEdit) results, precomputed, for a few input images."""

from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch

from .. import editing, latent, plots
from ..device import model_device
from ..diffusion import randn
from ..metrics import classify, resolve_classifier
from ._base import Explorer, check_images, show_grid


class Img2ImgExplorer(Explorer):
    """Slide the SDEdit strength and watch a row of edited images move from the inputs to new samples.

    Image-to-image (Meng et al. 2022, SDEdit): noise the input to t₀ with the forward process, then run the
    sampler from there. With a sampler of S steps the run is the last round(strength · S) of them
    (`editing.sdedit_timesteps`): strength 0 returns the input (for a latent model: the autoencoder's
    reconstruction D(E(x))), strength 1 starts from pure noise and ignores the input.

    Every strength is computed once, up front (``precompute=True``), from the **same** noise ε for every
    strength, so the slider only changes how far into the noise the input goes. The figure (made once) shows
    the inputs above the current results and, on the right, the mean pixel distance |result − input| against
    strength with a marker at the current one.

    Args:
        model, diffusion: a trained diffusion model (pixel or latent space) and its `GaussianDiffusion`.
        images: the inputs, ``B×C×H×W`` in [-1, 1] (a few: every strength runs on all of them).
        strengths: the strengths the slider offers, in [0, 1].
        autoencoder: the `AutoencoderKL` of a latent model (``checkpoint.load_autoencoder``), None for pixels.
        labels: class labels to condition the edits on (``B`` ints; e.g. the inputs' own classes, or others to
            turn a 3 into an 8), None for an unconditional model.
        sampler, steps, guidance: passed to the edit (default DDIM, 20 steps, no guidance).
        seed: seed of the fixed noise ε.
        strength: the initial strength (default: the first one).
        classifier: a `metrics` classifier, a name, None (no read-out) or "auto" (the shipped one for the image
            shape if there is one): reports how many results are classified as ``labels``.
        precompute: run every strength now (else on first view).

    Attributes: slider (SelectionSlider over strength), image (ipywidgets.Image, PNG), info (HTML), inputs,
    noise (the fixed ε), cache ({strength: results}), edit_calls, fig, renders.

    DOM: ``div.ddpm-img2img-explorer`` (VBox) > [``div.ddpm-img2img-explorer-controls`` (HBox) >
    [label "same image", ``div.ddpm-img2img-explorer-slider``, label "new image"],
    ``img.ddpm-img2img-explorer-image``, ``div.ddpm-img2img-explorer-info``].
    """

    CSS_CLASS = "ddpm-img2img-explorer"

    def __init__(self, model, diffusion, images, strengths: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                 autoencoder=None, labels=None, sampler: str = "ddim", steps: int | None = 20, guidance: float = 0.0,
                 seed: int = 0, strength: float | None = None, classifier="auto", precompute: bool = True):
        images = check_images(images, "images")
        if images.abs().max() > 1.0 + 1e-6:
            raise ValueError("images must be in [-1, 1] (map images in [0, 255] with x / 127.5 - 1)")
        strengths = [float(s) for s in strengths]
        if not strengths:
            raise ValueError("strengths must hold at least one strength")
        if any(not 0.0 <= s <= 1.0 for s in strengths):
            raise ValueError(f"strengths must lie in [0, 1] (0: the input, 1: a new image), got {strengths}")
        if len(set(strengths)) != len(strengths):
            raise ValueError(f"strengths must be distinct, got {strengths}")
        s0 = strengths[0] if strength is None else float(strength)
        if s0 not in strengths:
            raise ValueError(f"strength must be one of strengths {strengths}, got {strength}")
        if autoencoder is not None and tuple(images.shape[1:]) != tuple(autoencoder.image_shape):
            raise ValueError(f"the autoencoder takes images {tuple(autoencoder.image_shape)}, got "
                             f"{tuple(images.shape[1:])}")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if labels.numel() != images.shape[0]:
                raise ValueError(f"labels must have one entry per image ({images.shape[0]}), got {labels.numel()}")
            num_classes = getattr(model, "num_classes", None)
            if num_classes is None:
                raise ValueError("labels given, but the model is unconditional (no num_classes)")
            if labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(f"labels must be classes in [0, {num_classes - 1}], got {labels.tolist()}")

        self.model, self.diffusion, self.autoencoder = model, diffusion, autoencoder
        self.inputs, self.labels, self.strengths = images, labels, strengths
        self.sampler, self.steps, self.guidance = sampler, steps, float(guidance)
        self.device = model_device(model)
        self.timesteps = editing.sampler_timesteps(diffusion, sampler, steps)
        space = (images.shape[0], *autoencoder.latent_shape) if autoencoder is not None else tuple(images.shape)
        self.noise = randn(space, torch.Generator().manual_seed(seed), torch.device("cpu"), torch.float32)
        self.cache: dict = {}
        self.edit_calls = 0
        self.classifier = None
        if classifier is not None and labels is not None:
            self.classifier = resolve_classifier(classifier, image_shape=tuple(images.shape[1:]))

        self.slider = self._styled(widgets.SelectionSlider(options=[(f"{s:g}", s) for s in strengths], value=s0,
                                                           description="strength", continuous_update=True,
                                                           layout=widgets.Layout(width="360px")), "slider")
        ends = [widgets.Label("same image"), self.slider, widgets.Label("new image")]
        if precompute:
            for s in strengths:
                self.results(s)
        self._build_figure()
        self._finish(ends, animated=[self._im, *self._tags, self._title, self._marker], observe=[self.slider])

    # -- the edits (cached) ---------------------------------------------------------------------------------------

    def results(self, strength: float | None = None) -> torch.Tensor:
        """The edited images [B, C, H, W] at `strength` (run once, cached; CPU float32)."""
        s = float(self.slider.value if strength is None else strength)
        if s not in self.cache:
            x = self.inputs.to(self.device)
            kwargs = dict(sampler=self.sampler, steps=self.steps, guidance=self.guidance,
                          y=None if self.labels is None else self.labels.to(self.device),
                          noise=self.noise.to(self.device), generator=torch.Generator().manual_seed(1))
            if self.autoencoder is None:
                out = editing.img2img(self.model, self.diffusion, x, s, **kwargs)
            else:
                out = latent.img2img(self.model, self.diffusion, self.autoencoder, x, s, **kwargs)
            self.cache[s] = out.detach().float().cpu()
            self.edit_calls += 1
        return self.cache[s]

    def distance(self, strength: float | None = None) -> float:
        """Mean |result − input| over all pixels (images in [-1, 1]) at `strength`."""
        return float((self.results(strength) - self.inputs).abs().mean())

    def accuracy(self, strength: float | None = None) -> float | None:
        """Fraction of the results classified as their conditioning label (None without labels or classifier)."""
        if self.classifier is None:
            return None
        pred = classify(self.results(strength), self.classifier)
        return float((pred.cpu() == self.labels).double().mean())

    def run_steps(self, strength: float | None = None) -> list[int]:
        """The sampler timesteps SDEdit runs at `strength` (noisiest first; [] at strength 0)."""
        return editing.sdedit_timesteps(self.timesteps, float(self.slider.value if strength is None else strength))

    # -- drawing ------------------------------------------------------------------------------------------------

    def _grid(self, x: torch.Tensor) -> np.ndarray:
        return plots.to_image_grid(torch.cat([self.inputs, x]), nrow=self.inputs.shape[0])

    def _build_figure(self) -> None:
        n, (c, h, w) = self.inputs.shape[0], self.inputs.shape[1:]
        grid_w = max(2.0, 0.75 * n * w / 28 * 1.6)
        fig, (ax_img, ax_d) = plots.new_figure(figsize=(grid_w + 3.2, 2.6), ncols=2,
                                               gridspec_kw={"width_ratios": [grid_w, 2.8]})
        self.fig = fig
        self._im = show_grid(ax_img, self._grid(self.results(self.strengths[0])))
        ax_img.set_xticks([])
        ax_img.set_yticks([1 + (h - 1) / 2, h + 2 + (h - 1) / 2], ["input", "result"], fontsize=9)
        ax_img.tick_params(length=0)
        for side in ("top", "right", "bottom", "left"):
            ax_img.spines[side].set_visible(False)
        ax_img.grid(False)
        self._tags = []  # the class each edit is conditioned on, at the top-left of its result (drawn over the grid)
        if self.labels is not None:
            for k, lab in enumerate(self.labels.tolist()):
                self._tags.append(ax_img.text(1 + k * (w + 1) + 0.3, h + 2 + 0.3, f"→{lab}", color="yellow", fontsize=8,
                                              va="top"))
        self._title = ax_img.set_title("", fontsize=10)

        d = [self.distance(s) for s in self.strengths]
        order = np.argsort(self.strengths)
        ax_d.plot(np.asarray(self.strengths)[order], np.asarray(d)[order], "o-", color="0.6", ms=3)
        (self._marker,) = ax_d.plot([self.strengths[0]], [d[0]], "o", color="#d62728", ms=8)
        ax_d.set(xlim=(-0.05, 1.05), ylim=(0, max(d) * 1.15 + 1e-3), xlabel="strength",
                 ylabel="mean |result − input|")
        ax_d.set_title("how far from the input", fontsize=10)
        fig.tight_layout()

    def update(self) -> None:
        """Show the results at the current strength: swap the grid's data, move the marker, re-render."""
        s = float(self.slider.value)
        x = self.results(s)
        self._im.set_data(self._grid(x))
        run = self.run_steps(s)
        self._title.set_text(f"strength {s:g}: {len(run)} of {len(self.timesteps)} steps")
        dist = self.distance(s)
        self._marker.set_data([s], [dist])
        start = f"from t₀ = {run[0]}" if run else "nothing runs"
        if run and len(run) == len(self.timesteps):
            start += " (pure noise: the input is ignored)"
        acc = self.accuracy(s)
        acc_text = "" if acc is None else f" · classified as the requested digit: {100 * acc:.0f}%"
        space = "latent" if self.autoencoder is not None else "pixel"
        self._show(f"strength {s:g} · {space} SDEdit runs the last {len(run)} of {len(self.timesteps)} "
                   f"{self.sampler.upper()} steps, {start} · mean |result − input| = {dist:.3f}{acc_text}")
