"""The checks of notebook 07 pass the reference solutions and reject typical mistakes."""

import math

import numpy as np
import pytest
import torch

from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb07
from ddpm_lite.samplers import timestep_sequence

# tiny tensors: one thread is fastest, and the machine's cores are shared
pytestmark = pytest.mark.usefixtures("one_thread")


# -- exercise 1: the DDIM σ --------------------------------------------------------------------------------------

def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * math.sqrt(1 - alpha_bar_t / alpha_bar_prev)


def test_ddim_sigma_reference_passes(capsys):
    nb07.check_ddim_sigma(ddim_sigma)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda a, p, eta: ddim_sigma(a, p, eta) ** 2, "variance"),
        (lambda a, p, eta: eta * (1 - p) / (1 - a) * (1 - a / p), "variance"),
        (lambda a, p, eta: math.sqrt(eta) * ddim_sigma(a, p, 1.0), "not σ²"),
        (lambda a, p, eta: eta * math.sqrt((1 - a) / (1 - p) * (1 - a / p)), "less"),
        (lambda a, p, eta: eta * math.sqrt(1 - a / p), "forgot"),
        (lambda a, p, eta: ddim_sigma(a, p, 1.0), "η = 0"),
        (lambda a, p, eta: eta * math.sqrt(1 - a), "expected"),
        (lambda a, p, eta: "sigma", "number"),
    ],
)
def test_ddim_sigma_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb07.check_ddim_sigma(wrong)


def test_ddim_sigma_reports_not_implemented():
    def todo(a, p, eta):
        raise NotImplementedError()

    with pytest.raises(ExerciseError, match="NotImplementedError"):
        nb07.check_ddim_sigma(todo)


# -- exercise 2: one DDIM step -----------------------------------------------------------------------------------

def ddim_step(x0_hat, eps_hat, alpha_bar_prev, sigma, z):
    return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps_hat + sigma * z


def test_ddim_step_reference_passes(capsys):
    nb07.check_ddim_step(ddim_step)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x0, e, a, s, z: math.sqrt(a) * x0 + math.sqrt(1 - a) * e + s * z, "room for the fresh noise"),
        (lambda x0, e, a, s, z: a * x0 + math.sqrt(1 - a - s ** 2) * e + s * z, "not ᾱ_prev"),
        (lambda x0, e, a, s, z: math.sqrt(a) * x0 + math.sqrt(1 - a - s ** 2) * e + s ** 2 * z, "not σ² z"),
        (lambda x0, e, a, s, z: math.sqrt(a) * x0 + math.sqrt(1 - a - s ** 2) * e, "dropped the fresh noise"),
        (lambda x0, e, a, s, z: math.sqrt(a) * x0 + math.sqrt(1 - a - s) * e + s * z, "not σ, inside"),
        (lambda x0, e, a, s, z: math.sqrt(a) * x0 - math.sqrt(1 - a - s ** 2) * e + s * z, "differs"),
    ],
)
def test_ddim_step_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb07.check_ddim_step(wrong)


# -- exercise 3: trailing spacing --------------------------------------------------------------------------------

def trailing_timesteps(T, steps):
    return [int(v) for v in np.round(np.arange(T, 0, -T / steps)).astype(int) - 1]


def test_trailing_reference_passes(capsys):
    nb07.check_trailing_timesteps(trailing_timesteps)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda T, S: sorted(trailing_timesteps(T, S)), "order"),
        (lambda T, S: [k * (T // S) for k in range(S)][::-1], "leading"),
        (lambda T, S: [int(v) + 1 for v in trailing_timesteps(T, S)], "0-based"),
        (lambda T, S: [int(v) for v in np.linspace(T - 1, 0, S).round()], "expected"),
        (lambda T, S: trailing_timesteps(T, S)[:-1], "entries"),
        (lambda T, S: 5, "list of ints"),
    ],
)
def test_trailing_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb07.check_trailing_timesteps(wrong)



# -- exercise 4: a whole DDIM sampler ------------------------------------------------------------------------------

def my_ddim(denoiser, diffusion, x_T, steps, eta=0.0, generator=None):
    ab = diffusion.schedule.alphas_cumprod
    seq = trailing_timesteps(diffusion.num_timesteps, steps)
    x = x_T
    for t, t_prev in zip(seq, seq[1:] + [-1]):
        x0_hat, eps_hat = denoiser(x, torch.full((x.shape[0],), t))
        a_t = float(ab[t])
        a_prev = float(ab[t_prev]) if t_prev >= 0 else 1.0
        sigma = ddim_sigma(a_t, a_prev, eta)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype) if sigma > 0 else torch.zeros_like(x)
        x = ddim_step(x0_hat, eps_hat, a_prev, sigma, z)
    return x


def my_ddim_always_z(denoiser, diffusion, x_T, steps, eta=0.0, generator=None):
    """Draws z at every step, also where σ = 0: the same samples."""
    ab = diffusion.schedule.alphas_cumprod
    seq = trailing_timesteps(diffusion.num_timesteps, steps)
    x = x_T
    for t, t_prev in zip(seq, seq[1:] + [-1]):
        x0_hat, eps_hat = denoiser(x, torch.full((x.shape[0],), t))
        a_prev = float(ab[t_prev]) if t_prev >= 0 else 1.0
        sigma = ddim_sigma(float(ab[t]), a_prev, eta)
        x = ddim_step(x0_hat, eps_hat, a_prev, sigma, torch.randn(x.shape, generator=generator, dtype=x.dtype))
    return x


def test_ddim_sampler_accepts_solutions(capsys):
    nb07.check_ddim_sampler(my_ddim)
    nb07.check_ddim_sampler(my_ddim_always_z)
    assert capsys.readouterr().out.count("Correct") == 2


def _variant(kind):
    return lambda d, diff, x_T, steps, eta=0.0, g=None: nb07._ddim_variant(d, diff, x_T, steps, eta, g, kind)


def _pow_sigma(a, p, eta):
    """σ with ** 0.5: a negative argument gives a complex number instead of an error."""
    return eta * ((1 - p) / (1 - a)) ** 0.5 * (1 - a / p) ** 0.5


def _on(seq_fn, at_prev=False, start=None, noise=None, wrap=False, sigma=ddim_sigma):
    """The right update over another timestep sequence, asked at t_prev, from another start or noise source."""
    def fn(denoiser, diffusion, x_T, steps, eta=0.0, generator=None):
        ab = diffusion.schedule.alphas_cumprod
        seq = seq_fn(diffusion.num_timesteps, steps)
        x = x_T if start is None else start(x_T)
        for t, t_prev in zip(seq, seq[1:] + [-1]):
            x0_hat, eps_hat = denoiser(x, torch.full((x.shape[0],), t_prev if at_prev else t))
            a_prev = float(ab[t_prev]) if (t_prev >= 0 or wrap) else 1.0      # wrap: alphas_cumprod[-1]
            s = sigma(float(ab[t]), a_prev, eta)
            z = noise(x) if noise else torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = a_prev ** 0.5 * x0_hat + (1 - a_prev - s ** 2) ** 0.5 * eps_hat + s * z
        return x
    return fn


def _no_last_step(denoiser, diffusion, x_T, steps, eta=0.0, generator=None):
    ab = diffusion.schedule.alphas_cumprod
    seq = trailing_timesteps(diffusion.num_timesteps, steps)
    x = x_T
    for t, t_prev in zip(seq, seq[1:]):
        x0_hat, eps_hat = denoiser(x, torch.full((x.shape[0],), t))
        sigma = ddim_sigma(float(ab[t]), float(ab[t_prev]), eta)
        x = ddim_step(x0_hat, eps_hat, float(ab[t_prev]), sigma, torch.randn(x.shape, generator=generator,
                                                                             dtype=x.dtype))
    return x


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_variant("neg_index"), "Python's \\*last\\*"),
        (_variant("consecutive"), "jump's own"),
        (_variant("no_eta"), "ignores η"),
        (_variant("one_z"), "drew z once"),
        (_on(lambda T, S: timestep_sequence(T, S, "leading")), "leading"),
        (_on(trailing_timesteps, at_prev=True), "never at t_prev"),
        (_no_last_step, "last step is missing"),
        (_on(trailing_timesteps, wrap=True), "math domain error.*negative number.*last\\* entry"),
        (_on(trailing_timesteps, wrap=True, sigma=_pow_sigma), "complex numbers.*last\\* entry"),
        (_on(lambda T, S: trailing_timesteps(T, 2 * S)), "once per step"),
        (_on(trailing_timesteps, start=torch.randn_like), "given x_T"),
        (_on(trailing_timesteps, noise=lambda x: torch.randn(x.shape, dtype=x.dtype)), "same generator seed"),
        (lambda d, diff, x_T, s, e=0.0, g=None: d(x_T, 999), "long tensor of shape"),
        (lambda *a: my_ddim(*a)[:, :1], "shape"),
        (lambda *a: my_ddim(*a) * float("nan"), "NaN"),
        (lambda *a: my_ddim(*a) + 0.01, "differ from samplers.ddim"),
    ],
)
def test_ddim_sampler_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb07.check_ddim_sampler(wrong)


def test_ddim_sampler_not_answered():
    def todo(denoiser, diffusion, x_T, steps, eta=0.0, generator=None):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb07.check_ddim_sampler(todo)


# -- predict, then run: what more steps buy with a learned network -------------------------------------------------

def test_plateau_prediction(capsys):
    assert nb07.commit_plateau_prediction("b ") == "b"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb07.commit_plateau_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb07.commit_plateau_prediction(2)
    # the truth comes from the measured distances, never typed in
    assert nb07.plateau_truth(0.072, 0.063, 0.027) == "b"      # levels off above the exact sampler
    assert nb07.plateau_truth(0.072, 0.035, 0.027) == "a"      # keeps falling to the exact sampler's level
    assert nb07.plateau_truth(0.072, 0.090, 0.027) == "c"      # gets worse
    capsys.readouterr()
    assert nb07.reveal_plateau("b", 0.072, 0.063, 0.027) is True
    out = capsys.readouterr().out
    assert "Right" in out and "0.063" in out and "Why:" in out
    assert nb07.reveal_plateau("a", 0.072, 0.063, 0.027) is False
    out = capsys.readouterr().out
    assert "Not what happened" in out and "bottleneck" in out
    assert nb07.reveal_plateau("c", 0.072, 0.063, 0.027) is False
    assert "converges" in capsys.readouterr().out
