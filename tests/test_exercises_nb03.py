"""The checks of notebook 03 (the network) pass the reference solutions and reject typical mistakes, each by name."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb03 as nbn
from ddpm_lite.unet import timestep_embedding, unet_preset


def _todo(*args):
    raise NotImplementedError()


# -- exercise 1: the time embedding ------------------------------------------------------------------------------

def embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], 1)


def _emb(t, dim, denom=None, sign=-1.0, order="sincos", scale=1.0):
    half = dim // 2
    freqs = torch.exp(sign * math.log(10000.0) * torch.arange(half) / (denom or half)) * scale
    a = t.float()[:, None] * freqs[None]
    if order == "cossin":
        return torch.cat([a.cos(), a.sin()], 1)
    if order == "interleaved":
        return torch.stack([a.sin(), a.cos()], 2).reshape(len(t), dim)
    return torch.cat([a.sin(), a.cos()], 1)


def test_time_embedding_reference_passes(capsys):
    nbn.check_time_embedding(embedding)
    nbn.check_time_embedding(timestep_embedding)
    assert capsys.readouterr().out.count("Correct") == 2


@pytest.mark.parametrize("wrong, message", [
    (lambda t, d: _emb(t, d, order="cossin"), "sin and cos are swapped"),
    (lambda t, d: _emb(t, d, order="interleaved"), "interleaved"),
    (lambda t, d: _emb(t, d, sign=1.0), "frequencies grow"),
    (lambda t, d: _emb(t, d, denom=d // 2 - 1), "half − 1"),
    (lambda t, d: _emb(t, d, scale=2 * math.pi), "no 2π"),
    (lambda t, d: _emb(t, d).round(), "real-valued"),
    (lambda t, d: _emb(t, d).T, "transposed"),
    (lambda t, d: _emb(t, d)[:, : d // 2], "return shape"),
    (lambda t, d: _emb(torch.zeros_like(t), d), "right at t = 0 only"),
])
def test_time_embedding_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nbn.check_time_embedding(wrong)


# -- exercise 2: the ResBlock forward ---------------------------------------------------------------------------

def resblock(block, x, emb):
    h = block.conv1(F.silu(block.norm1(x)))
    h = h + block.emb_proj(F.silu(emb))[:, :, None, None]
    return block.skip(x) + block.conv2(block.dropout(F.silu(block.norm2(h))))


def test_resblock_reference_passes(capsys):
    nbn.check_resblock_forward(resblock)
    nbn.check_resblock_forward(lambda b, x, e: b(x, e))
    assert capsys.readouterr().out.count("Correct") == 2


def _h1(b, x):
    return b.conv1(F.silu(b.norm1(x)))


def _e(b, emb):
    return b.emb_proj(F.silu(emb))[:, :, None, None]


@pytest.mark.parametrize("wrong, message", [
    (lambda b, x, e: b.skip(x) + b.conv2(F.silu(b.norm2(_h1(b, x)) + _e(b, e))), "before\\* the second GroupNorm"),
    (lambda b, x, e: b.skip(x) + b.conv2(F.silu(b.norm2(_h1(b, x) + b.emb_proj(e)[:, :, None, None]))),
     "through SiLU before its projection"),
    (lambda b, x, e: b.conv2(F.silu(b.norm2(_h1(b, x) + _e(b, e)))), "skip connection is missing"),
    (lambda b, x, e: b.skip(x) + b.conv2(F.silu(b.norm2(b.conv1(b.norm1(F.silu(x))) + _e(b, e)))), "wrong order"),
    (lambda b, x, e: b.skip(x) + b.conv2(b.norm2(F.silu(_h1(b, x) + _e(b, e)))), "GroupNorm, then SiLU"),
    (lambda b, x, e: b.skip(x)[:, :1], "should have shape"),
])
def test_resblock_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nbn.check_resblock_forward(wrong)


def test_resblock_identity_skip_mistake_is_named():
    """x + h instead of skip(x) + h: on the 8 → 16 channel block it cannot even be added (reported as an error)."""
    with pytest.raises(ExerciseError, match="raised RuntimeError"):
        nbn.check_resblock_forward(lambda b, x, e: x + b.conv2(F.silu(b.norm2(_h1(b, x) + _e(b, e)))))


def test_unanswered():
    with pytest.raises(NotAnsweredError):
        nbn.check_time_embedding(_todo)
    with pytest.raises(NotAnsweredError):
        nbn.check_resblock_forward(_todo)


# -- predict, then run ---------------------------------------------------------------------------------------------

def test_init_prediction(capsys):
    assert nbn.commit_init_prediction("B") == "b"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nbn.commit_init_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nbn.commit_init_prediction("zero")
    x = torch.randn(2, 1, 8, 8)
    assert nbn.init_truth(torch.zeros_like(x), x) == "b"
    assert nbn.init_truth(x.clone(), x) == "c"
    assert nbn.init_truth(torch.randn(2, 1, 8, 8), x) == "a"
    torch.manual_seed(0)
    model = unet_preset("digits")
    with torch.no_grad():
        out = model(x, torch.tensor([3, 900]), torch.tensor([1, 2]))
    capsys.readouterr()
    assert nbn.reveal_init("b", out, x) is True
    assert "Right" in capsys.readouterr().out
    for wrong in ("a", "c"):
        assert nbn.reveal_init(wrong, out, x) is False
        assert "Not what happened" in capsys.readouterr().out
