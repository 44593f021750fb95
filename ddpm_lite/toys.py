"""2D toy distributions, and Gaussian mixtures whose diffused score and denoiser are known exactly.

Two kinds of toy data live here.

* Point clouds (:func:`make_moons`, :func:`make_swiss_roll`) for training a small denoiser and looking at
  the samples.
* :class:`GaussianMixture`, where every quantity a diffusion model tries to learn has a closed form.
  The DDPM forward process (Ho et al., 2020, eq. 4)

      q(x_t | x_0) = N(x_t; sqrt(abar_t) x_0, (1 - abar_t) I)

  maps a Gaussian component N(m_k, diag v_k) to N(sqrt(abar) m_k, diag(abar v_k + 1 - abar)), because a
  linear map of a Gaussian plus independent Gaussian noise is Gaussian. So the noised marginal p_t is
  again a mixture, with the same weights. From there we get, exactly:

  - the score  grad_x log p_t(x)  (the target of score matching; Song & Ermon, 2019; Song et al., 2021),
  - the MMSE denoiser  E[x_0 | x_t]  (the best possible x_0-prediction, in closed form by Gaussian
    conditioning within each component, weighted by the components' posterior responsibilities),
  - the optimal noise prediction  E[eps | x_t]  that the "simple" loss of Ho et al. (2020, eq. 14) is
    minimised by.

  Tweedie's formula (Robbins, 1956; Efron, 2011) ties them together:
  E[x_0 | x_t] = (x_t + (1 - abar) grad log p_t(x_t)) / sqrt(abar), i.e.
  E[eps | x_t] = -sqrt(1 - abar) grad log p_t(x_t).

  :class:`ExactGMMDenoiser` wraps a mixture as a ``model(x_t, t, y=None)`` that returns the exact
  eps-prediction, so samplers and the variational bound can be run with a "perfect model".

Everything is torch only. Functions honour the device and dtype of the tensors they are given
(``float32`` by default when they create tensors).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = [
    "make_moons",
    "make_swiss_roll",
    "GaussianMixture",
    "ExactGMMDenoiser",
    "sample_toy",
    "TOY_NAMES",
]

AlphaBar = Union[float, int, Tensor]

# Affine maps from the classic (scikit-learn) coordinates to ours: both clouds are centred and shrunk by
# one scale factor (aspect ratio kept) so that they lie roughly in [-1, 1]^2.
_MOONS_CENTER = (0.5, 0.25)  # the two moons span x in [-1, 2], y in [-0.5, 1]
_MOONS_SCALE = 1.5
_SWISS_SCALE = 4.5 * math.pi  # the 2D swiss roll has radius t <= 4.5 pi


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return n


def _gen_device(generator: Optional[torch.Generator], device) -> torch.device:
    """Draw random numbers on the generator's device (torch requires it); move to ``device`` afterwards."""
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _resolve_dtype(dtype) -> torch.dtype:
    return torch.get_default_dtype() if dtype is None else dtype


# ----------------------------------------------------------------------------------------------------------
# point clouds
# ----------------------------------------------------------------------------------------------------------


def make_moons(
    n: int,
    noise: float = 0.05,
    generator: Optional[torch.Generator] = None,
    return_labels: bool = False,
    device=None,
    dtype: Optional[torch.dtype] = None,
):
    """Two interleaving half circles (the scikit-learn "moons"), rescaled to roughly [-1, 1] x [-0.5, 0.5].

    The outer moon is the upper half of the unit circle, the inner one is (1 - cos th, 0.5 - sin th); the
    angle th is drawn uniformly in [0, pi] (so the samples are i.i.d., unlike scikit-learn's even spacing).
    The points are then centred at (0.5, 0.25) and divided by 1.5, which keeps the aspect ratio.

    Args:
        n: number of points; the outer moon gets ``n - n // 2`` and the inner ``n // 2``, in that order.
        noise: standard deviation of isotropic Gaussian noise added to each point, in the *output* units.
        generator: optional ``torch.Generator`` for reproducible draws (numbers are drawn on its device).
        return_labels: also return which moon each point is on (``torch.long``, 0 outer, 1 inner).
        device, dtype: of the result (default: the generator's device or CPU; the default float dtype).

    Returns:
        ``x`` of shape ``[n, 2]``, or ``(x, labels)`` with ``labels`` of shape ``[n]``.
    """
    n = _check_n(n)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    dtype = _resolve_dtype(dtype)
    gdev = _gen_device(generator, device)
    n_outer = n - n // 2
    n_inner = n // 2
    theta = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64) * math.pi
    th_o, th_i = theta[:n_outer], theta[n_outer:]
    outer = torch.stack([torch.cos(th_o), torch.sin(th_o)], dim=1)
    inner = torch.stack([1.0 - torch.cos(th_i), 0.5 - torch.sin(th_i)], dim=1)
    x = torch.cat([outer, inner], dim=0)
    center = torch.tensor(_MOONS_CENTER, dtype=torch.float64, device=gdev)
    x = (x - center) / _MOONS_SCALE
    if noise > 0:
        x = x + noise * torch.randn(n, 2, generator=generator, device=gdev, dtype=torch.float64)
    out_device = device if device is not None else gdev
    x = x.to(device=out_device, dtype=dtype)
    if return_labels:
        labels = torch.cat([torch.zeros(n_outer, dtype=torch.long), torch.ones(n_inner, dtype=torch.long)])
        return x, labels.to(out_device)
    return x


def make_swiss_roll(
    n: int,
    noise: float = 0.03,
    generator: Optional[torch.Generator] = None,
    return_labels: bool = False,
    device=None,
    dtype: Optional[torch.dtype] = None,
):
    """The 2D swiss roll (a spiral), rescaled to lie roughly in [-1, 1]^2.

    As in scikit-learn's ``make_swiss_roll`` projected to its (x, z) plane: t = 1.5 pi (1 + 2u) with
    u ~ U[0, 1], and the point is (t cos t, t sin t) / (4.5 pi).

    Args:
        n: number of points.
        noise: standard deviation of isotropic Gaussian noise added to each point, in the output units
            (neighbouring arms are about 0.44 apart).
        generator: optional ``torch.Generator`` for reproducible draws (numbers are drawn on its device).
        return_labels: also return the position along the roll, ``u`` in [0, 1] (a float tensor ``[n]``,
            handy for colouring; the swiss roll has no classes).
        device, dtype: of the result (default: the generator's device or CPU; the default float dtype).

    Returns:
        ``x`` of shape ``[n, 2]``, or ``(x, u)``.
    """
    n = _check_n(n)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    dtype = _resolve_dtype(dtype)
    gdev = _gen_device(generator, device)
    u = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64)
    t = 1.5 * math.pi * (1.0 + 2.0 * u)
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / _SWISS_SCALE
    if noise > 0:
        x = x + noise * torch.randn(n, 2, generator=generator, device=gdev, dtype=torch.float64)
    out_device = device if device is not None else gdev
    x = x.to(device=out_device, dtype=dtype)
    if return_labels:
        return x, u.to(device=out_device, dtype=dtype)
    return x


# ----------------------------------------------------------------------------------------------------------
# Gaussian mixtures
# ----------------------------------------------------------------------------------------------------------


def _as_float_tensor(value, name: str) -> Tensor:
    if isinstance(value, Tensor):
        t = value
        if not torch.is_floating_point(t):
            t = t.to(torch.get_default_dtype())
        return t
    try:
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a number, sequence or tensor, got {type(value).__name__}") from exc


class GaussianMixture:
    """A mixture of Gaussians with diagonal covariances, sum_k w_k N(m_k, diag v_k), in D dimensions.

    Besides sampling and the density, it gives the exact diffused quantities under the DDPM forward
    process q(x_t | x_0) = N(sqrt(abar) x_0, (1 - abar) I) (Ho et al., 2020, eq. 4): the noised marginal
    (:meth:`diffused`), its score (:meth:`score`), the MMSE denoiser (:meth:`posterior_mean_x0`) and the
    optimal noise prediction (:meth:`optimal_eps`).

    Args:
        weights: ``[K]`` non-negative mixture weights (normalised to sum to one).
        means: ``[K, D]`` component means.
        variances: per-component variances: a number (shared and isotropic), ``[K]`` (isotropic per
            component) or ``[K, D]`` (diagonal). Give this or ``stds``.
        stds: the same as standard deviations.

    The parameters are stored as tensors (float32 unless given as float tensors of another dtype); the
    methods cast them to the device and dtype of their input, so a mixture is usable anywhere. ``to()``
    moves the stored copy.

    Every method that takes ``alpha_bar`` accepts a python float, a 0-d tensor, or a ``[B]`` tensor with
    one value per row of ``x`` (``B`` equal to the batch size, or 1). ``alpha_bar`` must lie in [0, 1].
    """

    def __init__(self, weights, means, variances=None, stds=None):
        means = _as_float_tensor(means, "means")
        if means.dim() != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must have shape [K, D] with K, D >= 1, got {tuple(means.shape)}")
        k, d = means.shape
        weights = _as_float_tensor(weights, "weights").to(device=means.device, dtype=means.dtype)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape [K] = [{k}] to match means, got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        if (variances is None) == (stds is None):
            raise ValueError("give exactly one of variances= or stds=")
        if variances is not None:
            var = _as_float_tensor(variances, "variances")
        else:
            s = _as_float_tensor(stds, "stds")
            var = s * s
            if (s < 0).any():
                raise ValueError("stds must be non-negative")
        var = var.to(device=means.device, dtype=means.dtype)
        if var.dim() == 0:
            var = var.expand(k, d)
        elif var.shape == (k,):
            var = var[:, None].expand(k, d)
        elif var.shape != (k, d):
            raise ValueError(
                f"variances/stds must be a number, [K] = [{k}] or [K, D] = [{k}, {d}], got {tuple(var.shape)}"
            )
        if not torch.isfinite(var).all() or (var <= 0).any():
            raise ValueError("variances must be finite and > 0")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        self.weights = weights / weights.sum()
        self.means = means.clone()
        self.variances = var.clone().contiguous()

    # ---- presets ---------------------------------------------------------------------------------------

    @classmethod
    def ring(cls, k: int = 8, radius: float = 1.0, std: float = 0.1, dtype=None, device=None) -> "GaussianMixture":
        """``k`` equally weighted isotropic Gaussians equally spaced on a circle of ``radius`` (the classic
        "8 Gaussians" toy)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        dtype = _resolve_dtype(dtype)
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(
            torch.full((k,), 1.0 / k, dtype=dtype, device=device),
            means.to(device=device, dtype=dtype),
            stds=torch.full((k,), float(std), dtype=dtype, device=device),
        )

    @classmethod
    def grid(cls, size: int = 3, extent: float = 1.0, std: float = 0.1, dtype=None, device=None) -> "GaussianMixture":
        """``size**2`` equally weighted isotropic Gaussians on a ``size x size`` grid spanning
        [-extent, extent]^2 (means in row-major order)."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        dtype = _resolve_dtype(dtype)
        axis = torch.linspace(-extent, extent, size, dtype=torch.float64) if size > 1 else torch.zeros(1, dtype=torch.float64)
        gy, gx = torch.meshgrid(axis, axis, indexing="ij")
        means = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
        k = size * size
        return cls(
            torch.full((k,), 1.0 / k, dtype=dtype, device=device),
            means.to(device=device, dtype=dtype),
            stds=torch.full((k,), float(std), dtype=dtype, device=device),
        )

    # ---- basic properties ------------------------------------------------------------------------------

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def to(self, device=None, dtype=None) -> "GaussianMixture":
        """A copy with the parameters on ``device`` / in ``dtype``."""
        return GaussianMixture(
            self.weights.to(device=device, dtype=dtype),
            self.means.to(device=device, dtype=dtype),
            variances=self.variances.to(device=device, dtype=dtype),
        )

    def mean(self) -> Tensor:
        """The mixture mean sum_k w_k m_k, shape ``[D]``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """The mixture covariance sum_k w_k (diag v_k + m_k m_k^T) - mu mu^T, shape ``[D, D]``."""
        mu = self.mean()
        second = torch.diag(self.weights @ self.variances) + (self.means.T * self.weights) @ self.means
        return second - torch.outer(mu, mu)

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(num_components={self.num_components}, dim={self.dim}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ---- input handling --------------------------------------------------------------------------------

    def _params_like(self, x: Tensor):
        return (
            self.weights.to(device=x.device, dtype=x.dtype),
            self.means.to(device=x.device, dtype=x.dtype),
            self.variances.to(device=x.device, dtype=x.dtype),
        )

    def _check_x(self, x, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a tensor of shape [N, {self.dim}], got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape [N, {self.dim}], got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"{name} must be a floating point tensor, got {x.dtype}")
        return x

    def _alpha_bar(self, alpha_bar: AlphaBar, x: Tensor):
        """``(abar, 1 - abar)`` as ``[B or 1, 1, 1]`` tensors in x's dtype/device, ready to broadcast
        against ``[B, K, D]``. ``1 - abar`` is formed before casting, to keep its precision near abar = 1."""
        if isinstance(alpha_bar, bool):
            raise ValueError(f"alpha_bar must be a float or a tensor, got {alpha_bar!r}")
        if isinstance(alpha_bar, (float, int)):
            ab = torch.tensor([float(alpha_bar)], dtype=torch.float64, device=x.device)
        elif isinstance(alpha_bar, Tensor):
            if alpha_bar.dim() > 1:
                raise ValueError(f"alpha_bar must be a scalar or a [B] tensor, got shape {tuple(alpha_bar.shape)}")
            ab = alpha_bar.reshape(-1).to(x.device)
            if not torch.is_floating_point(ab):
                ab = ab.to(torch.float64)
            if ab.numel() not in (1, x.shape[0]):
                raise ValueError(
                    f"alpha_bar must have 1 or {x.shape[0]} (batch size) elements, got {ab.numel()}"
                )
        else:
            raise ValueError(f"alpha_bar must be a float or a tensor, got {type(alpha_bar).__name__}")
        if not torch.isfinite(ab).all() or (ab < 0).any() or (ab > 1).any():
            raise ValueError("alpha_bar must lie in [0, 1]")
        one_minus = (1 - ab).to(x.dtype)
        return ab.to(x.dtype)[:, None, None], one_minus[:, None, None]

    def _component_mask(self, y: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
        """Log-weight offsets ``[B, K]`` that keep only component ``y[i]`` (``y[i] == K`` keeps all)."""
        if y is None:
            return None
        if not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != (x.shape[0],):
            raise ValueError(
                f"y must be a torch.long tensor of shape [{x.shape[0]}], got "
                f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}"
            )
        k = self.num_components
        if (y < 0).any() or (y > k).any():
            raise ValueError(f"y must lie in [0, {k}] (index {k} = unconditional), got min {int(y.min())} max {int(y.max())}")
        y = y.to(x.device)
        keep = (y[:, None] == torch.arange(k, device=x.device)[None, :]) | (y[:, None] == k)
        return torch.where(keep, torch.zeros((), dtype=x.dtype, device=x.device),
                           torch.full((), -math.inf, dtype=x.dtype, device=x.device))

    # ---- sampling and density --------------------------------------------------------------------------

    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        """Draw ``n`` points, ``[n, D]``, on the mixture's device and in its dtype (random numbers are drawn
        on the generator's device when one is given). With ``return_labels`` also returns the component
        index of each point (``torch.long`` ``[n]``)."""
        n = _check_n(n)
        gdev = _gen_device(generator, self.device)
        w = self.weights.to(device=gdev, dtype=torch.float64)
        if n == 0:
            labels = torch.zeros(0, dtype=torch.long, device=gdev)
        else:
            labels = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=self.dtype)
        labels = labels.to(self.device)
        x = self.means[labels] + self.variances[labels].sqrt() * z.to(self.device)
        return (x, labels) if return_labels else x

    def _component_log_prob(self, x: Tensor, means: Tensor, var: Tensor) -> Tensor:
        """log N(x; means_k, diag var_k) for every k: x ``[B, D]``, means/var ``[B or 1, K, D]`` -> ``[B, K]``."""
        diff = x[:, None, :] - means
        return -0.5 * ((diff * diff) / var + torch.log(2 * math.pi * var)).sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = logsumexp_k [log w_k + log N(x; m_k, diag v_k)], shape ``[N]``."""
        x = self._check_x(x)
        w, m, v = self._params_like(x)
        return torch.logsumexp(torch.log(w) + self._component_log_prob(x, m[None], v[None]), dim=-1)

    # ---- the diffused mixture ---------------------------------------------------------------------------

    def diffused(self, alpha_bar: AlphaBar) -> "GaussianMixture":
        """The marginal p_t(x_t) = int q(x_t | x_0) p(x_0) dx_0 under q of Ho et al. (2020, eq. 4): the same
        weights, means sqrt(abar) m_k and variances abar v_k + (1 - abar). ``alpha_bar`` must be a single
        value here."""
        if isinstance(alpha_bar, Tensor) and alpha_bar.numel() != 1:
            raise ValueError(
                f"diffused() needs a single alpha_bar (a float or a one-element tensor), got shape {tuple(alpha_bar.shape)}"
            )
        ab, one_minus = self._alpha_bar(alpha_bar, self.means[:1].to(torch.float64))
        ab, one_minus = ab.reshape(()), one_minus.reshape(())
        means = (ab.sqrt() * self.means.to(torch.float64)).to(self.dtype)
        var = (ab * self.variances.to(torch.float64) + one_minus).to(self.dtype)
        return GaussianMixture(self.weights, means, variances=var)

    def _diffused_terms(self, x_t: Tensor, alpha_bar: AlphaBar, y: Optional[Tensor]):
        """Shared work: per-component diffused means/variances and log-responsibilities of x_t."""
        x_t = self._check_x(x_t, "x_t")
        w, m, v = self._params_like(x_t)
        ab, one_minus = self._alpha_bar(alpha_bar, x_t)
        means_t = ab.sqrt() * m[None]  # [B|1, K, D]
        var_t = ab * v[None] + one_minus  # [B|1, K, D]
        logits = torch.log(w)[None] + self._component_log_prob(x_t, means_t, var_t)  # [B, K]
        mask = self._component_mask(y, x_t)
        if mask is not None:
            logits = logits + mask
        # posterior responsibilities r_k(x_t) = p(k | x_t), via log-softmax (log-sum-exp) so that points far
        # from every mode do not underflow to 0/0.
        log_resp = torch.log_softmax(logits, dim=-1)
        return x_t, m, v, ab, one_minus, means_t, var_t, log_resp

    def responsibilities(self, x_t: Tensor, alpha_bar: AlphaBar = 1.0, y: Optional[Tensor] = None) -> Tensor:
        """p(k | x_t) under the diffused mixture, shape ``[N, K]`` (``alpha_bar = 1``: under the data)."""
        return self._diffused_terms(x_t, alpha_bar, y)[-1].exp()

    def score(self, x_t: Tensor, alpha_bar: AlphaBar, y: Optional[Tensor] = None) -> Tensor:
        """The exact score grad_x log p_t(x_t) = sum_k r_k(x_t) (sqrt(abar) m_k - x_t) / (abar v_k + 1 - abar),
        shape ``[N, D]``. ``y`` (``torch.long`` ``[N]``) optionally conditions on component ``y[i]``
        (``y[i] == K``: the whole mixture)."""
        x_t, m, v, ab, one_minus, means_t, var_t, log_resp = self._diffused_terms(x_t, alpha_bar, y)
        comp_score = (means_t - x_t[:, None, :]) / var_t
        return (log_resp.exp()[..., None] * comp_score).sum(1)

    def posterior_mean_x0(self, x_t: Tensor, alpha_bar: AlphaBar, y: Optional[Tensor] = None) -> Tensor:
        """The MMSE denoiser E[x_0 | x_t], shape ``[N, D]``.

        Within component k, (x_0, x_t) is jointly Gaussian with Cov(x_0, x_t) = sqrt(abar) v_k and
        Var(x_t) = abar v_k + 1 - abar, so (per coordinate)

            E[x_0 | x_t, k] = m_k + sqrt(abar) v_k / (abar v_k + 1 - abar) * (x_t - sqrt(abar) m_k),

        and E[x_0 | x_t] = sum_k p(k | x_t) E[x_0 | x_t, k]. This is the x_0-prediction that minimises the
        squared error, i.e. the optimum of every x_0/eps/v regression loss.
        """
        x_t, m, v, ab, one_minus, means_t, var_t, log_resp = self._diffused_terms(x_t, alpha_bar, y)
        gain = ab.sqrt() * v[None] / var_t
        comp_mean = m[None] + gain * (x_t[:, None, :] - means_t)
        return (log_resp.exp()[..., None] * comp_mean).sum(1)

    def optimal_eps(self, x_t: Tensor, alpha_bar: AlphaBar, y: Optional[Tensor] = None) -> Tensor:
        """E[eps | x_t] = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar), shape ``[N, D]``: the minimiser of
        the simple loss of Ho et al. (2020, eq. 14).

        It is computed as -sqrt(1 - abar) * score (Tweedie's formula), which is algebraically the same but
        has no cancellation or division by zero as abar -> 1 (where it tends to 0 for points near a mode).
        """
        x_t, m, v, ab, one_minus, means_t, var_t, log_resp = self._diffused_terms(x_t, alpha_bar, y)
        comp_eps = one_minus.sqrt() * (x_t[:, None, :] - means_t) / var_t
        return (log_resp.exp()[..., None] * comp_eps).sum(1)


# ----------------------------------------------------------------------------------------------------------
# the "perfect model"
# ----------------------------------------------------------------------------------------------------------


class ExactGMMDenoiser(nn.Module):
    """A Gaussian mixture's exact eps-prediction, called like any ddpm_lite model: ``model(x_t, t, y=None)``.

    ``forward`` returns E[eps | x_t] at abar = ``alphas_cumprod[t]`` (``t`` 0-based ``torch.long`` ``[B]``),
    the minimiser of the simple loss (Ho et al., 2020, eq. 14): a model that has learned perfectly. Use it
    to check samplers and to see how much of a trained model's error is discretisation vs. learning.

    ``y`` is optional: ``y[i] < K`` conditions on component ``y[i]`` (the exact class-conditional model,
    treating each component as a class) and ``y[i] == K`` is the null class (the whole mixture), matching
    the package's null-class convention for classifier-free guidance; ``num_classes`` is ``K``.

    Args:
        mixture: the data distribution.
        alphas_cumprod: ``[T]`` tensor of abar_t, or any object with an ``alphas_cumprod`` attribute (e.g.
            a noise schedule). Stored as a buffer so ``.to(device)`` moves it.

    Not meant for checkpointing (there are no learned parameters), so it has no ``config``.
    """

    def __init__(self, mixture: GaussianMixture, alphas_cumprod):
        super().__init__()
        if not isinstance(mixture, GaussianMixture):
            raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if not isinstance(alphas_cumprod, Tensor) and hasattr(alphas_cumprod, "alphas_cumprod"):
            alphas_cumprod = alphas_cumprod.alphas_cumprod
        ac = torch.as_tensor(alphas_cumprod)
        if ac.dim() != 1 or ac.numel() < 1:
            raise ValueError(f"alphas_cumprod must be a 1-D tensor [T], got shape {tuple(ac.shape)}")
        if not torch.is_floating_point(ac):
            ac = ac.to(torch.float64)
        if not torch.isfinite(ac).all() or (ac < 0).any() or (ac > 1).any():
            raise ValueError("alphas_cumprod must lie in [0, 1]")
        self.mixture = mixture
        self.num_classes = mixture.num_components
        self.register_buffer("alphas_cumprod", ac.detach().clone())

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _alpha_bar_at(self, x_t: Tensor, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.dtype != torch.long:
            raise ValueError(f"t must be a torch.long tensor of shape [B], got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must have shape [{x_t.shape[0]}] (one per sample), got {tuple(t.shape)}")
        if (t < 0).any() or (t >= self.num_timesteps).any():
            raise ValueError(f"t must lie in [0, {self.num_timesteps - 1}], got min {int(t.min())} max {int(t.max())}")
        return self.alphas_cumprod.to(x_t.device)[t.to(x_t.device)]

    def forward(self, x_t: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Exact eps-prediction E[eps | x_t, y], same shape and dtype as ``x_t``."""
        return self.mixture.optimal_eps(x_t, self._alpha_bar_at(x_t, t), y=y)

    def predict_x0(self, x_t: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Exact E[x_0 | x_t, y] at ``alphas_cumprod[t]``."""
        return self.mixture.posterior_mean_x0(x_t, self._alpha_bar_at(x_t, t), y=y)

    def extra_repr(self) -> str:
        m = self.mixture
        return f"num_components={m.num_components}, dim={m.dim}, num_timesteps={self.num_timesteps}"


# ----------------------------------------------------------------------------------------------------------
# one entry point by name
# ----------------------------------------------------------------------------------------------------------

TOY_NAMES: Sequence[str] = ("moons", "swiss_roll", "ring", "grid")


def sample_toy(name: str, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False, **kwargs):
    """Sample ``n`` points of a named 2D toy: ``"moons"``, ``"swiss_roll"``, ``"ring"`` (8 Gaussians) or
    ``"grid"`` (3x3 Gaussians). Extra keyword arguments go to the maker / preset. Labels: the moon, the
    position along the roll, or the mixture component."""
    if name == "moons":
        return make_moons(n, generator=generator, return_labels=return_labels, **kwargs)
    if name == "swiss_roll":
        return make_swiss_roll(n, generator=generator, return_labels=return_labels, **kwargs)
    if name == "ring":
        return GaussianMixture.ring(**kwargs).sample(n, generator=generator, return_labels=return_labels)
    if name == "grid":
        return GaussianMixture.grid(**kwargs).sample(n, generator=generator, return_labels=return_labels)
    raise ValueError(f"unknown toy {name!r}; expected one of {list(TOY_NAMES)}")
