"""Checks for the course's exercises.

Each notebook's exercises have a module here (`nb01`, `nb02`, …) with one `check_*` function per exercise.
A check takes the learner's answer, compares it with a reference computed by the package (never a typed-in
number), and either prints a short confirmation or raises `ExerciseError` saying what is wrong and what to
look at. Exercise cells in the notebooks wrap their solution in nbgrader's markers:

    ### BEGIN SOLUTION
    ...
    ### END SOLUTION

and `python tools/make_student.py` (or `make student`) writes copies with each solution replaced by
`raise NotImplementedError()`.

Shared by every check: `call_answer` calls the learner's function (an unanswered exercise, i.e. that
placeholder, becomes `NotAnsweredError` with the same `NOT_ANSWERED` message everywhere), `as_tensor`,
`expect_close` and `allclose` compare, `passed` confirms.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch


class ExerciseError(AssertionError):
    """An exercise answer is wrong; the message says how."""


NOT_ANSWERED = ("Not answered yet: replace `raise NotImplementedError()` in the exercise cell with your code, run it, "
                "then run this check.")


class NotAnsweredError(ExerciseError, NotImplementedError):
    """The answer still is the student copy's placeholder `raise NotImplementedError()`. Also a
    `NotImplementedError`, so it reads as "not done yet", never as a wrong answer."""


def passed(message: str) -> None:
    print(f"✅ Correct: {message}")


def call_answer(fn, name: str, *args):
    """Call the learner's function `fn` (called `name` in messages) on `args` and return what it returns.

    Not a function: `ExerciseError`. The placeholder `raise NotImplementedError()`: `NotAnsweredError` with
    `NOT_ANSWERED`, the same in every notebook. Any other exception from the learner's code: `ExerciseError`
    naming it (the check reports it instead of crashing).
    """
    if not callable(fn):
        raise ExerciseError(f"pass your function itself (e.g. `{name}`, not `{name}(...)`), got {type(fn).__name__}")
    try:
        return fn(*args)
    except ExerciseError:
        raise
    except NotImplementedError:
        raise NotAnsweredError(NOT_ANSWERED) from None
    except Exception as err:  # the learner's code: report, do not crash the check
        raise ExerciseError(f"`{name}` raised {type(err).__name__}: {err}") from err


def allclose(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """`torch.allclose` that is False (not an error) when the shapes differ: to recognise a known mistake."""
    return a.shape == b.shape and bool(torch.allclose(a, b.to(a.dtype), rtol=rtol, atol=atol))


def as_tensor(answer, name: str) -> torch.Tensor:
    """The answer as a float64 tensor, or an `ExerciseError` naming what was expected."""
    if answer is None:
        raise ExerciseError(f"`{name}` is None: did you forget to return or assign it?")
    if isinstance(answer, (float, int, np.ndarray, list, tuple)) or torch.is_tensor(answer):
        return torch.as_tensor(answer, dtype=torch.float64).detach().cpu()
    raise ExerciseError(f"`{name}` should be a tensor or a number, got {type(answer).__name__}")


def expect_close(answer, reference, name: str, rtol: float = 1e-4, atol: float = 1e-6, hint: str = "") -> None:
    """Raise `ExerciseError` unless `answer` matches `reference` in shape and value."""
    got = as_tensor(answer, name)
    ref = torch.as_tensor(reference, dtype=torch.float64).detach().cpu()
    if got.shape != ref.shape:
        raise ExerciseError(f"`{name}` has shape {tuple(got.shape)}, expected {tuple(ref.shape)}. {hint}".strip())
    if not torch.isfinite(got).all():
        raise ExerciseError(f"`{name}` contains NaN or inf values. {hint}".strip())
    if not torch.allclose(got, ref, rtol=rtol, atol=atol):
        worst = (got - ref).abs().max().item()
        raise ExerciseError(
            f"`{name}` is not right yet: it differs from the reference by up to {worst:.3g}. {hint}".strip()
        )


def small_text_unet(seed: int):
    """A small text-conditioned UNet (8×8, context width 6) in float64 and eval mode whose weights, zero-initialised
    layers included, are perturbed by 0.3·N(0, 1) from a generator seeded with `seed`, so that the context
    matters to its output. Returns (model, generator): the checks draw their inputs from the same generator."""
    from ..unet import UNet

    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=2, dropout=0.0, num_groups=4, context_dim=6)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval().double(), g


class WatchedDenoiser:
    """Wraps a denoiser `denoiser(x, t)` handed to a learner's sampler: checks the timesteps it is asked for (a
    long tensor [B], inside 0 … T−1) and records them (`ts`) and the first state it sees (`first_x`), so a check
    can name a loop that runs the wrong way or asks for the wrong t. `below_zero` / `too_large`: what to say when
    t < 0 or t ≥ T (formatted with {t} and {T})."""

    def __init__(self, denoiser, T: int, batch: int, below_zero: str | None = None, too_large: str | None = None):
        self.denoiser, self.T, self.batch = denoiser, T, batch
        default = "the denoiser was asked for t = {t}, but timesteps are indexed 0 … {T_last}."
        self.below_zero, self.too_large = below_zero or default, too_large or default
        self.ts: list[int] = []
        self.first_x = None

    def __call__(self, x, t):
        if not torch.is_tensor(t) or t.dtype not in (torch.int64, torch.int32) or t.shape != (self.batch,):
            got = (f"a tensor of shape {tuple(t.shape)}, dtype {t.dtype}" if torch.is_tensor(t)
                   else f"{type(t).__name__} {t!r}")
            raise ExerciseError(f"call the denoiser with one timestep per sample, a long tensor of shape [B] = "
                                f"[{self.batch}] (torch.full((B,), t)); got {got}.")
        value = int(t[0])
        for bad, message in ((value < 0, self.below_zero), (value >= self.T, self.too_large)):
            if bad:
                raise ExerciseError(message.format(t=value, T=self.T, T_last=self.T - 1))
        if self.first_x is None:
            self.first_x = x.detach().clone()
        self.ts.append(value)
        return self.denoiser(x, t)


# -- "predict, then run" -------------------------------------------------------------------------------------------

def commit_choice(answer, choices: dict, name: str = "prediction", echo: bool = True) -> str:
    """Validate a prediction made *before* the cell that reveals the truth runs: `answer` must be one of the
    keys of `choices` ({"a": "what it says", ...}). Prints the committed answer back (`echo`); returns it
    normalised."""
    if answer is None:
        raise ExerciseError(f"commit to an answer first: set `{name}` to one of "
                            f"{', '.join(repr(k) for k in choices)} before running the cells that reveal it.")
    key = str(answer).strip().lower().strip("()")
    if key not in choices:
        raise ExerciseError(f"`{name}` = {answer!r} is not one of the choices {', '.join(repr(k) for k in choices)}.")
    if echo:
        print(f"📝 Your prediction: ({key}) {choices[key]}")
    return key


def reveal_choice(answer, truth: str, choices: dict, why: str, measured: str = "",
                  wrong_why: dict | None = None) -> bool:
    """After the run: compare the committed `answer` with the `truth` (a key of `choices`, computed from what
    was just measured, never typed in), print which it was and the reasoning `why`. Returns True when the
    prediction was right. A wrong prediction is not an error (the notebook goes on), but it is said plainly.
    `wrong_why` {(truth, answer): text} adds what is wrong with a particular answer when that was the truth."""
    key = commit_choice(answer, choices, echo=False)
    if truth not in choices:
        raise ValueError(f"truth {truth!r} is not one of the choices {list(choices)}")
    extra = (wrong_why or {}).get((truth, key)) if key != truth else None
    if extra:
        why = f"{why} {extra}"
    what = f" ({measured})" if measured else ""
    if key == truth:
        print(f"✅ Right: ({truth}) {choices[truth]}{what}.")
    else:
        print(f"❌ Not what happened: it was ({truth}) {choices[truth]}{what}, not ({key}).")
    print(f"Why: {why}")
    return key == truth


def __getattr__(name: str):
    if name.startswith("nb"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
