"""The checks of notebook 06 accept the reference solutions and reject typical wrong answers."""

import pytest
import torch

from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.exercises import ExerciseError, NotAnsweredError, nb06
from ddpm_lite.samplers import ddim_steps

# tiny tensors: one thread is fastest, and the machine's cores are shared
pytestmark = pytest.mark.usefixtures("one_thread")


# -- exercise 1: the ancestral sampling loop ------------------------------------------------------------------------

def ddpm_sample(denoiser, diffusion, x_T, generator=None):
    s = diffusion.schedule
    x = x_T
    for t in range(diffusion.num_timesteps - 1, -1, -1):
        x0_hat, _ = denoiser(x, torch.full((x.shape[0],), t))
        mean = s.posterior_mean_coef1[t] * x0_hat + s.posterior_mean_coef2[t] * x
        if t > 0:
            x = mean + s.posterior_variance[t].sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        else:
            x = mean
    return x


def eq11_sample(denoiser, diffusion, x_T, generator=None):
    """The same loop written with eq. 11 (ε̂ instead of x̂_0): also right."""
    s = diffusion.schedule
    x = x_T
    for t in reversed(range(diffusion.num_timesteps)):
        _, eps = denoiser(x, torch.full((x.shape[0],), t))
        x = (x - s.betas[t] / (1 - s.alphas_cumprod[t]).sqrt() * eps) / s.alphas[t].sqrt()
        if t > 0:
            x = x + s.posterior_variance[t].sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


def test_ddpm_sample_accepts_solutions(capsys):
    nb06.check_ddpm_sample(ddpm_sample)
    nb06.check_ddpm_sample(eq11_sample)
    assert capsys.readouterr().out.count("✅ Correct") == 2


def _variant(kind):
    return lambda d, diff, x_T, g=None: nb06._ddpm_variant(d, diff, x_T, g, kind)


def _loop(ts_fn, noise_fn=None, start=None):
    """The right update on a wrong set of timesteps, or with another start / noise source."""
    def fn(denoiser, diffusion, x_T, generator=None):
        s = diffusion.schedule
        x = x_T if start is None else start(x_T)
        for t in ts_fn(diffusion.num_timesteps):
            x0_hat, _ = denoiser(x, torch.full((x.shape[0],), t))
            x = s.posterior_mean_coef1[t] * x0_hat + s.posterior_mean_coef2[t] * x
            if t > 0:
                z = noise_fn(x) if noise_fn else torch.randn(x.shape, generator=generator, dtype=x.dtype)
                x = x + s.posterior_variance[t].sqrt() * z
        return x
    return fn


@pytest.mark.parametrize(
    "wrong, match",
    [
        (_variant("no_noise"), "never add the fresh noise"),
        (_variant("variance"), "standard deviation"),
        (_variant("beta"), "not β_t"),
        (_variant("noise_at_0"), "no noise on the last step"),
        (_variant("jump"), "jumped to the guess"),
        (_variant("swapped"), "coefficients are swapped"),
        (_variant("off_by_one"), "off by one"),
        (_variant("one_z"), "drew z once"),
        (_loop(lambda T: range(999, -1, -1)), "not a fixed 1000"),
        (_loop(lambda T: range(T - 1, 0, -1)), "one step early"),
        (_loop(lambda T: range(T)), "runs forwards"),
        (_loop(lambda T: range(T - 1, -1, -2)), "once per timestep"),
        (_loop(lambda T: range(T - 1, -1, -1), noise_fn=lambda x: torch.randn(x.shape, dtype=x.dtype)),
         "same generator seed differ"),
        (_loop(lambda T: range(T - 1, -1, -1), start=lambda x: torch.randn_like(x)), "given x_T"),
        (lambda d, diff, x_T, g=None: d(x_T, 99), "long tensor of shape"),
        (lambda d, diff, x_T, g=None: ddpm_sample(d, diff, x_T, g)[:, :1], "shape"),
        (lambda d, diff, x_T, g=None: ddpm_sample(d, diff, x_T, g) * float("nan"), "NaN"),
        (lambda d, diff, x_T, g=None: ddpm_sample(d, diff, x_T, g) + 0.01, "differ from samplers.ddpm"),
    ],
)
def test_ddpm_sample_rejects_mistakes(wrong, match):
    with pytest.raises(ExerciseError, match=match):
        nb06.check_ddpm_sample(wrong)


def test_ddpm_sample_not_answered():
    def todo(denoiser, diffusion, x_T, generator=None):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb06.check_ddpm_sample(todo)


# -- exercise 2: one DDIM step ---------------------------------------------------------------------------------------

def solution_ddim_step(x_t, eps, t, t_prev, alphas_cumprod):
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def test_ddim_step_accepts_solution(capsys):
    nb06.check_ddim_step(solution_ddim_step)
    nb06.check_ddim_step(solution_ddim_step, schedule="cosine", T=200)
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
    ref = nb06._ddim_reference(d, x_T, eps, 999, first.t)
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
        nb06.check_ddim_step(wrong)


# -- predict, then run: when is the digit decided? ---------------------------------------------------------------

def test_settle_prediction(capsys):
    assert nb06.commit_settle_prediction("A") == "a"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb06.commit_settle_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb06.commit_settle_prediction("early")
    # the truth is the third of the run the measured t falls in
    assert [nb06.settle_truth(t) for t in (999, 668, 667, 334, 333, 10)] == ["a", "a", "b", "b", "c", "c"]
    assert nb06.settle_truth(80, T=100) == "a"
    capsys.readouterr()
    assert nb06.reveal_settle("a", 823) is True
    out = capsys.readouterr().out
    assert "Right" in out and "t = 823" in out and "Why:" in out
    assert nb06.reveal_settle("c", 823) is False
    out = capsys.readouterr().out
    assert "Not what happened" in out and "commits long before" in out
    assert nb06.reveal_settle("b", 823) is False
    assert nb06.reveal_settle("c", 200) is True
