"""The checks of notebook 01 accept the reference solutions and reject typical wrong answers."""

import pytest
import torch

from ddpm_lite.exercises import ExerciseError, nb01
from ddpm_lite.schedules import NoiseSchedule


# -- exercise 1: ᾱ from β --------------------------------------------------------------------------------------

def test_alpha_bar_accepts_solution(capsys):
    betas = NoiseSchedule("linear", 1000).betas
    nb01.check_alpha_bar(torch.cumprod(1 - betas, dim=0), betas)
    assert "✅ Correct" in capsys.readouterr().out


def test_alpha_bar_accepts_float32_and_other_schedules():
    betas = NoiseSchedule("cosine", 200).betas
    nb01.check_alpha_bar(torch.cumprod(1 - betas.float(), dim=0), betas)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda b: torch.cumprod(b, 0), "of α_t = 1 − β_t"),
        (lambda b: 1 - torch.cumsum(b, 0), "product"),
        (lambda b: torch.cumprod(1 - b, 0).sqrt(), "square root"),
        (lambda b: torch.prod(1 - b), "shape"),
        (lambda b: torch.cat([torch.ones(1, dtype=b.dtype), torch.cumprod(1 - b, 0)[:-1]]), "shifted"),
        (lambda b: torch.cumprod(1 - b, 0) * 1.01, "not right yet"),
        (lambda b: None, "None"),
    ],
)
def test_alpha_bar_rejects_mistakes(wrong, match):
    betas = NoiseSchedule("linear", 1000).betas
    with pytest.raises(ExerciseError, match=match):
        nb01.check_alpha_bar(wrong(betas), betas)


# -- exercise 2: q_sample ---------------------------------------------------------------------------------------

def solution_q_sample(x0, t, noise, alphas_cumprod):
    ab = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def test_q_sample_accepts_solution(capsys):
    nb01.check_q_sample(solution_q_sample)
    nb01.check_q_sample(solution_q_sample, schedule="cosine", T=500)
    assert capsys.readouterr().out.count("✅ Correct") == 2


def _weights(fn):
    def q(x0, t, noise, ab):
        a = ab[t].reshape(-1, 1, 1, 1)
        return fn(a, x0, noise)
    return q


@pytest.mark.parametrize(
    "wrong, match",
    [
        (_weights(lambda a, x, n: a * x + (1 - a) * n), "square roots"),  # sqrt-less ᾱ
        (_weights(lambda a, x, n: a.sqrt() * x + (1 - a) * n), "noise weight should be"),
        (_weights(lambda a, x, n: a * x + (1 - a).sqrt() * n), "signal weight"),
        (_weights(lambda a, x, n: a.sqrt() * x + (1 - a.sqrt()) * n), r"not 1 − √ᾱ_t"),
        (_weights(lambda a, x, n: a.sqrt() * n + (1 - a).sqrt() * x), "swapped"),
        (lambda x0, t, n, ab: solution_q_sample(x0, torch.clamp(t + 1, max=len(ab) - 1), n, ab), "off by one"),
        (lambda x0, t, n, ab: solution_q_sample(x0, t[:1].expand_as(t), n, ab), "first one"),
        (lambda x0, t, n, ab: ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * n, "raised"),  # no reshape: broadcast error
        (lambda x0, t, n, ab: solution_q_sample(x0, t, n, ab)[:, 0], "shape"),
        (lambda x0, t, n, ab: solution_q_sample(x0, t, n, ab) + 0.01, "not right yet"),
    ],
)
def test_q_sample_rejects_mistakes(wrong, match):
    with pytest.raises(ExerciseError, match=match):
        nb01.check_q_sample(wrong)


def test_q_sample_lets_the_student_placeholder_through():
    """In the student copy the function body is `raise NotImplementedError()`: the cell must show that,
    not a wrapped "your function raised ..." message."""
    def placeholder(x0, t, noise, alphas_cumprod):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        nb01.check_q_sample(placeholder)


def test_q_sample_needs_a_function():
    with pytest.raises(ExerciseError, match="function"):
        nb01.check_q_sample(torch.zeros(3))


# -- exercise 3: SNR crossing -------------------------------------------------------------------------------------

def test_snr_crossing_reference_is_first_index_below_one():
    s = NoiseSchedule("cosine", 1000)
    t = nb01.snr_crossing("cosine")
    assert s.snr[t] < 1 <= s.snr[t - 1]
    assert s.alphas_cumprod[t] < 0.5 <= s.alphas_cumprod[t - 1]


def test_snr_crossing_accepts_solution(capsys):
    snr = NoiseSchedule("cosine", 1000).snr
    answer = int(torch.nonzero(snr < 1)[0])
    nb01.check_snr_crossing(answer)
    nb01.check_snr_crossing(torch.tensor(answer))
    nb01.check_snr_crossing(nb01.snr_crossing("linear"), schedule="linear")
    assert capsys.readouterr().out.count("✅ Correct") == 3


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda r: nb01.snr_crossing("linear"), "linear"),
        (lambda r: r - 1, "still ≥ 1"),
        (lambda r: r + 1, "0-based"),
        (lambda r: r // 2, "not it"),
        (lambda r: 0.5, "integer"),
        (lambda r: None, "None"),
    ],
)
def test_snr_crossing_rejects_mistakes(wrong, match):
    with pytest.raises(ExerciseError, match=match):
        nb01.check_snr_crossing(wrong(nb01.snr_crossing("cosine")))


# -- the student copy of notebook 01 ------------------------------------------------------------------------------

def test_student_copy_of_notebook_01_has_every_solution_removed(tmp_path):
    """tools/make_student.py leaves `raise NotImplementedError()` in each exercise cell of notebook 01 and keeps
    the check that follows (executing the copy is done by hand: each exercise cell then raises
    NotImplementedError, and only those cells)."""
    import importlib.util
    from pathlib import Path

    import nbformat

    repo = Path(__file__).resolve().parents[1]
    src = repo / "notebooks" / "01_forward_noising.ipynb"
    if not src.exists():
        pytest.skip("notebooks/01_forward_noising.ipynb not built")
    spec = importlib.util.spec_from_file_location("make_student", repo / "tools" / "make_student.py")
    make_student = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_student)

    assert make_student.make_student_copy(src, tmp_path / src.name) == 3
    cells = [c for c in nbformat.read(tmp_path / src.name, as_version=4).cells if c.cell_type == "code"]
    stripped = [c.source for c in cells if "raise NotImplementedError()" in c.source]
    assert len(stripped) == 3
    for source, check in zip(stripped, ("check_alpha_bar", "check_q_sample", "check_snr_crossing")):
        assert f"nb01.{check}(" in source
        assert "SOLUTION" not in source and "torch.cumprod" not in source and ".sqrt()" not in source
    assert not any(c.outputs for c in cells if "raise NotImplementedError()" in c.source)
