"""The checks of notebook 01 accept the reference solutions and reject typical wrong answers."""

import pytest
import torch

import math

from ddpm_lite.exercises import ExerciseError, NotAnsweredError, nb01
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


# -- exercise 1 (in §4): the cosine schedule, built and used ------------------------------------------------------

def solution_cosine_betas(T, s=0.008):
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]
    return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)


def test_cosine_betas_accepts_solution(capsys):
    nb01.check_cosine_betas(solution_cosine_betas)
    assert "✅ Correct" in capsys.readouterr().out


def test_cosine_betas_accepts_float32_and_alpha_bar_route():
    nb01.check_cosine_betas(lambda T, s: solution_cosine_betas(T, s).float())

    def via_cumprod(T, s):  # ᾱ(t+1)/ᾱ(t) = f(t+1)/f(t): the normalisation by f(0) cancels, so it may be left out
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return torch.clamp(1 - f[1:] / f[:-1], 0, 0.999)

    nb01.check_cosine_betas(via_cumprod)


def _cos(T, s, squared=True, offset=True, divide=True, clip=True):
    s = s if offset else 0.0
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / ((1 + s) if divide else 1) * math.pi / 2) ** (2 if squared else 1)
    b = 1 - f[1:] / f[:-1]
    return b.clamp(max=0.999) if clip else b


def _shifted(T, s):
    steps = torch.arange(T, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    ab = torch.cat([torch.ones(1, dtype=f.dtype), f / f[0]])
    return 1 - ab[1:] / ab[:-1]


@pytest.mark.parametrize("fn, match", [
    (lambda T, s: _cos(T, s, clip=False), "Clip β at 0.999"),
    (lambda T, s: _cos(T, s, clip=False).float(), "Clip β at 0.999"),
    (lambda T, s: _cos(T, s, squared=False), r"\*squared\* cosine"),
    (lambda T, s: _cos(T, s, squared=False, clip=False), r"\*squared\* cosine"),
    (lambda T, s: _cos(T, s, offset=False), "offset s is missing"),
    (lambda T, s: _cos(T, s, offset=False).float(), "offset s is missing"),
    (lambda T, s: _cos(T, s, divide=False), r"divide \(t/T \+ s\) by \(1 \+ s\)"),
    (_shifted, "shifted by one step"),
    (lambda T, s: torch.cumprod(1 - solution_cosine_betas(T, s), 0), "those are ᾱ_t"),
    (lambda T, s: 1 - torch.cumprod(1 - solution_cosine_betas(T, s), 0), "1 − ᾱ_t, the variance"),
    (lambda T, s: torch.cat([solution_cosine_betas(T, s), torch.zeros(1, dtype=torch.float64)]), "returned 1001 values"),
    (lambda T, s: solution_cosine_betas(T, s)[:-1], "shape"),
    (lambda T, s: 1 - torch.cos(torch.arange(T + 1.0) / T)[1:] / torch.cos(torch.arange(T + 1.0) / T)[:-1] * 0,
     "not right yet"),
    (lambda T, s: solution_cosine_betas(T, s) * 1.01, "not right yet"),
    (lambda T, s: None, "None"),
])
def test_cosine_betas_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb01.check_cosine_betas(fn)


def test_cosine_betas_unanswered_and_not_a_function():
    def placeholder(T, s=0.008):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb01.check_cosine_betas(placeholder)
    with pytest.raises(ExerciseError, match="function itself"):
        nb01.check_cosine_betas(solution_cosine_betas(1000))


# -- predict, then run (§4): identification at SNR = 1 -------------------------------------------------------------

def test_identify_prediction_commit_validates():
    assert nb01.commit_identify_prediction(" (A) ") == "a"
    with pytest.raises(ExerciseError, match="commit to an answer"):
        nb01.commit_identify_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb01.commit_identify_prediction("d")


def test_identify_truth_maps_measurements_to_choices():
    assert [nb01.identify_truth(a) for a in (1.0, 0.6, 0.5, 0.49, 0.1, 0.099, 1 / 256)] == ["a", "a", "a", "b", "b",
                                                                                             "c", "c"]


def test_identify_reveal_reports_right_and_wrong(capsys):
    assert nb01.reveal_identify("a", 0.6, 259, 2.3, 0.4976) is True
    out = capsys.readouterr().out
    assert "✅ Right" in out and "60% identified at t = 259" in out and "Why:" in out and "64 pixels" in out
    for wrong in ("b", "c"):
        assert nb01.reveal_identify(wrong, 0.6, 259, 2.3, 0.4976) is False
        out = capsys.readouterr().out
        assert "❌ Not what happened" in out and "it was (a)" in out and "Why:" in out
    assert nb01.reveal_identify("c", 0.04, 485, 2.3, 0.09) is True
    with pytest.raises(ExerciseError):
        nb01.reveal_identify(None, 0.6, 259, 2.3, 0.5)


def test_identify_truth_comes_from_the_measurement():
    """The notebook's experiment, reproduced: at the linear schedule's SNR = 1 step most digits are identified."""
    from ddpm_lite.data import load_dataset
    from ddpm_lite.diffusion import GaussianDiffusion

    x = load_dataset("digits").images[:256]
    d = GaussianDiffusion("linear", 1000)
    t = int(torch.nonzero(d.schedule.snr < 1)[0])
    x_t = d.q_sample(x, torch.full((256,), t), generator=torch.Generator().manual_seed(8)).flatten(1)
    scaled = d.schedule.sqrt_alphas_cumprod[t].item() * x.flatten(1)
    acc = (torch.cdist(x_t, scaled).argmin(1) == torch.arange(256)).float().mean().item()
    assert nb01.identify_truth(acc) == "a", acc


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

    assert make_student.make_student_copy(src, tmp_path / src.name) == 5
    cells = [c for c in nbformat.read(tmp_path / src.name, as_version=4).cells if c.cell_type == "code"]
    stripped = [c.source for c in cells if "raise NotImplementedError()" in c.source]
    assert len(stripped) == 5
    checks = ("check_cosine_betas", "commit_identify_prediction", "check_alpha_bar", "check_q_sample",
              "check_snr_crossing")
    for source, check in zip(stripped, checks):
        assert f"nb01.{check}(" in source
        assert "SOLUTION" not in source and "torch.cumprod" not in source and ".sqrt()" not in source
        assert "torch.cos" not in source and 'prediction = "' not in source
    assert not any(c.outputs for c in cells if "raise NotImplementedError()" in c.source)
    # the schedule the student builds is the one the notebook then uses
    uses = [c.source for c in cells if "my_cosine_betas(T)" in c.source and "def my_cosine_betas" not in c.source]
    assert uses and "NoiseSchedule(betas=my_cosine_betas(T))" in uses[0]
