"""`GaussianDiffusion`: the forward process q, the reverse process p, the losses and the variational bound;
`bits_per_dim`: that bound averaged over a set of images (or estimated from a few timesteps).

This is the class the course's source material reads line by line. Method names follow Ho et al.'s reference
implementation (`q_sample`, `q_posterior_mean_variance`, `p_mean_variance`, `p_sample`, `training_losses`);
equation numbers refer to Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", unless noted.

Timesteps are 0-based: index t is the paper's step t+1, so x at index t is x_{t+1} in the paper. The last
index T−1 is the most noisy; index 0 is one step away from the data.

A model is called as `model(x_t, t, y)` and returns, depending on `parameterization`:
  "eps": the noise ε (Ho et al. 2020), "x0": the clean image x_0, "v": v = √ᾱ ε − √(1−ᾱ) x_0
  (Salimans & Ho 2022, §4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .conditioning import call_model, is_conditioning
from .device import model_device
from .losses import discretized_gaussian_log_likelihood, mean_flat, min_snr_weight, normal_kl
from .models import eval_mode
from .schedules import NoiseSchedule

PARAMETERIZATIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large")
LOSS_TYPES = ("l2", "l1", "huber")
TIMESTEP_SAMPLINGS = ("uniform", "importance")
THRESHOLDS = (None, "static", "dynamic")


def _choose(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(map(repr, allowed))}")


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Clip x̂_0 to the data range [−1, 1] (Ho et al. 2020's `clip_denoised`)."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3).

    Per sample, s = max(1, the `percentile` quantile of |x̂_0|); then x̂_0 ← clip(x̂_0, −s, s) / s. Saturated
    pixels are pushed inwards instead of piling up at ±1, which keeps large guidance weights usable.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def null_labels(model, like: torch.Tensor) -> torch.Tensor:
    """Labels of the learned null class (index `num_classes`) for classifier-free guidance."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and isinstance(getattr(model, "config", None), dict):
        num_classes = model.config.get("num_classes")
    if num_classes is None:
        raise ValueError(
            "classifier-free guidance needs a class-conditional model (num_classes set, with a null class); "
            "this model is unconditional: use guidance=0"
        )
    return torch.full((like.shape[0],), int(num_classes), dtype=torch.long, device=like.device)


class GaussianDiffusion:
    """DDPM's Gaussian diffusion over a fixed noise schedule (Ho et al. 2020).

    Args:
        schedule: a `NoiseSchedule`, or the name of one ("linear", "cosine", "sigmoid").
        timesteps: T, when `schedule` is a name.
        parameterization: what the model predicts: "eps", "x0" or "v".
        variance: σ_t² of the reverse process: "fixed_small" = β̃_t, "fixed_large" = β_t (§3.2; both tried in
            the paper, same sample quality; fixed_large gives the better bound).
        loss_type: "l2" (with ε and no weighting: L_simple, eq. 14), "l1" or "huber" on the model output.
        min_snr_gamma: if set, weight the loss with min-SNR-γ (Hang et al. 2023), γ = 5 in the paper; None =
            unweighted. `Trainer` sets it by default (`TrainConfig.min_snr_gamma="auto"`: 1 for digits, else 5).
        data_levels: grey levels of the data, for the discretized decoder L_0 and bits/dim: 256 for 8-bit
            images, 17 for scikit-learn's digits.
        timestep_sampling: how `training_losses` draws t when not given one. "uniform": t ~ U{0…T−1} times
            the loss weight w(t) (Algorithm 1). "importance": t ~ p(t) ∝ w(t) times the constant mean weight,
            the same objective in expectation (Σ_t w(t) L(t) / T either way) with less gradient noise, because
            no sample is spent on a timestep whose weight is nearly 0 (with min-SNR γ = 1, t < 100 weighs
            < 0.1). Needs `min_snr_gamma` (without a weight the two are the same thing).
    """

    def __init__(
        self,
        schedule: NoiseSchedule | str = "linear",
        timesteps: int = 1000,
        parameterization: str = "eps",
        variance: str = "fixed_small",
        loss_type: str = "l2",
        min_snr_gamma: float | None = None,
        huber_delta: float = 0.1,
        data_levels: int = 256,
        timestep_sampling: str = "uniform",
    ):
        _choose("parameterization", parameterization, PARAMETERIZATIONS)
        _choose("variance", variance, VARIANCES)
        _choose("loss_type", loss_type, LOSS_TYPES)
        _choose("timestep_sampling", timestep_sampling, TIMESTEP_SAMPLINGS)
        if isinstance(schedule, str):
            schedule = NoiseSchedule(schedule, timesteps)
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule or a schedule name, got {type(schedule).__name__}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive or None, got {min_snr_gamma}")
        self.schedule = schedule
        self.num_timesteps = schedule.num_timesteps
        self.parameterization = parameterization
        self.variance = variance
        self.loss_type = loss_type
        self.min_snr_gamma = min_snr_gamma
        self.huber_delta = huber_delta
        self.data_levels = int(data_levels)
        self.timestep_sampling = timestep_sampling

    # -- configuration -------------------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        if self.schedule.name == "custom":
            raise ValueError("a diffusion over custom betas has no config: use a named schedule to save it")
        return {
            "schedule": self.schedule.name,
            "timesteps": self.num_timesteps,
            "parameterization": self.parameterization,
            "variance": self.variance,
            "loss_type": self.loss_type,
            "min_snr_gamma": self.min_snr_gamma,
            "huber_delta": self.huber_delta,
            "data_levels": self.data_levels,
            "timestep_sampling": self.timestep_sampling,
        }

    @classmethod
    def from_config(cls, config: dict) -> "GaussianDiffusion":
        return cls(**config)

    def to(self, device=None) -> "GaussianDiffusion":
        """Keep the schedule's tables on `device` (they stay float64; every method casts to x's dtype)."""
        self.schedule.to(device)
        return self

    @property
    def loss_label(self) -> str:
        """What `training_losses` computes, in words, for plot labels and logs: "L_simple (…)" only when it *is*
        L_simple (ε-model, l2, no min-SNR weighting), else e.g. "min-SNR-γ-weighted ε MSE (γ=1)"."""
        target = {"eps": "ε", "x0": "x_0", "v": "v"}[self.parameterization]
        error = {"l2": "MSE", "l1": "L1 error", "huber": "Huber loss"}[self.loss_type]
        if self.min_snr_gamma is None:
            if self.parameterization == "eps" and self.loss_type == "l2":
                return "L_simple (unweighted ε MSE, Ho et al. eq. 14)"
            return f"unweighted {target} {error}"
        return f"min-SNR-γ-weighted {target} {error} (γ={self.min_snr_gamma:g})"

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(schedule={self.schedule.name!r}, T={self.num_timesteps}, "
            f"parameterization={self.parameterization!r}, variance={self.variance!r}, loss={self.loss_type!r}, "
            f"min_snr_gamma={self.min_snr_gamma!r}"
            + (f", timestep_sampling={self.timestep_sampling!r})" if self.timestep_sampling != "uniform" else ")")
        )

    # -- input checks --------------------------------------------------------------------------------------

    def _extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.schedule.extract(name, t, like)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, name: str = "x") -> None:
        """Raise a `ValueError` that names the expected and the given value for a bad (x, t) pair."""
        if not torch.is_tensor(x):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor (data scaled to [-1, 1]), got dtype {x.dtype}")
        if x.ndim < 2:
            raise ValueError(f"{name} must have a batch dimension: expected shape [B, ...], got {tuple(x.shape)}")
        if not torch.is_tensor(t):
            raise ValueError(f"t must be a torch.Tensor of timestep indices, got {type(t).__name__}")
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"t must hold integer timestep indices (torch.long), got dtype {t.dtype}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}] (one timestep per sample), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"t must lie in [0, {self.num_timesteps - 1}] (0-based, T = {self.num_timesteps}), "
                f"got values from {int(t.min())} to {int(t.max())}"
            )

    def _check_same_shape(self, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        if a.shape != b.shape:
            raise ValueError(f"{what}: expected shape {tuple(a.shape)}, got {tuple(b.shape)}")

    def _noise(self, x: torch.Tensor, noise, generator) -> torch.Tensor:
        if noise is None:
            return randn_like(x, generator)
        self._check_same_shape(x, noise, "noise must have the shape of x0")
        return noise

    def sample_timesteps(self, batch_size: int, device=None, generator=None) -> torch.Tensor:
        """t ~ Uniform{0, …, T−1} (Algorithm 1, line 3)."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=gen_device)
        return t.to(device)

    def loss_weights(self) -> torch.Tensor:
        """w(t) for every t [T] (float64): the min-SNR-γ weight of `training_losses`, or ones without it."""
        snr = self.schedule.snr
        if self.min_snr_gamma is None:
            return torch.ones_like(snr)
        return min_snr_weight(snr, self.min_snr_gamma, self.parameterization)

    def sample_weighted_timesteps(self, batch_size: int, device=None, generator=None):
        """Importance sampling of the weighted loss: t ~ p(t) = w(t) / Σw and the constant weight mean(w), so
        that E_p[mean(w) L(t)] = Σ_t w(t) L(t) / T = E_uniform[w(t) L(t)]. Returns (t, weight [B])."""
        w = self.loss_weights()
        gen_device = generator.device if generator is not None else device
        t = torch.multinomial(w.to(gen_device).float(), batch_size, replacement=True, generator=generator)
        weight = torch.full((batch_size,), float(w.mean()), device=device)
        return t.to(device), weight

    # -- the forward process q -----------------------------------------------------------------------------

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, generator=None):
        """One forward step x_{t−1} → x_t ~ q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I)  (eq. 2)."""
        self.check_inputs(x_prev, t, "x_prev")
        noise = self._noise(x_prev, noise, generator)
        beta = self._extract("betas", t, x_prev)
        return torch.sqrt(1.0 - beta) * x_prev + torch.sqrt(beta) * noise

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I)  (eq. 4)."""
        self.check_inputs(x0, t, "x0")
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._extract("sqrt_one_minus_alphas_cumprod", t, x0) ** 2
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x0)
        return mean, variance.expand_as(x0), log_variance.expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, generator=None):
        """Jump straight to x_t ~ q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε  (eq. 4).

        The source material calls this `perturb_x`.
        """
        self.check_inputs(x0, t, "x0")
        noise = self._noise(x0, noise, generator)
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I)  (eqs. 6–7).

        μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t,  β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t.
        Returns (mean, variance, log-variance clipped at t = 0 where β̃ = 0).
        """
        self.check_inputs(xt, t, "xt")
        self._check_same_shape(xt, x0, "x0 must have the shape of xt")
        mean = self._extract("posterior_mean_coef1", t, xt) * x0 + self._extract("posterior_mean_coef2", t, xt) * xt
        variance = self._extract("posterior_variance", t, xt).expand_as(xt)
        log_variance = self._extract("posterior_log_variance_clipped", t, xt).expand_as(xt)
        return mean, variance, log_variance

    # -- parameterizations: ε, x_0 and v -------------------------------------------------------------------

    def predict_x0_from_eps(self, xt, t, eps):
        """x_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε  (eq. 4 solved for x_0)."""
        return self._extract("sqrt_recip_alphas_cumprod", t, xt) * xt - self._extract(
            "sqrt_recipm1_alphas_cumprod", t, xt
        ) * eps

    def predict_eps_from_x0(self, xt, t, x0):
        """ε = (√(1/ᾱ_t) x_t − x_0) / √(1/ᾱ_t − 1)  (eq. 4 solved for ε)."""
        return (self._extract("sqrt_recip_alphas_cumprod", t, xt) * xt - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, xt
        )

    def get_v(self, x0, eps, t):
        """v = √ᾱ_t ε − √(1−ᾱ_t) x_0  (Salimans & Ho 2022, §4)."""
        return self._extract("sqrt_alphas_cumprod", t, x0) * eps - self._extract(
            "sqrt_one_minus_alphas_cumprod", t, x0
        ) * x0

    def predict_x0_from_v(self, xt, t, v):
        """x_0 = √ᾱ_t x_t − √(1−ᾱ_t) v  (Salimans & Ho 2022, §4)."""
        return self._extract("sqrt_alphas_cumprod", t, xt) * xt - self._extract(
            "sqrt_one_minus_alphas_cumprod", t, xt
        ) * v

    def predict_eps_from_v(self, xt, t, v):
        """ε = √(1−ᾱ_t) x_t + √ᾱ_t v  (Salimans & Ho 2022, §4)."""
        return self._extract("sqrt_one_minus_alphas_cumprod", t, xt) * xt + self._extract(
            "sqrt_alphas_cumprod", t, xt
        ) * v

    def training_target(self, x0, eps, t):
        """What the model should output at (x_t, t): ε, x_0 or v, by `parameterization`."""
        if self.parameterization == "eps":
            return eps
        if self.parameterization == "x0":
            return x0
        return self.get_v(x0, eps, t)

    def output_to_x0_eps(self, output, xt, t):
        """Turn a raw model output (in this diffusion's parameterization) into (x̂_0, ε̂)."""
        if self.parameterization == "eps":
            return self.predict_x0_from_eps(xt, t, output), output
        if self.parameterization == "x0":
            return output, self.predict_eps_from_x0(xt, t, output)
        return self.predict_x0_from_v(xt, t, output), self.predict_eps_from_v(xt, t, output)

    # -- calling the model ---------------------------------------------------------------------------------

    def model_output(self, model, xt, t, y=None, guidance: float = 0.0):
        """The model's raw output, with classifier-free guidance when `guidance` = w ≠ 0.

        Guidance (Ho & Salimans 2021, eq. 6): ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅). Other libraries write
        a "guidance scale" s = 1 + w (ε̃ = ε_∅ + s (ε_c − ε_∅)), so w = 0 (s = 1) is the plain conditional
        model. The combination is affine with weights summing to one, so it is applied to the raw output in
        any parameterization. The two passes run as one batch of 2B.
        """
        if guidance == 0.0 or y is None:
            if guidance != 0.0:
                raise ValueError("guidance needs class labels y: pass y, or use guidance=0")
            out = call_model(model, xt, t, y)
        else:
            # conditional and unconditional in one batch: the null class, or a conditioning object's null
            # (for text: the empty prompt, Stable Diffusion's unconditional branch)
            pair = y.cat(y.null()) if is_conditioning(y) else torch.cat([y, null_labels(model, y)])
            both = call_model(model, torch.cat([xt, xt]), torch.cat([t, t]), pair)
            cond, uncond = both.chunk(2)
            out = (1.0 + guidance) * cond - guidance * uncond
        if out.shape != xt.shape:
            raise ValueError(f"the model must return a tensor shaped like x_t {tuple(xt.shape)}, got {tuple(out.shape)}")
        return out

    def model_predictions(
        self, model, xt, t, y=None, guidance: float = 0.0, threshold: str | None = None, percentile: float = 0.995
    ):
        """(x̂_0, ε̂) from the model, with x̂_0 optionally thresholded ("static" or "dynamic").

        When x̂_0 is thresholded, ε̂ is recomputed from it so the two stay consistent (every sampler then
        moves towards the thresholded x̂_0).
        """
        _choose("threshold", threshold, THRESHOLDS)
        self.check_inputs(xt, t, "xt")
        x0, eps = self.output_to_x0_eps(self.model_output(model, xt, t, y, guidance), xt, t)
        if threshold is not None:
            x0 = static_threshold(x0) if threshold == "static" else dynamic_threshold(x0, percentile)
            eps = self.predict_eps_from_x0(xt, t, x0)
        return x0, eps

    # -- the reverse process p -----------------------------------------------------------------------------

    def model_log_variance(self, t, like):
        """log σ_t² of p_θ(x_{t−1}|x_t): log β̃_t ("fixed_small") or log β_t ("fixed_large", §3.2).

        For "fixed_large" the first step uses β̃ at index 1 instead of β_1, as in Ho et al.'s code, so that
        the decoder L_0 has a sensible variance.
        """
        log_var = self._extract("posterior_log_variance_clipped", t, like)
        if self.variance == "fixed_large":
            log_beta = torch.log(self._extract("betas", t, like))
            log_var = torch.where(t.reshape(log_var.shape) == 0, log_var, log_beta)
        return log_var

    def _sigma2_table(self) -> torch.Tensor:
        """σ_t² of p_θ for every t (float64), as chosen by `variance` (see `model_log_variance`)."""
        s = self.schedule
        if self.variance == "fixed_small":
            return s.posterior_variance
        sigma2 = s.betas.clone()
        sigma2[0] = s.posterior_variance[1]
        return sigma2

    def vlb_eps_weight(self, t: torch.Tensor) -> torch.Tensor:
        """λ_t of Ho et al. 2020, eq. 12: L_{t−1} = λ_t E‖ε − ε_θ(x_t, t)‖² + C_t per dimension (nats), with
        λ_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t)). `L_simple` (eq. 14) drops this weight (λ_t := 1). float64, shape of t.
        Defined for t ≥ 1 (index 0 is the decoder term L_0, not a KL): index 0 gives NaN."""
        s = self.schedule
        table = s.betas ** 2 / (2 * self._sigma2_table() * s.alphas * (1 - s.alphas_cumprod))
        table[0] = float("nan")
        return table.to(t.device)[t]

    def vlb_constant(self, t: torch.Tensor) -> torch.Tensor:
        """C_t of eq. 12 (nats per dimension): KL(N(μ̃, β̃_t) ‖ N(μ̃, σ_t²)) = ½(log(σ_t²/β̃_t) + β̃_t/σ_t² − 1);
        zero for σ_t² = β̃_t. float64, shape of t."""
        s = self.schedule
        sigma2 = self._sigma2_table()
        table = 0.5 * (torch.log(sigma2 / s.posterior_variance) + s.posterior_variance / sigma2 - 1)
        table[0] = 0.0  # t = 0 is the decoder L_0, not a KL term
        return table.to(t.device)[t]

    def p_mean_variance(
        self, model, xt, t, y=None, clip_denoised: bool = True, guidance: float = 0.0, threshold: str | None = None
    ):
        """p_θ(x_{t−1} | x_t) = N(μ_θ(x_t, t), σ_t² I)  (eq. 1 with §3.2).

        μ_θ is the posterior mean μ̃_t(x̂_0, x_t) of eq. 7 with the model's x̂_0 plugged in; for an ε-model
        and no clipping this equals eq. 11, μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t. `clip_denoised` clips x̂_0
        to [−1, 1] (Ho et al.'s default); `threshold` overrides it ("static", "dynamic" or None).
        Returns a dict: mean, variance, log_variance, pred_x0, eps.
        """
        if threshold is None and clip_denoised:
            threshold = "static"
        x0, eps = self.model_predictions(model, xt, t, y, guidance, threshold)
        mean, _, _ = self.q_posterior_mean_variance(x0, xt, t)
        log_variance = self.model_log_variance(t, xt).expand_as(xt)
        return {"mean": mean, "variance": log_variance.exp(), "log_variance": log_variance, "pred_x0": x0, "eps": eps}

    def p_sample(self, model, xt, t, y=None, clip_denoised: bool = True, guidance: float = 0.0,
                 threshold: str | None = None, generator=None, noise=None):
        """One ancestral step x_t → x_{t−1} ~ p_θ(x_{t−1}|x_t)  (Algorithm 2, line 4; no noise at t = 0).

        The source material calls this `remove_noise` (plus the added noise). Returns a dict: sample, pred_x0.
        """
        out = self.p_mean_variance(model, xt, t, y, clip_denoised, guidance, threshold)
        noise = self._noise(xt, noise, generator)
        nonzero = (t != 0).to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    # -- training ------------------------------------------------------------------------------------------

    def training_losses(self, model, x0, t=None, noise=None, y=None, generator=None):
        """The training loss per sample (Algorithm 1): L_simple of eq. 14 for an ε-model with l2 and
        `min_snr_gamma=None`; with `min_snr_gamma` set, each sample's loss is multiplied by the min-SNR-γ weight
        (`losses.min_snr_weight`), which is no longer L_simple (`loss_label` says which it is).

        Draws t ~ U{0…T−1} and ε ~ N(0, I) unless given, forms x_t = q_sample(x0, t, ε), and compares the
        model output to its target (ε, x_0 or v) with `loss_type`, optionally weighted by min-SNR-γ.
        The source material calls this `get_losses`. Returns a dict: loss [B], t, x_t, target, output.
        """
        weight = None  # None: w(t) (below); importance sampling: the constant mean weight
        if t is None and self.timestep_sampling == "importance" and self.min_snr_gamma is not None:
            t, weight = self.sample_weighted_timesteps(x0.shape[0], x0.device, generator)
        elif t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        self.check_inputs(x0, t, "x0")
        noise = self._noise(x0, noise, generator)
        xt = self.q_sample(x0, t, noise)
        output = call_model(model, xt, t, y)
        if output.shape != x0.shape:
            raise ValueError(f"the model must return a tensor shaped like x_t {tuple(x0.shape)}, got {tuple(output.shape)}")
        target = self.training_target(x0, noise, t)
        if self.loss_type == "l2":
            loss = mean_flat((output - target) ** 2)
        elif self.loss_type == "l1":
            loss = mean_flat((output - target).abs())
        else:
            loss = mean_flat(F.huber_loss(output, target, reduction="none", delta=self.huber_delta))
        if weight is not None:
            loss = loss * weight.to(loss.dtype)
        elif self.min_snr_gamma is not None:
            snr = self.schedule.snr.to(t.device)[t].to(loss.dtype)
            loss = loss * min_snr_weight(snr, self.min_snr_gamma, self.parameterization)
        return {"loss": loss, "t": t, "x_t": xt, "target": target, "output": output}

    # -- the variational bound (eq. 5), in bits per dimension ----------------------------------------------

    def prior_bpd(self, x0):
        """L_T = KL(q(x_T|x_0) ‖ N(0, I)) per sample, in bits/dim. No parameters: ≈ 0 for a good schedule."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        kl = normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))
        return mean_flat(kl) / math.log(2.0)

    def vb_terms_bpd(self, model, x0, xt, t, y=None, clip_denoised: bool = True):
        """One term of the bound per sample, in bits/dim: L_{t−1} (a KL, eq. 5) for t > 0, L_0 at t = 0.

        L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)) between two Gaussians; L_0 = −log p_θ(x_0|x_1),
        the discretized Gaussian decoder of eq. 13 over `data_levels` grey levels.
        Returns a dict: output [B] (bits/dim) and pred_x0.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, xt, t)
        out = self.p_mean_variance(model, xt, t, y, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x0, out["mean"], 0.5 * out["log_variance"], levels=self.data_levels
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_x0": out["pred_x0"]}

    @torch.no_grad()
    def calc_bpd_loop(self, model, x0, y=None, clip_denoised: bool = True, generator=None, progress: bool = False):
        """The full variational bound −log p(x_0) ≤ L_T + Σ_t L_{t−1} + L_0 per sample, in bits/dim.

        Runs the model once per timestep (T calls for a batch). Returns a dict: total_bpd [B], prior_bpd [B],
        vb [B, T] (term t is L_{t−1} in the paper's numbering, L_0 at t = 0), mse [B, T] of x̂_0.
        `bits/dim = NLL / (D · ln 2)`; data must lie on the `data_levels` grid in [−1, 1]. x̂_0 is clipped
        to [−1, 1] by default, as in Ho et al.'s `calc_bpd_loop`.
        """
        from tqdm.auto import tqdm

        batch = x0.shape[0]
        vb, mse = [], []
        steps = range(self.num_timesteps - 1, -1, -1)
        for i in tqdm(steps, desc="bits/dim", disable=not progress, leave=False):
            t = torch.full((batch,), i, dtype=torch.long, device=x0.device)
            xt = self.q_sample(x0, t, generator=generator)
            terms = self.vb_terms_bpd(model, x0, xt, t, y, clip_denoised)
            vb.append(terms["output"])
            mse.append(mean_flat((terms["pred_x0"] - x0) ** 2))
        vb = torch.stack(vb[::-1], dim=1)
        mse = torch.stack(mse[::-1], dim=1)
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb, "mse": mse}


# -- the bound over a dataset: what `calc_bpd_loop` gives per batch, averaged, or estimated from K timesteps ---


@torch.no_grad()
def bits_per_dim(model, diffusion, images, labels=None, batch_size: int = 256, timesteps: int | None = None,
                 clip_denoised: bool = True, generator: torch.Generator | None = None, progress: bool = True,
                 return_all: bool = False):
    """Negative log-likelihood bound in bits/dim, averaged over `images` (Ho et al. 2020, eq. 5 and §4.2):

        L = L_T + Σ_{t>1} L_{t−1} + L_0,   bits/dim = L / (D · ln 2).

    `timesteps=None` evaluates every term (`diffusion.calc_bpd_loop`: T model calls per batch). An int K
    estimates the sum from K timesteps instead: L_0 exactly, plus one random t from each of K−1 equal strata of
    the other T−1 steps weighted by the stratum size (an unbiased, stratified Monte-Carlo estimate; much faster
    on a CPU, noisier). `labels` are passed as `y` (None: the null class for a class-conditional model).
    Returns the mean bits/dim (float), or with `return_all` the per-image tensor [N].
    """
    from tqdm.auto import tqdm

    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError(f"images: expected a float tensor B×C×H×W in [-1, 1], got {type(images).__name__}")
    n, num_t = images.shape[0], diffusion.num_timesteps
    if labels is not None:
        labels = torch.full((n,), labels) if isinstance(labels, int) else torch.as_tensor(labels).to("cpu")
        if labels.is_floating_point() or labels.shape != (n,):
            raise ValueError(f"labels: expected {n} integer class labels (shape [{n}]) or one int, "
                             f"got dtype {labels.dtype}, shape {list(labels.shape)}")
        labels = labels.long()
    if timesteps is not None and not 2 <= int(timesteps) <= num_t:
        raise ValueError(f"timesteps: expected None (all) or an int in [2, {num_t}], got {timesteps}")
    device = model_device(model, default=images.device)
    results = []
    with eval_mode(model):
        for i in tqdm(range(0, n, batch_size), desc="bits/dim", disable=not progress):
            x0 = images[i:i + batch_size].to(device)
            y = labels[i:i + batch_size].to(device) if labels is not None else None
            if timesteps is None:
                total = diffusion.calc_bpd_loop(model, x0, y=y, clip_denoised=clip_denoised,
                                                generator=generator)["total_bpd"]
            else:
                total = _bpd_stratified(model, diffusion, x0, y, int(timesteps), clip_denoised, generator)
            results.append(total.detach().to("cpu", torch.float64))
    per_image = torch.cat(results)
    return per_image if return_all else float(per_image.mean())


def _bpd_stratified(model, diffusion, x0, y, k: int, clip_denoised: bool, generator) -> torch.Tensor:
    b, num_t = x0.shape[0], diffusion.num_timesteps
    total = diffusion.prior_bpd(x0).double()
    edges = torch.linspace(1, num_t, k).round().long().tolist()  # k−1 strata covering [1, T)
    points = [(0, 1.0)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            t = lo + int(torch.randint(0, hi - lo, (1,), generator=generator))
            points.append((t, float(hi - lo)))
    for t, weight in points:
        tt = torch.full((b,), t, dtype=torch.long, device=x0.device)
        xt = diffusion.q_sample(x0, tt, generator=generator)
        total = total + weight * diffusion.vb_terms_bpd(model, x0, xt, tt, y, clip_denoised)["output"].double()
    return total


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like x; drawn from `generator` (on its own device) when given."""
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def randn(shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) noise; with a generator on another device (say a CPU generator for CUDA tensors) the noise is
    drawn there and moved, so a seed gives the same numbers on every device."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    return noise.to(device)
