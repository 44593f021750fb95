"""The checks of notebook 03 accept the reference solutions and reject typical wrong answers."""

import pytest
import torch

from ddpm_lite.exercises import ExerciseError, nb03


# -- exercise 1: L_simple by hand ---------------------------------------------------------------------------------

def solution_l_simple(model, x0, t, noise, alphas_cumprod, y):
    a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return ((model(x_t, t, y) - noise) ** 2).mean()


def test_simple_loss_accepts_solution(capsys):
    nb03.check_simple_loss(solution_l_simple)
    assert "✅ Correct" in capsys.readouterr().out


def test_simple_loss_accepts_mse_loss():
    import torch.nn.functional as F

    def fn(model, x0, t, noise, ab, y):
        a = ab[t][:, None, None, None]
        return F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y), noise)

    nb03.check_simple_loss(fn)


def _xt(x0, t, noise, ab):
    a = ab[t].reshape(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@pytest.mark.parametrize("fn, match", [
    (lambda m, x0, t, n, ab, y: ((m(ab[t].reshape(-1, 1, 1, 1) * x0 + (1 - ab[t].reshape(-1, 1, 1, 1)) * n, t, y)
                                  - n) ** 2).mean(), "square roots"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, t, n, ab), t, y) - x0) ** 2).mean(), "not x_0"),
    (lambda m, x0, t, n, ab, y: ((m(x0, t, y) - n) ** 2).mean(), "noisy x_t"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, t, n, ab), t, None) - n) ** 2).mean(), "class labels"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, t, n, ab), t, y) - n) ** 2).sum(), "not the sum"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, t, n, ab), t, y) - n) ** 2).sum(dim=(1, 2, 3)).mean(), "pixels"),
    (lambda m, x0, t, n, ab, y: (m(_xt(x0, t, n, ab), t, y) - n).abs().mean(), "L1"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, (t + 1).clamp(max=999), n, ab), t, y) - n) ** 2).mean(), "off by one"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, t, n, ab), t, y) - n) ** 2).mean().item(), "torch tensor"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, t, n, ab), t, y) - n) ** 2).mean().detach(), "require grad"),
    (lambda m, x0, t, n, ab, y: ((m(_xt(x0, t, n, ab), t, y) - n) ** 2).mean(dim=(1, 2, 3)), "0-d"),
    (lambda m, x0, t, n, ab, y: 1.1 * ((m(_xt(x0, t, n, ab), t, y) - n) ** 2).mean(), "not right yet"),
])
def test_simple_loss_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb03.check_simple_loss(fn)


# -- exercise 2: EMA update ---------------------------------------------------------------------------------------

@torch.no_grad()
def solution_ema_update(shadow, model, decay):
    for s, p in zip(shadow.parameters(), model.parameters()):
        s.mul_(decay).add_(p, alpha=1 - decay)


def test_ema_update_accepts_solution(capsys):
    nb03.check_ema_update(solution_ema_update)
    assert "✅ Correct" in capsys.readouterr().out


def test_ema_update_accepts_lerp():
    @torch.no_grad()
    def fn(shadow, model, decay):
        for s, p in zip(shadow.parameters(), model.parameters()):
            s.lerp_(p, 1 - decay)

    nb03.check_ema_update(fn)


@torch.no_grad()
def _swapped(shadow, model, decay):
    for s, p in zip(shadow.parameters(), model.parameters()):
        s.mul_(1 - decay).add_(p, alpha=decay)


@torch.no_grad()
def _copy(shadow, model, decay):
    shadow.load_state_dict(model.state_dict())


@torch.no_grad()
def _not_in_place(shadow, model, decay):
    for s, p in zip(shadow.parameters(), model.parameters()):
        s = decay * s + (1 - decay) * p  # rebinds the name: the module is untouched


@torch.no_grad()
def _updates_model(shadow, model, decay):
    for s, p in zip(shadow.parameters(), model.parameters()):
        p.mul_(decay).add_(s, alpha=1 - decay)


@torch.no_grad()
def _wrong_rate(shadow, model, decay):
    for s, p in zip(shadow.parameters(), model.parameters()):
        s.mul_(decay ** 2).add_(p, alpha=1 - decay ** 2)


@pytest.mark.parametrize("fn, match", [
    (_swapped, "swapped"), (_copy, "copy of the model"), (_not_in_place, "did not change"),
    (_updates_model, "model's weights changed"), (_wrong_rate, "not right yet"),
])
def test_ema_update_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb03.check_ema_update(fn)


# -- exercise 3: EMA warm-up --------------------------------------------------------------------------------------

def test_ema_warmup_accepts_solution(capsys):
    nb03.check_ema_warmup(lambda step, decay, warmup: min(decay, (1 + step) / (warmup + step)))
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "89,990" in out   # the step the full decay is reached, not ~10⁴


def test_full_decay_step_is_where_the_warmup_reaches_the_decay():
    from ddpm_lite.ema import EMA
    for decay, warmup in ((0.9999, 10), (0.999, 10), (0.99, 5)):
        k = nb03.full_decay_step(decay, warmup)
        ema = EMA(torch.nn.Linear(1, 1), decay=decay, warmup=warmup)
        assert ema.current_decay(k) == decay and ema.current_decay(k - 1) < decay
        assert abs(k - (warmup * decay - 1) / (1 - decay)) <= 1      # the closed form k = (w·d − 1)/(1 − d)
    assert nb03.full_decay_step(0.9999, 10) == 89_990


@pytest.mark.parametrize("fn, match", [
    (lambda step, decay, warmup: decay, "step 0"),
    (lambda step, decay, warmup: (1 + step) / (warmup + step), "cap the decay"),
    (lambda step, decay, warmup: min(decay, step / (warmup + step)), "expected"),
    (lambda step, decay, warmup: [decay, decay], "one number"),
])
def test_ema_warmup_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb03.check_ema_warmup(fn)


# -- all checks ---------------------------------------------------------------------------------------------------

def _todo(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("check", [nb03.check_simple_loss, nb03.check_ema_update, nb03.check_ema_warmup])
def test_student_placeholder_raises_not_implemented(check):
    """The student copy's `raise NotImplementedError()` surfaces unchanged (not as a wrong answer)."""
    with pytest.raises(NotImplementedError):
        check(_todo)


@pytest.mark.parametrize("check", [nb03.check_simple_loss, nb03.check_ema_update, nb03.check_ema_warmup])
def test_checks_report_crashes_and_non_functions(check):
    def broken(*args):
        raise RuntimeError("boom")

    with pytest.raises(ExerciseError, match="RuntimeError: boom"):
        check(broken)
    with pytest.raises(ExerciseError, match="pass your function"):
        check(0.5)
