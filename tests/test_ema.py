import pytest
import torch
import torch.nn as nn

from ddpm_lite.ema import EMA, unwrap_model


def _linear(value: float) -> nn.Linear:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_warmup_formula():
    ema = EMA(_linear(0.0), decay=0.9999, warmup=10)
    assert ema.current_decay(0) == pytest.approx(0.1)
    assert ema.current_decay(8) == pytest.approx(0.5)
    assert ema.current_decay(80) == pytest.approx(0.9)
    assert ema.current_decay(890) == pytest.approx(0.99)
    assert ema.current_decay(10**7) == pytest.approx(0.9999)  # capped at the target decay
    assert EMA(_linear(0.0), decay=0.99, warmup=None).current_decay(0) == 0.99
    assert EMA(_linear(0.0), decay=0.99, warmup=0).current_decay(0) == 0.99


def test_update_math_and_step_count():
    model = _linear(0.0)
    ema = EMA(model, decay=0.9, warmup=None)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.1)  # 0.9 * 0 + 0.1 * 1
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.19)
    assert ema.step == 2
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_converges_to_constant_weights():
    model = _linear(0.0)
    ema = EMA(model, decay=0.9, warmup=10)
    with torch.no_grad():
        model.weight.fill_(3.0)
    for _ in range(200):
        ema.update(model)
    assert ema.module.weight.item() == pytest.approx(3.0, abs=1e-6)


def test_warmup_avoids_ema_stuck_at_init():
    # the classic failure: decay 0.9999 without warm-up keeps the EMA at the random init for thousands of steps
    plain, warm = _linear(0.0), _linear(0.0)
    ema_plain = EMA(plain, decay=0.9999, warmup=None)
    ema_warm = EMA(warm, decay=0.9999, warmup=10)
    for _ in range(100):
        for m in (plain, warm):
            with torch.no_grad():
                m.weight.fill_(1.0)  # "trained" weights
        ema_plain.update(plain)
        ema_warm.update(warm)
    assert ema_plain.module.weight.item() < 0.02   # still ~ the init
    assert ema_warm.module.weight.item() > 0.99    # follows training


def test_buffers_copied_and_copy_to():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.99)
    model.train()
    model(torch.randn(8, 2) + 5.0)  # changes the BatchNorm running stats
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert ema.module[1].num_batches_tracked.item() == 1
    other = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema.copy_to(other)
    for a, b in zip(other.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert ema.averaged_model() is ema.module


def test_unwraps_ddp_like_wrappers():
    class Wrapper(nn.Module):  # DDP and DataParallel keep the model in .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    model = _linear(0.0)
    ema = EMA(Wrapper(model), decay=0.5, warmup=None)
    assert isinstance(ema.module, nn.Linear)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(Wrapper(model))
    assert ema.module.weight.item() == pytest.approx(1.0)
    assert unwrap_model(Wrapper(Wrapper(model))) is model


def test_state_dict_resumes_exactly():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    a = EMA(model, decay=0.999, warmup=10)
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(torch.randn(3, 3))
        a.update(model)
    b = EMA(nn.Linear(3, 3), decay=0.5, warmup=None)
    b.load_state_dict(a.state_dict())
    assert (b.step, b.decay, b.warmup) == (5, 0.999, 10)
    for ema in (a, b):
        ema.update(model)
    for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values()):
        assert torch.equal(x, y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="decay"):
        EMA(_linear(0.0), decay=1.0)
    with pytest.raises(ValueError, match="warmup"):
        EMA(_linear(0.0), warmup=-1)
    with pytest.raises(ValueError, match="missing keys"):
        EMA(_linear(0.0)).load_state_dict({"decay": 0.9})
