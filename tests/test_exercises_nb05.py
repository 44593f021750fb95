"""The checks of notebook 05 accept the reference solutions and reject typical wrong answers."""

import pytest
import torch

from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.exercises import ExerciseError, nb05
from ddpm_lite.samplers import ddim_steps


# -- exercise 1: x̂_0 from ε̂ -------------------------------------------------------------------------------------

def solution_pred_x0(x_t, t, eps, alphas_cumprod):
    ab = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def test_pred_x0_accepts_solution(capsys):
    nb05.check_pred_x0(solution_pred_x0)
    nb05.check_pred_x0(solution_pred_x0, schedule="cosine", T=100)
    assert capsys.readouterr().out.count("✅ Correct") == 2


def _w(fn):
    def f(x_t, t, eps, ab):
        return fn(ab[t].reshape(-1, 1, 1, 1), x_t, eps)
    return f


@pytest.mark.parametrize(
    "wrong, match",
    [
        (_w(lambda a, x, e: (x - (1 - a) * e) / a), "no square roots"),
        (_w(lambda a, x, e: (x - (1 - a).sqrt() * e) / a), "not by ᾱ_t"),
        (_w(lambda a, x, e: (x - (1 - a) * e) / a.sqrt()), "noise weight"),
        (_w(lambda a, x, e: (x + (1 - a).sqrt() * e) / a.sqrt()), "sign"),
        (_w(lambda a, x, e: x - (1 - a).sqrt() * e), "rescale"),
        (_w(lambda a, x, e: a.sqrt() * x - (1 - a).sqrt() * e), "multiply by 1/√ᾱ_t"),
        (lambda x, t, e, ab: solution_pred_x0(x, t, e, ab)[0], "shape"),
        (lambda x, t, e, ab: solution_pred_x0(x, t, e, ab) * 1.05, "not right yet"),
        (lambda x, t, e, ab: (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt(), "raised"),
        ("not a function", "function"),
    ],
)
def test_pred_x0_rejects_mistakes(wrong, match):
    with pytest.raises(ExerciseError, match=match):
        nb05.check_pred_x0(wrong)


# -- exercise 2: one DDIM step ---------------------------------------------------------------------------------------

def solution_ddim_step(x_t, eps, t, t_prev, alphas_cumprod):
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def test_ddim_step_accepts_solution(capsys):
    nb05.check_ddim_step(solution_ddim_step)
    nb05.check_ddim_step(solution_ddim_step, schedule="cosine", T=200)
    assert capsys.readouterr().out.count("✅ Correct") == 2


def test_ddim_reference_is_the_samplers_update():
    """The check's reference equals a step of the package's own DDIM on the full diffusion (no clipping)."""
    d = GaussianDiffusion("linear", 1000)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)

    def denoiser(x, tt):
        return d.predict_x0_from_eps(x, tt, eps), eps

    first = next(iter(ddim_steps(denoiser, d, x_T, steps=10, eta=0.0, spacing="trailing")))  # 999 -> 899
    ref = nb05._ddim_reference(d, x_T, eps, 999, first.t)
    torch.testing.assert_close(ref, first.x)


def _step(fn):
    def f(x_t, eps, t, t_prev, ab):
        a_t = ab[t]
        a_prev = ab[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return fn(a_prev, x0, x_t, eps)
    return f


@pytest.mark.parametrize(
    "wrong, match",
    [
        (_step(lambda a, x0, x, e: a * x0 + (1 - a) * e), "not ᾱ_prev and 1 − ᾱ_prev"),
        (_step(lambda a, x0, x, e: a.sqrt() * x + (1 - a).sqrt() * e), "not √ᾱ_prev · x_t"),
        (_step(lambda a, x0, x, e: a.sqrt() * x0), "dropped the noise term"),
        (_step(lambda a, x0, x, e: x0), "re-noises"),
        # no special case for t_prev = -1: Python indexes the last entry
        (lambda x, e, t, tp, ab: solution_ddim_step(x, e, t, tp, torch.cat([ab, ab[-1:]]))
         if tp >= 0 else solution_ddim_step(x, e, t, len(ab) - 1, ab), "negative indexing"),
        (lambda x, e, t, tp, ab: solution_ddim_step(x, e, t, tp + 1, ab), "off by one"),
        (lambda x, e, t, tp, ab: solution_ddim_step(x, e, t, tp, ab) + 0.01, "not right yet"),
        (lambda x, e, t, tp, ab: solution_ddim_step(x, e, t, tp, ab)[:, 0], "shape"),
        (lambda x, e, t, tp, ab: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_ddim_step_rejects_mistakes(wrong, match):
    with pytest.raises(ExerciseError, match=match):
        nb05.check_ddim_step(wrong)
