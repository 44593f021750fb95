"""The checks of notebook 02 accept the reference solutions and reject typical wrong answers."""

import math

import pytest
import torch

from ddpm_lite.exercises import ExerciseError, NotAnsweredError, nb02


# -- exercise 1: posterior mean coefficients (eq. 7) ------------------------------------------------------------

def _abar_prev(betas):
    ab = torch.cumprod(1 - betas, 0)
    return ab, torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])


def solution_coefficients(betas):
    ab, ab_prev = _abar_prev(betas)
    return ab_prev.sqrt() * betas / (1 - ab), (1 - betas).sqrt() * (1 - ab_prev) / (1 - ab)


def test_posterior_coefficients_accept_solution(capsys):
    nb02.check_posterior_coefficients(solution_coefficients)
    assert "✅ Correct" in capsys.readouterr().out


def test_posterior_coefficients_accept_float32():
    nb02.check_posterior_coefficients(lambda b: tuple(c.float() for c in solution_coefficients(b.float())))


def _wrong_coefficients(kind):
    def fn(betas):
        ab, ab_prev = _abar_prev(betas)
        c1, c2 = solution_coefficients(betas)
        if kind == "swapped":
            return c2, c1
        if kind == "abar_t":
            return ab.sqrt() * betas / (1 - ab), c2
        if kind == "no_sqrt1":
            return ab_prev * betas / (1 - ab), c2
        if kind == "no_sqrt2":
            return c1, (1 - betas) * (1 - ab_prev) / (1 - ab)
        if kind == "numerator":
            return c1, (1 - betas).sqrt()
        if kind == "wrap":  # ᾱ_{t−1} taken as ᾱ[t − 1] with Python's wrap-around at t = 0
            prev = ab[torch.arange(len(ab)) - 1]
            return prev.sqrt() * betas / (1 - ab), (1 - betas).sqrt() * (1 - prev) / (1 - ab)
        if kind == "one":
            return c1,
        if kind == "short":
            return c1[:-1], c2[:-1]
        if kind == "scaled":
            return c1 * 1.01, c2
        if kind == "raises":
            raise NotImplementedError()
        raise AssertionError(kind)
    return fn


@pytest.mark.parametrize("kind, match", [
    ("swapped", "swapped"), ("abar_t", "√ᾱ_{t−1}"), ("no_sqrt1", "square root"), ("no_sqrt2", "square root"),
    ("numerator", "1 − ᾱ_{t−1}"), ("wrap", "t = 0"), ("one", "two tensors"), ("short", "shape"),
    ("scaled", "not right yet"), ("raises", "NotImplementedError"),
])
def test_posterior_coefficients_reject_mistakes(kind, match):
    with pytest.raises(ExerciseError, match=match):
        nb02.check_posterior_coefficients(_wrong_coefficients(kind))


@pytest.mark.parametrize("kind, match", [
    ("swapped", "swapped"), ("abar_t", "√ᾱ_{t−1}"), ("no_sqrt2", "square root"), ("wrap", "t = 0"),
    ("scaled", "not right yet"),
])
def test_posterior_coefficients_reject_float32_mistakes(kind, match):
    """The looser float32 tolerance still names each mistake."""
    wrong = _wrong_coefficients(kind)
    with pytest.raises(ExerciseError, match=match):
        nb02.check_posterior_coefficients(lambda b: tuple(c.float() for c in wrong(b.float())))


# -- exercise 2: conversions ------------------------------------------------------------------------------------

def solution_eps_to_x0(x_t, eps, alpha_bar):
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def solution_x0_to_v(x0, eps, alpha_bar):
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def test_conversions_accept_solutions(capsys):
    nb02.check_eps_to_x0(solution_eps_to_x0)
    nb02.check_x0_to_v(solution_x0_to_v)
    assert capsys.readouterr().out.count("✅ Correct") == 2


def test_conversions_accept_float64(capsys):
    nb02.check_eps_to_x0(lambda x, e, a: solution_eps_to_x0(x.double(), e.double(), a.double()))
    nb02.check_x0_to_v(lambda x, e, a: solution_x0_to_v(x.double(), e.double(), a.double()))
    assert capsys.readouterr().out.count("✅ Correct") == 2


@pytest.mark.parametrize("fn, match", [
    (lambda x, e, a: (x - (1 - a) * e) / a, "square roots"),
    (lambda x, e, a: (x - (1 - a).sqrt() * e) / a, "divide by √ᾱ_t"),
    (lambda x, e, a: (x + (1 - a).sqrt() * e) / a.sqrt(), "sign"),
    (lambda x, e, a: x - (1 - a).sqrt() * e, "forgot to divide"),
    (lambda x, e, a: (x - a.sqrt() * e) / (1 - a).sqrt(), "swapped"),
    (lambda x, e, a: x, "not right yet"),
    (lambda x, e, a: None, "None"),
])
def test_eps_to_x0_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb02.check_eps_to_x0(fn)


@pytest.mark.parametrize("fn, match", [
    (lambda x, e, a: (1 - a).sqrt() * x - a.sqrt() * e, "sign is flipped"),
    (lambda x, e, a: (1 - a).sqrt() * e - a.sqrt() * x, "swapped"),
    (lambda x, e, a: a * e - (1 - a) * x, "square roots"),
    (lambda x, e, a: a.sqrt() * e + (1 - a).sqrt() * x, "minus sign"),
    (lambda x, e, a: e, "not right yet"),
    (lambda x, e, a: (a.sqrt() * e - (1 - a).sqrt() * x)[0], "shape"),
])
def test_x0_to_v_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb02.check_x0_to_v(fn)


# -- exercise 3: L_T in bits/dim --------------------------------------------------------------------------------

def _kl(x0, ab):
    return 0.5 * (ab * x0 ** 2 + (1 - ab) - 1 - torch.log(1 - ab))


def solution_prior_bpd(x0, alpha_bar_T):
    return _kl(x0, alpha_bar_T).mean(dim=(1, 2, 3)) / math.log(2)


def test_prior_bpd_accepts_solution(capsys):
    nb02.check_prior_bpd(solution_prior_bpd)  # float32 (x0 is float32)
    nb02.check_prior_bpd(lambda x0, a: solution_prior_bpd(x0.double(), a))  # float64
    assert capsys.readouterr().out.count("✅ Correct") == 2


def test_prior_bpd_rejects_float64_mistake():
    with pytest.raises(ExerciseError, match="nats"):
        nb02.check_prior_bpd(lambda x0, a: _kl(x0.double(), a).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("fn, match", [
    (lambda x0, a: _kl(x0, a).mean(dim=(1, 2, 3)), "nats"),
    (lambda x0, a: _kl(x0, a).sum(dim=(1, 2, 3)) / math.log(2), "summed"),
    (lambda x0, a: (0.5 * (a ** 2 * x0 ** 2 + (1 - a) - 1 - torch.log(1 - a))).mean(dim=(1, 2, 3)) / math.log(2),
     "ᾱ_T x_0²"),
    (lambda x0, a: (0.5 * (a * x0 ** 2 + (1 - a) - 1 - 0.5 * torch.log(1 - a))).mean(dim=(1, 2, 3)) / math.log(2),
     "variance"),
    (lambda x0, a: _kl(x0, a).mean() / math.log(2), "one value per sample"),
    (lambda x0, a: _kl(x0, a).mean(dim=(2, 3)) / math.log(2), "shape"),
    (lambda x0, a: 0.5 * (a * x0 ** 2).mean(dim=(1, 2, 3)) / math.log(2), "not right yet"),
])
def test_prior_bpd_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb02.check_prior_bpd(fn)


def test_checks_reject_non_callables():
    with pytest.raises(ExerciseError, match="function itself"):
        nb02.check_eps_to_x0(torch.zeros(3))


# -- exercise 2 (§4): one reverse step, used by §8's sampling --------------------------------------------------

def solution_reverse_step(model, x_t, t, z, sched):
    eps_hat = model(x_t, torch.full((x_t.shape[0],), t))
    a, b, ab = sched.alphas[t], sched.betas[t], sched.alphas_cumprod[t]
    return (x_t - b / (1 - ab).sqrt() * eps_hat) / a.sqrt() + sched.posterior_variance[t].sqrt() * z


def test_reverse_step_accepts_solution(capsys):
    nb02.check_reverse_step(solution_reverse_step)
    assert "✅ Correct" in capsys.readouterr().out


def test_reverse_step_accepts_the_posterior_route():
    """μ_θ is the posterior mean with x̂_0 plugged in (eq. 7 with eq. 4 solved for x_0): the same step."""
    def via_x0(model, x_t, t, z, sched):
        eps_hat = model(x_t, torch.full((x_t.shape[0],), t))
        ab = sched.alphas_cumprod[t]
        x0_hat = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
        mean = sched.posterior_mean_coef1[t] * x0_hat + sched.posterior_mean_coef2[t] * x_t
        return mean + (sched.posterior_variance[t].sqrt() * z if t > 0 else 0)

    nb02.check_reverse_step(via_x0)


def _reverse_variant(kind):
    def fn(model, x_t, t, z, sched):
        eps = model(x_t, torch.full((x_t.shape[0],), t))
        a, b, ab = sched.alphas[t], sched.betas[t], sched.alphas_cumprod[t]
        sigma = {"variance": sched.posterior_variance[t], "large": b.sqrt(),
                 "no_noise": 0 * b}.get(kind, sched.posterior_variance[t].sqrt())
        coef = b / (1 - ab) if kind == "no_sqrt" else b / (1 - ab).sqrt()
        sign = 1 if kind == "sign" else -1
        div = ab.sqrt() if kind == "abar" else 1.0 if kind == "no_div" else a.sqrt()
        out = (x_t + sign * coef * eps) / div + sigma * z
        return out[:, :1] if kind == "shape" else out * 1.01 if kind == "scaled" else out
    return fn


@pytest.mark.parametrize("kind, match", [
    ("variance", "standard deviation"), ("large", "fixed_large"), ("no_noise", "noise is missing"),
    ("no_sqrt", "without the square root"), ("sign", "sign of the ε̂ term"), ("abar", "not by √ᾱ_t"),
    ("no_div", "division by √α_t is missing"), ("shape", "shape"), ("scaled", "not right yet"),
])
def test_reverse_step_rejects_mistakes(kind, match):
    with pytest.raises(ExerciseError, match=match):
        nb02.check_reverse_step(_reverse_variant(kind))


def test_reverse_step_unanswered_and_crashes():
    def placeholder(model, x_t, t, z, sched):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb02.check_reverse_step(placeholder)
    with pytest.raises(ExerciseError, match="raised ValueError: t must be a torch.long tensor"):   # model(x_t, 5)
        nb02.check_reverse_step(lambda model, x_t, t, z, sched: model(x_t, t))


# -- predict, then run (§5): β_t or β̃_t? -------------------------------------------------------------------------

def test_variance_commit_validates():
    assert nb02.commit_variance_prediction("(b)") == "b"
    with pytest.raises(ExerciseError, match="commit to an answer"):
        nb02.commit_variance_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb02.commit_variance_prediction("β")


def test_variance_truth_maps_measurements_to_choices():
    assert nb02.variance_truth(6.887, 7.352) == "b"
    assert nb02.variance_truth(7.352, 6.887) == "a"
    assert nb02.variance_truth(6.90, 6.93) == "c" and nb02.variance_truth(6.93, 6.90) == "c"


def test_variance_reveal_reports_right_and_wrong(capsys):
    assert nb02.reveal_variance("b", 6.887, 7.352, 0.97) is True
    out = capsys.readouterr().out
    assert "✅ Right" in out and "6.887 bits/dim with β_t" in out and "97%" in out and "Why:" in out
    for wrong in ("a", "c"):
        assert nb02.reveal_variance(wrong, 6.887, 7.352, 0.97) is False
        out = capsys.readouterr().out
        assert "❌ Not what happened" in out and "it was (b)" in out


# -- the student copy of notebook 02 ------------------------------------------------------------------------------

def test_student_copy_of_notebook_02_has_every_solution_removed(tmp_path):
    """tools/make_student.py leaves `raise NotImplementedError()` in each exercise cell of notebook 02, with no
    solution text, and the next cell still holds the check (executing the copy is done by hand: each exercise cell
    then raises NotImplementedError and its check cell an ExerciseError saying so)."""
    import importlib.util
    from pathlib import Path

    import nbformat

    repo = Path(__file__).resolve().parents[1]
    src = repo / "notebooks" / "02_q_and_p_math.ipynb"
    if not src.exists():
        pytest.skip("notebooks/02_q_and_p_math.ipynb not built")
    spec = importlib.util.spec_from_file_location("make_student", repo / "tools" / "make_student.py")
    make_student = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_student)

    assert make_student.make_student_copy(src, tmp_path / src.name) == 6  # exercise 3 has two functions; + prediction
    cells = [c for c in nbformat.read(tmp_path / src.name, as_version=4).cells if c.cell_type == "code"]
    exercise = [i for i, c in enumerate(cells) if "raise NotImplementedError()" in c.source
                and "commit_variance_prediction" not in c.source]
    assert len(exercise) == 4
    predictions = [c.source for c in cells if "commit_variance_prediction" in c.source]
    assert len(predictions) == 1 and "raise NotImplementedError()" in predictions[0]
    assert 'prediction = "' not in predictions[0]
    checks = (("check_posterior_coefficients",), ("check_reverse_step",), ("check_eps_to_x0", "check_x0_to_v"),
              ("check_prior_bpd",))
    for i, names in zip(exercise, checks):
        source = cells[i].source
        assert "SOLUTION" not in source and "torch.cumprod" not in source and ".sqrt()" not in source
        assert "torch.log" not in source and "math.log(2)" not in source
        assert not cells[i].outputs
        assert all(f"nb02.{name}(" in cells[i].source + cells[i + 1].source for name in names)  # same or next cell
