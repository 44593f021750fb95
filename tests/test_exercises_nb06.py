"""The checks of notebook 06 pass the reference solutions and reject typical mistakes."""

import math

import numpy as np
import pytest

from ddpm_lite.exercises import ExerciseError
from ddpm_lite.exercises import nb06


# -- exercise 1: the DDIM σ --------------------------------------------------------------------------------------

def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * math.sqrt(1 - alpha_bar_t / alpha_bar_prev)


def test_ddim_sigma_reference_passes(capsys):
    nb06.check_ddim_sigma(ddim_sigma)
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
        nb06.check_ddim_sigma(wrong)


def test_ddim_sigma_reports_not_implemented():
    def todo(a, p, eta):
        raise NotImplementedError()

    with pytest.raises(ExerciseError, match="NotImplementedError"):
        nb06.check_ddim_sigma(todo)


# -- exercise 2: one DDIM step -----------------------------------------------------------------------------------

def ddim_step(x0_hat, eps_hat, alpha_bar_prev, sigma, z):
    return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps_hat + sigma * z


def test_ddim_step_reference_passes(capsys):
    nb06.check_ddim_step(ddim_step)
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
        nb06.check_ddim_step(wrong)


# -- exercise 3: trailing spacing --------------------------------------------------------------------------------

def trailing_timesteps(T, steps):
    return [int(v) for v in np.round(np.arange(T, 0, -T / steps)).astype(int) - 1]


def test_trailing_reference_passes(capsys):
    nb06.check_trailing_timesteps(trailing_timesteps)
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
        nb06.check_trailing_timesteps(wrong)
