"""The checks of notebook 10 pass the reference solutions and reject typical mistakes."""

import pytest
import torch
import torch.nn.functional as F

from ddpm_lite.exercises import ExerciseError, NotAnsweredError
from ddpm_lite.exercises import nb10


# -- exercise 1: the symmetric InfoNCE loss -------------------------------------------------------------------------

def clip_loss(image_emb, text_emb, logit_scale):
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = logit_scale * image_emb @ text_emb.t()
    target = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _logits(i, t, s, norm=True, dim=-1):
    if norm:
        i, t = F.normalize(i, dim=dim), F.normalize(t, dim=dim)
    return s * i @ t.t()


def _both(logits, target=None, reduction="mean"):
    target = torch.arange(logits.shape[0]) if target is None else target
    return 0.5 * (F.cross_entropy(logits, target, reduction=reduction)
                  + F.cross_entropy(logits.t(), target, reduction=reduction))


def test_clip_loss_reference_passes(capsys):
    nb10.check_clip_loss(clip_loss)
    assert "Correct" in capsys.readouterr().out


def test_clip_loss_accepts_a_python_float_and_the_package(capsys):
    from ddpm_lite.clip import clip_loss as package_loss

    nb10.check_clip_loss(lambda i, t, s: float(clip_loss(i, t, s)))
    nb10.check_clip_loss(package_loss)
    nb10.check_clip_loss(lambda i, t, s: clip_loss(i, t, s).reshape(1))
    assert capsys.readouterr().out.count("Correct") == 3


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda i, t, s: F.cross_entropy(_logits(i, t, s), torch.arange(i.shape[0])), "one direction only \\(images"),
        (lambda i, t, s: F.cross_entropy(_logits(i, t, s).t(), torch.arange(i.shape[0])),
         "one direction only \\(captions"),
        (lambda i, t, s: 2 * clip_loss(i, t, s), "added the two directions"),
        (lambda i, t, s: clip_loss(i, t, 1.0), "no temperature"),
        (lambda i, t, s: clip_loss(i, t, 1 / s), "divided by logit_scale"),
        (lambda i, t, s: clip_loss(i, t, s.exp()), "without another exp"),
        (lambda i, t, s: _both(_logits(i, t, s, norm=False)), "must be L2-normalised"),
        (lambda i, t, s: _both(s * F.normalize(i, dim=-1) @ t.t()), "normalise the text embeddings too"),
        (lambda i, t, s: _both(s * i @ F.normalize(t, dim=-1).t()), "normalise the image embeddings too"),
        (lambda i, t, s: _both(_logits(i, t, s, dim=0)), "wrong dimension"),
        (lambda i, t, s: _both(_logits(i, t, s), reduction="sum"), "summed the cross-entropy over the pairs"),
        (lambda i, t, s: 2 * _both(_logits(i, t, s), reduction="sum"), "summed over the pairs and over the two"),
        (lambda i, t, s: _both(_logits(i, t, s), target=torch.zeros(i.shape[0], dtype=torch.long)), "not all zeros"),
        (lambda i, t, s: _both(_logits(i, t, s), target=torch.arange(i.shape[0]).flip(0)), "wrong targets"),
        (lambda i, t, s: _both(_logits(i, t, s).softmax(-1)), "not softmax probabilities"),
        (lambda i, t, s: 0.5 * sum(F.binary_cross_entropy_with_logits(lg, torch.eye(i.shape[0], dtype=i.dtype))
                                   for lg in (_logits(i, t, s), _logits(i, t, s).t())), "binary"),
        (lambda i, t, s: -_logits(i, t, s).diagonal().mean(), "not just maximised"),
        (lambda i, t, s: _both(_logits(i, t, s), reduction="none"), "one loss per pair"),
        (lambda i, t, s: _logits(i, t, s), "\\[N, N\\] matrix"),
        (lambda i, t, s: clip_loss(i, t, s).expand(3), "one number"),
        (lambda i, t, s: clip_loss(i, t, s) + 0.1, "expected"),
        (lambda i, t, s: clip_loss(i, t, s) * float("nan"), "NaN"),
        (lambda i, t, s: None, "None"),
    ],
)
def test_clip_loss_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb10.check_clip_loss(wrong)


def test_clip_loss_not_answered():
    def todo(i, t, s):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb10.check_clip_loss(todo)


# -- exercise 2: zero-shot prediction with prompt ensembling --------------------------------------------------------

def zero_shot_predict(image_emb, template_embs):
    class_emb = F.normalize(template_embs.mean(0), dim=-1)
    return (image_emb @ class_emb.t()).argmax(dim=1)


def test_zero_shot_reference_passes(capsys):
    nb10.check_zero_shot(zero_shot_predict)
    # a softmax over the classes, a sum instead of the mean, or a list of ints, change nothing
    nb10.check_zero_shot(lambda im, te: (100 * im @ F.normalize(te.sum(0), dim=-1).t()).softmax(-1).argmax(-1))
    nb10.check_zero_shot(lambda im, te: zero_shot_predict(im, te).tolist())
    assert capsys.readouterr().out.count("Correct") == 3


def test_zero_shot_agrees_with_the_model():
    """The check's reference is what CLIP.zero_shot_classify computes from the model's own embeddings."""
    from ddpm_lite import captions as cap
    from ddpm_lite.clip import CLIP

    torch.manual_seed(0)
    model = CLIP(image_size=8, embed_dim=16, image_channels=(8, 8, 16), image_width=32, text_width=32,
                 text_layers=1, text_heads=2).eval()
    x = torch.rand(12, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        templates = torch.stack([model.encode_text([t.format(n) for n in cap.NUMBER_WORDS])
                                 for t in cap.ZERO_SHOT_TEMPLATES])
        expected = model.zero_shot_classify(x).argmax(1)
        assert torch.equal(nb10._ensemble_predict(model.encode_image(x), templates), expected)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda im, te: (im @ te.mean(0).t()).argmax(1), "did not re-normalise"),
        (lambda im, te: torch.einsum("bd,tkd->btk", im, te).mean(1).argmax(1), "did not re-normalise"),
        (lambda im, te: (im @ F.normalize(te.mean(1), dim=-1).t()).argmax(1), "over the classes \\(dim 1\\)"),
        (lambda im, te: torch.einsum("bd,tkd->btk", im, te).amax(1).argmax(1), "best template"),
        (lambda im, te: (im @ te[0].t()).argmax(1), "template 0 alone"),
        (lambda im, te: (im @ te[-1].t()).argmax(1), "template 2 alone"),
        (lambda im, te: (100 * im @ F.normalize(te.mean(0), dim=-1).t()).softmax(0).argmax(1), "softmax over the images"),
        (lambda im, te: (im @ F.normalize(te.mean(0), dim=-1).t()).softmax(0).argmax(1), "softmax over the images"),
        (lambda im, te: (7 * im @ F.normalize(te.mean(0), dim=-1).t()).softmax(0).argmax(1),
         "changes with the other images"),
        (lambda im, te: (im @ F.normalize(te.mean(0), dim=-1).t()).argmax(0), "argmax over the images"),
        (lambda im, te: im @ F.normalize(te.mean(0), dim=-1).t(), "scores of shape \\[B, K\\]"),
        (lambda im, te: (im @ F.normalize(te.mean(0), dim=-1).t()).max(1).values, "class indices"),
        (lambda im, te: zero_shot_predict(im, te)[:-1], "one class index per image"),
        (lambda im, te: (zero_shot_predict(im, te) + 1) % 10, "predictions differ"),
        (lambda im, te: zero_shot_predict(im, te) if im.dtype == torch.float64 else zero_shot_predict(im, te) * 0,
         "second one"),
        (lambda im, te: None, "None"),
    ],
)
def test_zero_shot_rejects_mistakes(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb10.check_zero_shot(wrong)


def test_zero_shot_not_answered():
    def todo(im, te):
        raise NotImplementedError()

    with pytest.raises(NotAnsweredError):
        nb10.check_zero_shot(todo)


# -- predict, then run: the upside-down seven --------------------------------------------------------------------------

def test_upside_down_prediction_commit_and_reveal(capsys):
    assert nb10.commit_upside_down_prediction("c") == "c"
    with pytest.raises(ExerciseError, match="commit to an answer first"):
        nb10.commit_upside_down_prediction(None)
    with pytest.raises(ExerciseError, match="not one of the choices"):
        nb10.commit_upside_down_prediction("seven")
    # the truth comes from the measured share, never typed in
    assert [nb10.upside_down_truth(v) for v in (1.0, 0.61, 0.6, 0.2, 0.19, 0.0)] == ["a", "a", "b", "b", "c", "c"]
    capsys.readouterr()
    assert nb10.reveal_upside_down("c", 0.0, "six") is True
    out = capsys.readouterr().out
    assert "Right" in out and "0%" in out and '"six"' in out and "Why:" in out
    for wrong in ("a", "b"):   # both wrong predictions are said to be wrong, with the reasoning
        assert nb10.reveal_upside_down(wrong, 0.0) is False
        out = capsys.readouterr().out
        assert "Not what happened" in out and "new one" in out
    assert nb10.reveal_upside_down("a", 0.9) is True
