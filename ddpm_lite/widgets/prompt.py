"""`PromptExplorer` (notebook 11: text-to-image): type a prompt, set the guidance weight, the sampler and its
steps, and see a row of images drawn for it by a `pipeline.TextToImage` (mini Stable Diffusion or mini Imagen)."""

from __future__ import annotations

import html
import time
from typing import Sequence

import ipywidgets as widgets
import torch

from .. import plots
from ..samplers import SAMPLERS
from ._base import Explorer, show_grid


class PromptExplorer(Explorer):
    """A prompt box for a text-to-image pipeline: the images for the prompt, redrawn when anything changes.

    Each change samples `n` images from ``pipe`` (text encoder → sampler loop with classifier-free guidance
    against the empty prompt → decoder or super-resolution stage) with the seed's fixed starting noise, so a
    new prompt or a new w changes the same images, not other random ones. Results are cached per setting.
    A prompt with a word the text encoder does not know is not drawn: the error message (naming the word and
    listing the words it knows) goes to the info line, the last images stay.

    Unlike the other explorers nothing is precomputed (a text box has no finite set of values): keep it
    responsive on a CPU with few images and steps (mini Stable Diffusion's 4×7×7 latents take about 0.05 s per
    image for 15 guided DDIM steps; the pixel-space cascade is a few times slower). The controls update on
    release / Enter (``continuous_update=False``), so dragging a slider samples once, not at every position.

    Args:
        pipe: a `ddpm_lite.pipeline.TextToImage`.
        prompt: the initial prompt.
        n: images per prompt.
        guidance: initial classifier-free guidance weight w (ε̃ = (1 + w) ε(x, c) − w ε(x, ∅)).
        max_guidance: the slider's largest w.
        steps, step_range: initial sampler steps and the slider's (min, max).
        sampler, samplers: initial sampler and those the dropdown offers (the package's "ddim" and "dpmpp2m";
            ancestral "ddpm" needs all T steps, too slow here).
        seed: initial seed of the starting noise.
        threshold: x̂_0 thresholding passed to the pipeline ("auto": none for latents, static clipping for pixels).
        sr_steps: steps of a cascade's super-resolution stage (default: the same as `steps`).

    Attributes: text (Text), slider (FloatSlider over w), sampler (Dropdown), steps (IntSlider), seed
    (BoundedIntText), image (ipywidgets.Image, PNG), info (HTML), error (the last error message or None),
    cache ({(prompt, w, sampler, steps, seed): images}), generate_calls, seconds (of the last generation), fig,
    renders.

    DOM: ``div.ddpm-prompt-explorer`` (VBox) > [``div.ddpm-prompt-explorer-controls`` (HBox) > VBox >
    [``div.ddpm-prompt-explorer-text`` (its ``input``), HBox > [``div.ddpm-prompt-explorer-slider``,
    ``div.ddpm-prompt-explorer-sampler``, ``div.ddpm-prompt-explorer-steps``, ``div.ddpm-prompt-explorer-seed``]],
    ``img.ddpm-prompt-explorer-image``, ``div.ddpm-prompt-explorer-info``].
    """

    CSS_CLASS = "ddpm-prompt-explorer"

    def __init__(self, pipe, prompt: str = "a thick seven", n: int = 4, guidance: float = 3.0,
                 max_guidance: float = 10.0, steps: int = 15, step_range: tuple[int, int] = (5, 50),
                 sampler: str = "ddim", samplers: Sequence[str] = ("ddim", "dpmpp2m"), seed: int = 0,
                 threshold="auto", sr_steps: int | None = None):
        samplers = list(samplers)
        if not samplers or any(s not in SAMPLERS or s == "ddpm" for s in samplers):
            raise ValueError(f"samplers must be a non-empty list of {[s for s in SAMPLERS if s != 'ddpm']} (ancestral "
                             f"DDPM runs all T steps), got {samplers}")
        if sampler not in samplers:
            raise ValueError(f"sampler must be one of samplers {samplers}, got {sampler!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        lo, hi = (int(v) for v in step_range)
        if not 1 <= lo <= int(steps) <= hi:
            raise ValueError(f"steps must lie in step_range {lo}..{hi} (and step_range start at >= 1), got {steps}")
        if not 0 <= float(guidance) <= float(max_guidance):
            raise ValueError(f"guidance must lie in [0, max_guidance = {max_guidance}], got {guidance}")
        self.pipe, self.n, self.threshold, self.sr_steps = pipe, int(n), threshold, sr_steps
        self.cache: dict = {}
        self.generate_calls = 0
        self.seconds = 0.0
        self.error: str | None = None

        self.text = self._styled(widgets.Text(value=str(prompt), description="prompt", continuous_update=False,
                                              placeholder="e.g. a thick upside-down two",
                                              layout=widgets.Layout(width="420px")), "text")
        self.slider = self._styled(widgets.FloatSlider(value=float(guidance), min=0.0, max=float(max_guidance),
                                                       step=0.5, description="w", continuous_update=False,
                                                       readout_format=".1f", layout=widgets.Layout(width="260px")),
                                   "slider")
        self.sampler = self._styled(widgets.Dropdown(options=samplers, value=sampler, description="sampler",
                                                     layout=widgets.Layout(width="180px")), "sampler")
        self.steps = self._styled(widgets.IntSlider(value=int(steps), min=lo, max=hi, description="steps",
                                                    continuous_update=False, layout=widgets.Layout(width="240px")),
                                  "steps")
        self.seed = self._styled(widgets.BoundedIntText(value=int(seed), min=0, max=2**31 - 1, description="seed",
                                                        layout=widgets.Layout(width="150px")), "seed")
        controls = widgets.VBox([self.text, widgets.HBox([self.slider, self.sampler, self.steps, self.seed])])
        self._build_figure()
        self._finish([controls], animated=[self._im, self._title],
                     observe=[self.text, self.slider, self.sampler, self.steps, self.seed])

    # -- sampling (cached) ------------------------------------------------------------------------------------

    def settings(self) -> tuple:
        """The current (prompt, w, sampler, steps, seed)."""
        return (self.text.value.strip(), float(self.slider.value), self.sampler.value, int(self.steps.value),
                int(self.seed.value))

    def images(self, prompt: str | None = None, guidance: float | None = None, sampler: str | None = None,
               steps: int | None = None, seed: int | None = None) -> torch.Tensor:
        """The `n` images [n, C, H, W] in [-1, 1] for a prompt (default: the current settings); sampled once and
        cached. An unknown word raises the text encoder's ValueError naming it."""
        now = self.settings()
        key = tuple(cur if new is None else new for new, cur in zip((prompt, guidance, sampler, steps, seed), now))
        key = (str(key[0]).strip(), float(key[1]), key[2], int(key[3]), int(key[4]))
        if key not in self.cache:
            text, w, name, k, s = key
            start = time.perf_counter()
            x = self.pipe([text] * self.n, guidance=w, steps=k, sampler=name, threshold=self.threshold,
                          generator=torch.Generator().manual_seed(s), sr_steps=self.sr_steps)
            self.seconds = time.perf_counter() - start
            self.cache[key] = x.detach().float().cpu()
            self.generate_calls += 1
        return self.cache[key]

    # -- drawing ------------------------------------------------------------------------------------------------

    def _build_figure(self) -> None:
        c, h, w = self.pipe.image_shape
        per = 1.0 * max(h, w) / 28 + 0.3
        fig, ax = plots.new_figure(figsize=(max(2.4, per * self.n + 0.3), per + 0.45))
        self.fig = fig
        blank = torch.full((self.n, c, h, w), -1.0)
        self._im = show_grid(ax, plots.to_image_grid(blank, nrow=self.n))
        ax.set_axis_off()
        self._title = ax.set_title("", fontsize=9)
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.8)

    def update(self) -> None:
        """Sample (or fetch from the cache) the images for the current settings and show them; an unknown word
        puts the error message in the info line instead."""
        prompt, w, name, steps, seed = self.settings()
        cached = (prompt, w, name, steps, seed) in self.cache
        try:
            x = self.images()
        except ValueError as err:
            self.error = str(err)
            self._title.set_text(f"{prompt!r}: not drawn (see below)")
            self._show(f"⚠ {html.escape(self.error)}")
            return
        self.error = None
        self._im.set_data(plots.to_image_grid(x, nrow=self.n))
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        self._title.set_text(f"{shown!r}, w = {w:g}" if prompt else "the empty prompt (unconditional)")
        timing = "cached" if cached else f"{self.seconds:.2f} s"
        self._show(f"{html.escape(repr(prompt))} · w = {w:g} (scale s = {1 + w:g}) · {name.upper()} {steps} steps · "
                   f"seed {seed} · {self.n} images {tuple(x.shape[1:])} in {timing}")
