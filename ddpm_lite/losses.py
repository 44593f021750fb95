"""Log-likelihood pieces of the variational bound, and loss weightings.

Everything here works elementwise on tensors; `mean_flat` then averages over all but the batch dimension.
"""

from __future__ import annotations

import math

import torch


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (the batch)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats.

    The closed form used for the L_{t−1} terms of the bound (Ho et al. 2020, eq. 5): both q(x_{t−1}|x_t, x_0)
    and p_θ(x_{t−1}|x_t) are Gaussians with diagonal covariance.
    """
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v) for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x), the CDF of N(0, 1), through erf (accurate far into the tails)."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, levels: int = 256
) -> torch.Tensor:
    """log p(x) of data on `levels` evenly spaced grey levels in [−1, 1] under N(means, e^{2·log_scales}).

    The decoder L_0 = −log p_θ(x_0|x_1) of Ho et al. 2020, eq. 13: each level owns a bin of width 2/(levels−1)
    centred on it; the outermost bins reach to −∞ and +∞, so the probabilities of all levels sum to one.
    `levels` = 256 for 8-bit images, 17 for scikit-learn's digits (values 0…16).
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if x.shape != means.shape:
        raise ValueError(f"x and means must have the same shape, got {tuple(x.shape)} and {tuple(means.shape)}")
    half_bin = 1.0 / (levels - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = standard_normal_cdf(inv_std * (centered + half_bin))
    cdf_minus = standard_normal_cdf(inv_std * (centered - half_bin))
    tiny = 1e-12
    log_cdf_plus = torch.log(cdf_plus.clamp(min=tiny))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=tiny))
    log_cdf_delta = torch.log((cdf_plus - cdf_minus).clamp(min=tiny))
    edge = 1.0 - half_bin  # x at the lowest level is below −edge, at the highest above +edge
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_minus, log_cdf_delta))


def min_snr_weight(snr: torch.Tensor, gamma: float, parameterization: str = "eps") -> torch.Tensor:
    """Min-SNR-γ loss weight (Hang et al. 2023, eq. 9 and §3.4), per sample.

    The weight on the x_0-space error is min(SNR, γ). Expressed for the loss on each output:
    ε: min(SNR, γ)/SNR;  x_0: min(SNR, γ);  v: min(SNR, γ)/(SNR + 1).
    """
    clipped = torch.clamp(snr, max=gamma)
    if parameterization == "eps":
        return clipped / snr
    if parameterization == "x0":
        return clipped
    if parameterization == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"unknown parameterization {parameterization!r}: expected 'eps', 'x0' or 'v'")
