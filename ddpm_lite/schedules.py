"""Noise schedules: the β_t sequence and every coefficient derived from it.

A `NoiseSchedule` holds, as float tensors of length T (index t = 0 … T−1 is the paper's step t+1):

    betas                         β_t
    alphas                        α_t = 1 − β_t
    alphas_cumprod                ᾱ_t = ∏_{s≤t} α_s                       (Ho et al. 2020, eq. 4)
    alphas_cumprod_prev           ᾱ_{t−1}, with ᾱ_0 := 1 before the first step
    sqrt_alphas_cumprod           √ᾱ_t
    sqrt_one_minus_alphas_cumprod √(1 − ᾱ_t)
    log_one_minus_alphas_cumprod  log(1 − ᾱ_t)
    sqrt_recip_alphas_cumprod     √(1/ᾱ_t)
    sqrt_recipm1_alphas_cumprod   √(1/ᾱ_t − 1)
    posterior_variance            β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)      (eq. 7)
    posterior_log_variance_clipped log β̃_t, with β̃ at t=0 (which is 0) replaced by β̃ at t=1
    posterior_mean_coef1          √ᾱ_{t−1} β_t / (1 − ᾱ_t)                (eq. 7, the x_0 coefficient)
    posterior_mean_coef2          √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)           (eq. 7, the x_t coefficient)
    snr                           SNR(t) = ᾱ_t / (1 − ᾱ_t)

The coefficients are computed once in float64 and then cast, so float32 users get the correctly rounded
values. The names follow Ho et al.'s reference implementation (`diffusion_utils_2.py`).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine", "sigmoid")

_COEFFICIENTS = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "snr",
)


def linear_beta_schedule(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                         max_beta: float = 0.999) -> torch.Tensor:
    """β linear from 1e-4 to 0.02 at T = 1000 (Ho et al. 2020, §4).

    For other T the endpoints are scaled by 1000/T, so that the total amount of noise (and ᾱ_T ≈ 0) stays
    about the same: a T = 100 schedule takes ten times bigger steps. Below T = 20 the scaled β would reach 1
    or more (ᾱ ≤ 0, NaNs downstream), so β is clipped at `max_beta` as in the cosine schedule.
    """
    scale = 1000.0 / timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def cosine_beta_schedule(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2), β_t = 1 − ᾱ_t/ᾱ_{t−1}, clipped at `max_beta`
    so the last steps do not become singular.
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(min=0.0, max=max_beta)


def sigmoid_beta_schedule(
    timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> torch.Tensor:
    """Sigmoid schedule (Jabri, Fleet & Chen 2022, "Scalable adaptive computation", Alg. 1).

    ᾱ(t) follows a rescaled sigmoid of t/T between `start` and `end`; it keeps more signal early and then
    drops faster than cosine. It is often preferred for larger images.
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alphas_cumprod = (-torch.sigmoid((steps * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(min=0.0, max=max_beta)


def make_betas(name: str, timesteps: int) -> torch.Tensor:
    """β_1 … β_T (float64) of the named schedule."""
    if not isinstance(timesteps, int) or timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
    if name == "linear":
        return linear_beta_schedule(timesteps)
    if name == "cosine":
        return cosine_beta_schedule(timesteps)
    if name == "sigmoid":
        return sigmoid_beta_schedule(timesteps)
    raise ValueError(f"unknown noise schedule {name!r}: expected one of {', '.join(SCHEDULES)}")


class NoiseSchedule:
    """Every coefficient of a DDPM noise schedule, derived once from β (see the module docstring).

    >>> s = NoiseSchedule("linear", 1000)
    >>> float(s.alphas_cumprod[-1]) < 1e-4
    True
    """

    def __init__(self, name: str = "linear", timesteps: int = 1000, betas: torch.Tensor | None = None):
        if betas is None:
            betas = make_betas(name, timesteps)
        else:
            name = "custom"
            betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if (betas <= 0).any() or (betas >= 1).any():
                raise ValueError("custom betas must all lie strictly between 0 and 1")
        self.name = name
        self.num_timesteps = int(betas.shape[0])
        self._set(self._derive(betas))

    @staticmethod
    def _derive(betas: torch.Tensor) -> dict[str, torch.Tensor]:
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # β̃ is 0 at the first step; the log is clipped to β̃ at the second step, as in Ho et al.'s code.
        posterior_log_variance_clipped = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        )
        return {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
            "snr": alphas_cumprod / (1.0 - alphas_cumprod),
        }

    def _set(self, coefficients: dict[str, torch.Tensor]) -> None:
        for key, value in coefficients.items():
            setattr(self, key, value)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        return self.betas.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "NoiseSchedule":
        """Move (and cast) every coefficient in place, like `nn.Module.to`; returns self."""
        for key in _COEFFICIENTS:
            setattr(self, key, getattr(self, key).to(device=device, dtype=dtype))
        return self

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Coefficient `name` at timesteps `t` ([B]), shaped [B, 1, …, 1] with the device and dtype of `like`."""
        values = getattr(self, name).to(t.device)[t]
        return values.to(like.dtype).reshape(t.shape[0], *([1] * (like.ndim - 1)))

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule({self.name!r}, T={self.num_timesteps}, "
            f"alpha_bar_T={float(self.alphas_cumprod[-1]):.3g}, dtype={self.dtype}, device={self.device})"
        )
