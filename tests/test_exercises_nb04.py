"""The checks of notebook 04 accept the reference solutions and reject typical wrong answers."""

import pytest
import torch
import torch.nn.functional as F

from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.exercises import ExerciseError, NotAnsweredError, nb04


# -- exercise 2: L_simple by hand ---------------------------------------------------------------------------------

def solution_l_simple(model, x0, t, noise, alphas_cumprod, y):
    a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return ((model(x_t, t, y) - noise) ** 2).mean()


def test_simple_loss_accepts_solution(capsys):
    nb04.check_simple_loss(solution_l_simple)
    assert "✅ Correct" in capsys.readouterr().out


def test_simple_loss_accepts_mse_loss():
    import torch.nn.functional as F

    def fn(model, x0, t, noise, ab, y):
        a = ab[t][:, None, None, None]
        return F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y), noise)

    nb04.check_simple_loss(fn)


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
        nb04.check_simple_loss(fn)


# -- exercise 3: EMA update ---------------------------------------------------------------------------------------

@torch.no_grad()
def solution_ema_update(shadow, model, decay):
    for s, p in zip(shadow.parameters(), model.parameters()):
        s.mul_(decay).add_(p, alpha=1 - decay)


def test_ema_update_accepts_solution(capsys):
    nb04.check_ema_update(solution_ema_update)
    assert "✅ Correct" in capsys.readouterr().out


def test_ema_update_accepts_lerp():
    @torch.no_grad()
    def fn(shadow, model, decay):
        for s, p in zip(shadow.parameters(), model.parameters()):
            s.lerp_(p, 1 - decay)

    nb04.check_ema_update(fn)


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
        nb04.check_ema_update(fn)


# -- exercise 4: EMA warm-up --------------------------------------------------------------------------------------

def test_ema_warmup_accepts_solution(capsys):
    nb04.check_ema_warmup(lambda step, decay, warmup: min(decay, (1 + step) / (warmup + step)))
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "89,990" in out   # the step the full decay is reached, not ~10⁴


def test_full_decay_step_is_where_the_warmup_reaches_the_decay():
    from ddpm_lite.ema import EMA
    for decay, warmup in ((0.9999, 10), (0.999, 10), (0.99, 5)):
        k = nb04.full_decay_step(decay, warmup)
        ema = EMA(torch.nn.Linear(1, 1), decay=decay, warmup=warmup)
        assert ema.current_decay(k) == decay and ema.current_decay(k - 1) < decay
        assert abs(k - (warmup * decay - 1) / (1 - decay)) <= 1      # the closed form k = (w·d − 1)/(1 − d)
    assert nb04.full_decay_step(0.9999, 10) == 89_990


@pytest.mark.parametrize("fn, match", [
    (lambda step, decay, warmup: decay, "step 0"),
    (lambda step, decay, warmup: (1 + step) / (warmup + step), "cap the decay"),
    (lambda step, decay, warmup: min(decay, step / (warmup + step)), "expected"),
    (lambda step, decay, warmup: [decay, decay], "one number"),
])
def test_ema_warmup_rejects_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        nb04.check_ema_warmup(fn)


# -- exercise 1 (in §1): the training step the notebook's loop runs ------------------------------------------------

def solution_training_step(model, opt, diffusion, x0, y, t, noise):
    x_t = diffusion.q_sample(x0, t, noise)
    loss = F.mse_loss(model(x_t, t, y), noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_training_step_accepts_solution(capsys):
    nb04.check_training_step(solution_training_step)
    assert "✅ Correct" in capsys.readouterr().out


def test_training_step_accepts_variants():
    def by_hand(model, opt, diffusion, x0, y, t, noise):   # eq. 4 by hand, training_losses' mean, a 0-d tensor back
        a = diffusion.schedule.alphas_cumprod.float()[t].reshape(-1, 1, 1, 1)
        opt.zero_grad(set_to_none=False)
        loss = ((model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y) - noise) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    def packaged(model, opt, diffusion, x0, y, t, noise):
        loss = diffusion.training_losses(model, x0, t=t, noise=noise, y=y)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    nb04.check_training_step(by_hand)
    nb04.check_training_step(packaged)


def _planted(kind):
    def fn(model, opt, diffusion, x0, y, t, noise):
        x_t = x0 if kind == "clean" else diffusion.q_sample(x0, t, noise)
        if kind == "no_sqrt":
            a = diffusion.schedule.alphas_cumprod.float()[t].reshape(-1, 1, 1, 1)
            x_t = a * x0 + (1 - a) * noise
        if kind == "off_by_one":
            x_t = diffusion.q_sample(x0, (t + 1).clamp(max=999), noise)
        out = model(x_t, t) if kind == "no_labels" else model(x_t, t, y)
        target = x0 if kind == "target_x0" else noise
        loss = ((out - target) ** 2).sum() if kind == "sum" else F.mse_loss(out, target)
        if kind == "no_zero_grad":
            loss.backward(); opt.step()
        elif kind == "step_first":
            opt.zero_grad(); opt.step(); loss.backward()
        elif kind == "zero_after_backward":
            loss.backward(); opt.zero_grad(); opt.step()
        elif kind == "no_backward":
            opt.zero_grad(); opt.step()
        elif kind == "no_step":
            opt.zero_grad(); loss.backward()
        elif kind == "own_optimizer":
            own = torch.optim.SGD(model.parameters(), lr=0.5)
            own.zero_grad(); loss.backward(); own.step()
        else:
            opt.zero_grad(); loss.backward(); opt.step()
        if kind == "tensor":
            return loss
        if kind == "none":
            return None
        if kind == "loss_after":
            return F.mse_loss(model(diffusion.q_sample(x0, t, noise), t, y), noise).item()
        return loss.item()
    return fn


@pytest.mark.parametrize("kind, match", [
    ("no_zero_grad", "previous step's gradients were added"),
    ("step_first", r"call opt.step\(\) \*after\* loss.backward\(\)"),
    ("no_step", "weights did not move although gradients were computed"),
    ("no_backward", "no gradient is left on them"),
    ("zero_after_backward", r"opt.zero_grad\(\) goes \*before\* backward"),
    ("clean", "clean x_0"),
    ("target_x0", "target of an ε-model is the noise"),
    ("no_sqrt", "square roots"),
    ("no_labels", "labels are missing"),
    ("sum", "sum of the squared errors"),
    ("off_by_one", "off by one"),
    ("own_optimizer", "use the `opt` passed in"),
    ("tensor", r"loss.item\(\)`, a plain float"),
    ("none", "returned None"),
    ("loss_after", "not this batch's loss"),
])
def test_training_step_rejects_mistakes(kind, match):
    with pytest.raises(ExerciseError, match=match):
        nb04.check_training_step(_planted(kind))


def test_training_step_unanswered():
    def placeholder(model, opt, diffusion, x0, y, t, noise):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb04.check_training_step(placeholder)


# -- predict, then run (§2): the first logged loss ------------------------------------------------------------------

def test_first_loss_commit_validates():
    assert nb04.commit_first_loss_prediction("B") == "b"
    with pytest.raises(ExerciseError, match="commit to an answer"):
        nb04.commit_first_loss_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb04.commit_first_loss_prediction("e")


def test_first_loss_truth_maps_measurements_to_choices():
    assert [nb04.first_loss_truth(v) for v in (1.5, 1.2, 1.0, 0.9, 0.805, 0.6, 0.59, 0.1)] == \
        ["d", "d", "a", "a", "b", "b", "c", "c"]


def test_mean_min_snr_weight_is_what_the_trainer_starts_from():
    """An ε̂ = 0 network's expected weighted loss is the mean weight over t: 0.82 for γ = 1 (notebook 04's text)."""
    weighted = GaussianDiffusion("linear", 1000, min_snr_gamma=1.0)
    w = nb04.mean_min_snr_weight(weighted)
    assert abs(w - 0.82) < 0.01
    assert nb04.mean_min_snr_weight(GaussianDiffusion("linear", 1000)) == 1.0
    assert w < nb04.mean_min_snr_weight(GaussianDiffusion("linear", 1000, min_snr_gamma=5.0)) < 1.0
    zero = lambda x, t, y=None: torch.zeros_like(x)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4096, 1, 8, 8, generator=gen) * 2 - 1
    measured = weighted.training_losses(zero, x0, generator=gen)["loss"].mean().item()
    assert abs(measured - w) < 0.03, (measured, w)


def test_first_loss_reveal_reports_right_and_wrong(capsys):
    weighted = GaussianDiffusion("linear", 1000, min_snr_gamma=1.0)
    assert nb04.reveal_first_loss("b", 0.805, weighted) is True
    out = capsys.readouterr().out
    assert "✅ Right" in out and "0.805" in out and "min-SNR-γ weighted (γ = 1)" in out and "average 0.82" in out
    for wrong in ("a", "c", "d"):
        assert nb04.reveal_first_loss(wrong, 0.805, weighted) is False
        out = capsys.readouterr().out
        assert "❌ Not what happened" in out and "it was (b)" in out and "Why:" in out
    assert nb04.reveal_first_loss("a", 0.99, GaussianDiffusion("linear", 1000)) is True
    assert "plain L_simple" in capsys.readouterr().out


# -- all checks ---------------------------------------------------------------------------------------------------

def _todo(*args):
    raise NotImplementedError()


ALL_CHECKS = [nb04.check_simple_loss, nb04.check_ema_update, nb04.check_ema_warmup, nb04.check_training_step]


@pytest.mark.parametrize("check", ALL_CHECKS)
def test_student_placeholder_raises_not_implemented(check):
    """The student copy's `raise NotImplementedError()` surfaces unchanged (not as a wrong answer)."""
    with pytest.raises(NotImplementedError):
        check(_todo)


@pytest.mark.parametrize("check", ALL_CHECKS)
def test_checks_report_crashes_and_non_functions(check):
    def broken(*args):
        raise RuntimeError("boom")

    with pytest.raises(ExerciseError, match="RuntimeError: boom"):
        check(broken)
    with pytest.raises(ExerciseError, match="pass your function"):
        check(0.5)
