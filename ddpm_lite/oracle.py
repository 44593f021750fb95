"""Exact-oracle diagnostics: what a sampler does when the denoiser is perfect (Gaussian-mixture toys).

For a :class:`~ddpm_lite.toys.GaussianMixture` the diffused score, and so the best possible denoiser, is known
in closed form (:class:`~ddpm_lite.toys.ExactGMMDenoiser`), per class as well (class = mixture component). That
turns two questions that are usually muddled by an imperfect network into measurements:

* **What does classifier-free guidance sample?** Guidance is motivated by the *tilted* distribution

      p_w(x | c)  ∝  p(x | c) p(c | x)^w  ∝  p(x | c)^{1+w} p(x)^{-w}

  (Ho & Salimans 2021, §3; Dhariwal & Nichol 2021 for classifier guidance). :class:`TiltedMixture` gives it
  exactly: its normalised density (Gauss–Hermite quadrature for the normaliser) and exact samples (rejection
  sampling from p(x | c), accepted with probability ∝ p(c | x)^w ≤ 1). :func:`guidance_gap` runs a sampler
  with the exact conditional and unconditional denoisers and guidance w, and measures how far its samples
  land from that target. They do not land on it: the guided score at noise level t is the score of
  p_t(x | c)^{1+w} p_t(x)^{-w}, a tilt of the *noised* distributions, which is not the noised tilted
  distribution (Chidambaram, Gatmiry, Chen, Lee & Lu 2024, "What does guidance do? A fine-grained analysis in
  a simple setting", arXiv:2409.13074; Bradley & Nakkiran 2024, "Classifier-free guidance is a
  predictor-corrector", arXiv:2408.09000).

* **Where does a sampler's error come from?** :func:`error_decomposition` runs a sampler at a few step counts
  with the exact denoiser, whose only error is the discretisation of the reverse process, and a learned
  denoiser at many steps, whose error is then (almost) all model error, and tabulates both against the
  data.

Distances are the sliced Wasserstein distance (`ddpm_lite.metrics.sliced_wasserstein`), always reported with
the sampling floor (the same distance between two independent samples of the target), because between
finite samples it is never exactly 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from . import metrics, samplers
from .diffusion import GaussianDiffusion
from .models import eval_mode
from .toys import ExactGMMDenoiser, GaussianMixture

__all__ = [
    "TiltedMixture",
    "sample_points",
    "GuidanceGap",
    "guidance_gap",
    "ErrorDecomposition",
    "error_decomposition",
    "fit_toy_denoiser",
]

Distance = Callable[[Tensor, Tensor], float]


# ----------------------------------------------------------------------------------------------------------
# the tilted distribution p(x|c)^{1+w} p(x)^{-w}
# ----------------------------------------------------------------------------------------------------------


def _gauss_hermite(dim: int, nodes: int):
    """Nodes [nodes^dim, dim] and log-weights [nodes^dim] for E_{N(0, I_dim)}[f] ≈ Σ_i exp(logw_i) f(z_i)
    (probabilists' Hermite polynomials; exact for polynomials of degree < 2·nodes in each coordinate)."""
    z1, w1 = np.polynomial.hermite_e.hermegauss(nodes)
    w1 = w1 / math.sqrt(2 * math.pi)
    grids = np.meshgrid(*([z1] * dim), indexing="ij")
    z = np.stack([g.reshape(-1) for g in grids], axis=1)
    logw = sum(np.log(g.reshape(-1)) for g in np.meshgrid(*([w1] * dim), indexing="ij"))
    return torch.from_numpy(z), torch.from_numpy(np.asarray(logw, dtype=np.float64))


class TiltedMixture:
    """The tilted distribution p_w(x) = cond(x)^{1+w} uncond(x)^{-w} / Z of two Gaussian mixtures, w ≥ 0.

    With ``cond = p(x | c)`` and ``uncond = p(x)`` this is p(x | c) p(c | x)^w up to a constant (Bayes:
    p(c | x) = p(x | c) p(c) / p(x)), the distribution classifier-free guidance with weight w is meant to
    sample (Ho & Salimans 2021, eq. 6 and §3). :meth:`for_class` builds it for one component of a mixture.

    * :meth:`log_prob` is the normalised log-density. The normaliser is an expectation under ``cond``,
      Z = E_cond[(cond/uncond)^w], computed by tensor-product Gauss–Hermite quadrature around each component
      of ``cond`` (``nodes`` per dimension; D ≤ 3).
    * :meth:`sample` draws exact samples by rejection from ``cond``: x ~ cond is kept with probability
      (cond(x) / (M uncond(x)))^w, which is ≤ 1 when cond ≤ M uncond everywhere. :meth:`for_class` knows
      M = 1/π_c (a component never exceeds the whole mixture divided by its weight); for other pairs pass
      ``ratio_bound`` = M, or :meth:`sample` refuses.

    Args:
        cond, uncond: the two mixtures (same dimension D).
        w: the guidance weight (the package's convention: w = 0 is the plain conditional, scale s = 1 + w).
        ratio_bound: a bound M ≥ sup cond/uncond, needed only by :meth:`sample`.
        nodes: Gauss–Hermite nodes per dimension for the normaliser (default 96 in 1D and 2D, 40 in 3D). The
            integrand (cond/uncond)^w gets narrower as w grows; 96 nodes keep log Z exact to ~1e-10 up to
            w ≈ 8 on the tests' examples.
    """

    def __init__(self, cond: GaussianMixture, uncond: GaussianMixture, w: float,
                 ratio_bound: Optional[float] = None, nodes: Optional[int] = None):
        if not isinstance(cond, GaussianMixture) or not isinstance(uncond, GaussianMixture):
            raise ValueError("cond and uncond must be GaussianMixture objects")
        if cond.dim != uncond.dim:
            raise ValueError(f"cond and uncond must have the same dimension, got {cond.dim} and {uncond.dim}")
        if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
            raise ValueError(f"w must be a finite number >= 0 (w = 0: the conditional itself), got {w!r}")
        if nodes is None:
            nodes = 96 if cond.dim <= 2 else 40
        if cond.dim > 3 or nodes ** cond.dim > 200_000:
            raise ValueError(f"the quadrature normaliser is for D <= 3 (nodes^D <= 200000), got D = {cond.dim}, "
                             f"nodes = {nodes}")
        if ratio_bound is not None and not ratio_bound > 0:
            raise ValueError(f"ratio_bound must be > 0, got {ratio_bound!r}")
        self.cond, self.uncond, self.w = cond, uncond, float(w)
        self.ratio_bound = ratio_bound
        self.nodes = int(nodes)
        self.log_normaliser = self._log_normaliser()

    @classmethod
    def for_class(cls, mixture: GaussianMixture, c: int, w: float, nodes: Optional[int] = None) -> "TiltedMixture":
        """p(x | c)^{1+w} p(x)^{-w} / Z for class c = component c of ``mixture`` (the convention of
        :class:`~ddpm_lite.toys.ExactGMMDenoiser`)."""
        k = mixture.num_components
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < k:
            raise ValueError(f"c must be a component index in [0, {k - 1}], got {c!r}")
        cond = GaussianMixture([1.0], mixture.means[c:c + 1].to(torch.float64),
                               variances=mixture.variances[c:c + 1].to(torch.float64))
        uncond = GaussianMixture(mixture.weights.to(torch.float64), mixture.means.to(torch.float64),
                                 variances=mixture.variances.to(torch.float64))
        return cls(cond, uncond, w, ratio_bound=1.0 / float(mixture.weights[c]), nodes=nodes)

    @property
    def dim(self) -> int:
        return self.cond.dim

    def _log_ratio(self, x: Tensor) -> Tensor:
        """log cond(x) − log uncond(x), [N]."""
        return self.cond.log_prob(x) - self.uncond.log_prob(x)

    def _log_normaliser(self) -> float:
        z, logw = _gauss_hermite(self.dim, self.nodes)
        c = self.cond
        means, stds = c.means.to(torch.float64), c.variances.to(torch.float64).sqrt()
        terms = []
        for j in range(c.num_components):
            x = means[j] + stds[j] * z                           # nodes placed on component j of cond
            terms.append(math.log(float(c.weights[j])) + logw + self.w * self._log_ratio(x))
        return float(torch.logsumexp(torch.cat(terms), dim=0))

    def log_unnormalised(self, x: Tensor) -> Tensor:
        """(1 + w) log cond(x) − w log uncond(x), [N]."""
        x = torch.as_tensor(x, dtype=torch.float64)
        return self.cond.log_prob(x) + self.w * self._log_ratio(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """The normalised log-density log p_w(x), [N] (float64)."""
        return self.log_unnormalised(x) - self.log_normaliser

    @property
    def acceptance_rate(self) -> float:
        """The expected fraction of proposals :meth:`sample` keeps: Z / M^w."""
        if self.ratio_bound is None:
            raise ValueError("no ratio_bound: the acceptance rate of rejection sampling is undefined")
        return math.exp(self.log_normaliser - self.w * math.log(self.ratio_bound))

    def sample(self, n: int, generator: Optional[torch.Generator] = None, max_rounds: int = 100) -> Tensor:
        """``n`` exact samples [n, D] (float64) by rejection sampling from ``cond``."""
        if self.ratio_bound is None:
            raise ValueError("sample() needs ratio_bound = M with cond <= M * uncond everywhere "
                             "(TiltedMixture.for_class sets it)")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        log_m = math.log(self.ratio_bound)
        kept, have = [], 0
        batch = max(16, int(1.2 * n / max(self.acceptance_rate, 1e-3)))
        for _ in range(max_rounds):
            if have >= n:
                break
            x = self.cond.sample(batch, generator=generator).to(torch.float64)
            log_accept = (self.w * (self._log_ratio(x) - log_m)).clamp(max=0.0)
            u = torch.rand(batch, generator=generator, dtype=torch.float64)
            x = x[u < log_accept.exp()]
            kept.append(x)
            have += x.shape[0]
        if have < n:
            raise RuntimeError(f"rejection sampling kept {have} of {n} points in {max_rounds} rounds "
                               f"(acceptance rate {self.acceptance_rate:.2g})")
        return torch.cat(kept)[:n]

    def __repr__(self) -> str:
        return (f"TiltedMixture(w={self.w:g}, dim={self.dim}, cond: {self.cond.num_components} component(s), "
                f"uncond: {self.uncond.num_components}, log Z={self.log_normaliser:.4f})")


# ----------------------------------------------------------------------------------------------------------
# sampling points (no clipping) and the guidance gap
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_points(model, diffusion: GaussianDiffusion, x_T: Tensor, sampler: str = "ddim",
                  steps: Optional[int] = None, y: Optional[Tensor] = None, guidance: float = 0.0,
                  eta: float = 0.0, threshold: Optional[str] = None,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Run one of `samplers.SAMPLERS` from x_T [N, D] and return x_0, for points rather than images: by default
    no thresholding of x̂_0 (``threshold=None``; "static" clips it to [−1, 1] as for images) and never the
    final clamp to [−1, 1] that `samplers.sample` applies to images. ``y`` and ``guidance``: classifier-free
    guidance as everywhere in the package, ε̃ = (1 + w) ε(x_t, c) − w ε(x_t, ∅)."""
    with eval_mode(model):
        steps_iter = samplers.sample_steps(model, diffusion, tuple(x_T.shape), sampler=sampler, steps=steps, y=y,
                                           guidance=guidance, eta=eta, threshold=threshold, x_T=x_T,
                                           generator=generator)
        x = x_T
        for step in steps_iter:
            x = step.x
    return x


@dataclass
class GuidanceGap:
    """What :func:`guidance_gap` measured for class ``c``: one row per guidance weight (``w``; ``to_tilted``,
    the distance of the guided samples to the tilted target; ``tilt``, the target's own distance to
    p(x | c), i.e. how far the tilt moves the class; ``floor``, the distance between two independent samples
    of the target), and the point clouds (``guided[w]``, ``tilted[w]``)."""

    c: int
    sampler: str
    steps: Optional[int]
    rows: list = field(default_factory=list)
    guided: dict = field(default_factory=dict)
    tilted: dict = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'w':>5} {'CFG → tilted':>13} {'floor':>7} {'tilted → p(x|c)':>16}"]
        for r in self.rows:
            lines.append(f"{r['w']:5g} {r['to_tilted']:13.3f} {r['floor']:7.3f} {r['tilt']:16.3f}")
        return "\n".join(lines)


def guidance_gap(mixture: GaussianMixture, diffusion: GaussianDiffusion, c: int, weights: Sequence[float],
                 n: int = 2000, sampler: str = "ddim", steps: Optional[int] = 100, seed: int = 0,
                 distance: Distance = metrics.sliced_wasserstein) -> GuidanceGap:
    """Classifier-free guidance with the *exact* conditional and unconditional denoisers, against the exact
    tilted distribution p(x | c)^{1+w} p(x)^{-w} (:class:`TiltedMixture`), for every w in ``weights``.

    Each w uses the same ``n`` starting noises (from ``seed``), and the target gets two independent exact
    samples: one to compare with, one for the floor. With the exact denoiser and enough steps the sampler's
    own error is negligible, so what remains is the difference between what guidance does and the tilted
    distribution. ``sampler``/``steps``: as in `samplers.sample_steps` ("ddpm" needs ``steps=None``)."""
    model = ExactGMMDenoiser(mixture, diffusion.schedule)
    x_T = torch.randn(n, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=mixture.dtype)
    y = torch.full((n,), c, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed + 1)
    out = GuidanceGap(c=c, sampler=sampler, steps=steps)
    cond = TiltedMixture.for_class(mixture, c, 0.0).sample(n, generator=gen)
    for w in weights:
        target = TiltedMixture.for_class(mixture, c, float(w))
        tilted, tilted2 = target.sample(n, generator=gen), target.sample(n, generator=gen)
        guided = sample_points(model, diffusion, x_T, sampler, steps, y=y, guidance=float(w),
                               generator=torch.Generator().manual_seed(seed + 2))
        out.guided[w], out.tilted[w] = guided, tilted
        out.rows.append(dict(w=w, to_tilted=distance(guided, tilted), floor=distance(tilted2, tilted),
                             tilt=distance(tilted, cond)))
    return out


# ----------------------------------------------------------------------------------------------------------
# discretisation error against model error
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ErrorDecomposition:
    """What :func:`error_decomposition` measured, all as distances to the data distribution.

    ``rows``: one dict per (sampler, steps) with ``discretisation`` (exact denoiser at that step count) and
    ``total`` (learned denoiser at that step count). ``model_error[sampler]``: the learned denoiser at
    ``many_steps``; ``exact_many[sampler]``: the exact denoiser at ``many_steps`` (should sit at the floor);
    ``floor``: an independent data sample of the same size."""

    many_steps: int
    floor: float
    rows: list = field(default_factory=list)
    model_error: dict = field(default_factory=dict)
    exact_many: dict = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'sampler':>8} {'NFE':>4} {'discretisation':>15} {'total (learned)':>16} {'model error':>12}"]
        for r in self.rows:
            lines.append(f"{r['sampler']:>8} {r['steps']:4d} {r['discretisation']:15.3f} {r['total']:16.3f} "
                         f"{self.model_error[r['sampler']]:12.3f}")
        lines.append(f"model error = learned denoiser at {self.many_steps} steps; exact denoiser there: "
                     + ", ".join(f"{s} {v:.3f}" for s, v in self.exact_many.items())
                     + f"; sampling floor {self.floor:.3f}")
        return "\n".join(lines)


def error_decomposition(mixture: GaussianMixture, diffusion: GaussianDiffusion, learned,
                        sampler_names: Sequence[str] = ("ddim", "dpmpp2m"), steps: Sequence[int] = (2, 5, 10, 20),
                        many_steps: int = 200, n: int = 2000, seed: int = 0, threshold: Optional[str] = None,
                        distance: Distance = metrics.sliced_wasserstein) -> ErrorDecomposition:
    """Split a sampler's error into discretisation error and model error, on data whose denoiser is known.

    For every sampler and step count S, from the same ``n`` noises x_T:

    * **discretisation error**: distance(exact denoiser, S steps; data). The denoiser is perfect, so all that
      is left is the error of replacing the reverse process by S steps;
    * **total error**: distance(learned denoiser, S steps; data);
    * **model error**: distance(learned denoiser, ``many_steps`` steps; data), where the discretisation error
      is negligible (checked: the exact denoiser at ``many_steps`` sits at the sampling floor).

    The data reference is one exact sample of ``n`` points; the floor is the distance of a second one to it.
    Distances are metrics, so total ≤ discretisation-of-the-learned-sampler + model error (triangle
    inequality); in practice, past the step count where the exact denoiser's curve drops below the model
    error, more steps stop helping the learned model. Deterministic samplers (DDIM with η = 0, DPM-Solver++)
    are the intended use; "ddim" here runs with η = 0. ``threshold``: as in :func:`sample_points`, for both
    denoisers ("static" clips x̂_0 to [−1, 1], the images' default; only for data inside that square).
    """
    exact = ExactGMMDenoiser(mixture, diffusion.schedule)
    gen = torch.Generator().manual_seed(seed)
    data = mixture.sample(n, generator=gen)
    floor = distance(mixture.sample(n, generator=gen), data)
    x_T = torch.randn(n, mixture.dim, generator=gen, dtype=mixture.dtype)
    out = ErrorDecomposition(many_steps=many_steps, floor=floor)

    def run(model, name, s):
        return distance(sample_points(model, diffusion, x_T, name, s, threshold=threshold), data)

    for name in sampler_names:
        if name not in ("ddim", "dpmpp2m"):
            raise ValueError(f"error_decomposition runs the few-step samplers 'ddim' and 'dpmpp2m', got {name!r}")
        out.model_error[name] = run(learned, name, many_steps)
        out.exact_many[name] = run(exact, name, many_steps)
        for s in steps:
            out.rows.append(dict(sampler=name, steps=int(s), discretisation=run(exact, name, s),
                                 total=run(learned, name, s)))
    return out


# ----------------------------------------------------------------------------------------------------------
# a learned denoiser to compare the oracle with
# ----------------------------------------------------------------------------------------------------------


def fit_toy_denoiser(mixture: GaussianMixture, diffusion: GaussianDiffusion, steps: int = 1000,
                     batch_size: int = 256, lr: float = 3e-3, hidden: int = 64, num_blocks: int = 3,
                     seed: int = 0):
    """Train a small unconditional `ToyMLP` ε-model on ``mixture`` with ``diffusion``'s loss (Ho et al. 2020,
    Algorithm 1) for a fixed number of AdamW steps (short warm-up, cosine decay to 10 %). Deterministic for a
    given ``seed`` on one thread. Returns the model in eval mode. A few seconds on one CPU core for the
    defaults: a deliberately imperfect model whose error is easy to see beside the exact one."""
    from .toy_mlp import ToyMLP

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    model = ToyMLP(dim=mixture.dim, hidden=hidden, num_blocks=num_blocks)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        x0 = mixture.sample(batch_size, generator=gen)
        loss = diffusion.training_losses(model, x0, generator=gen)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
