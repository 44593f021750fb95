"""Captioned digits (ddpm_lite.captions) and the word-level tokenizer (ddpm_lite.tokenizer)."""

import random

import pytest
import torch

from ddpm_lite import captions as cap
from ddpm_lite.data import load_dataset
from ddpm_lite.tokenizer import END, START, Tokenizer, split_words


def blank(size=28):
    return torch.full((1, 1, size, size), -1.0)


def bar(width, size=28, top=4, bottom=24, left=12):
    """A vertical white bar `width` pixels wide (a stroke of known width) on black."""
    x = blank(size)
    x[..., top:bottom, left:left + width] = 1.0
    return x


def sheared_line(shear, size=28):
    """A one-pixel line whose x moves `shear` pixels per row going up (> 0 leans right)."""
    x = blank(size)
    for row in range(4, 24):
        col = round(14 + shear * (14 - row))
        x[0, 0, row, col] = 1.0
    return x


# -- measurements -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_stroke_thickness_measures_the_width_of_a_bar(width):
    # a bar of width w and height 20: A = 20 w, P = 2 (20 + w), so 2A/P = 20 w / (20 + w) -> w for long strokes
    w = float(cap.stroke_thickness(bar(width)))
    assert w == pytest.approx(20 * width / (20 + width), rel=1e-6)
    assert cap.stroke_thickness(bar(width + 1)) > cap.stroke_thickness(bar(width))


def test_stroke_thickness_of_an_empty_image_is_zero():
    assert float(cap.stroke_thickness(blank())) == 0.0


def test_slant_sign_and_size_follow_the_shear():
    assert float(cap.slant(sheared_line(0.0))) == pytest.approx(0.0, abs=1e-6)
    right, left = float(cap.slant(sheared_line(0.4))), float(cap.slant(sheared_line(-0.4)))
    assert right == pytest.approx(0.4, abs=0.05) and left == pytest.approx(-0.4, abs=0.05)
    assert float(cap.slant(blank())) == 0.0


def test_thresholds_are_the_data_quantiles_and_describe_uses_them():
    x = torch.cat([bar(w) for w in (1, 2, 3, 4, 5, 6)] + [sheared_line(s) for s in (-0.5, 0.0, 0.5)])
    t = cap.AttributeThresholds.from_images(x)
    w, s = cap.stroke_thickness(x), cap.slant(x)
    assert t.thin == pytest.approx(float(torch.quantile(w, 1 / 3)))
    assert t.right == pytest.approx(float(torch.quantile(s, 0.8)))
    described = t.describe(x)
    for wi, si, d in zip(w.tolist(), s.tolist(), described):
        assert d["thickness"] == ("thin" if wi < t.thin else "thick" if wi > t.thick else None)
        assert d["slant"] == ("left" if si < t.left else "right" if si > t.right else None)
    with pytest.raises(ValueError, match="quantiles"):
        cap.AttributeThresholds.from_images(x, thickness_quantiles=(0.7, 0.3))


def test_measurements_need_grey_images():
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        cap.stroke_thickness(torch.zeros(2, 3, 8, 8))


# -- transformations ------------------------------------------------------------------------------------------

def test_transformations_do_what_their_words_say():
    x = load_dataset("mnist5k").images[::1000]
    ink = (x + 1) / 2
    assert torch.equal(cap.transform_images(x, [("upside_down",)] * 4), torch.rot90(x, 2, (-2, -1)))
    assert torch.equal(cap.transform_images(x, ["inverted"] * 4), -x)
    cols = torch.arange(28.0)

    def centre(images):
        m = (images + 1) / 2
        return (m.sum(-2) * cols).sum(-1) / m.sum((-2, -1))

    dx = cap.shift_pixels(28)
    assert dx == 4 and cap.shift_pixels(8) == 1
    left = cap.transform_images(x, [("shift_left",)] * 4)
    right = cap.transform_images(x, [("shift_right",)] * 4)
    assert torch.all(centre(left) < centre(x) - dx + 0.6) and torch.all(centre(right) > centre(x) + dx - 0.6)
    small = (cap.transform_images(x, [("small",)] * 4) + 1) / 2
    assert torch.all(small.sum((-2, -1)) < 0.5 * ink.sum((-2, -1)))  # 60% size: ~36% of the ink
    both = cap.transform_images(x, [("small", "inverted")] * 4)
    assert torch.allclose(both, -cap.transform_images(x, [("small",)] * 4))
    with pytest.raises(ValueError, match="unknown transformations"):
        cap.transform_images(x[:1], [("sideways",)])
    with pytest.raises(ValueError, match="both left and right"):
        cap.transform_images(x[:1], [("shift_left", "shift_right")])


# -- facts, captions, held-out combinations --------------------------------------------------------------------

def test_captions_state_every_transformation_and_only_true_facts():
    ds = load_dataset("mnist5k")
    x, y = ds.images[::10], ds.labels[::10]  # the file is sorted by class: every tenth digit covers all ten
    t = cap.AttributeThresholds.from_images(ds.images)
    rng = random.Random(0)
    images, texts, facts = cap.measure_and_caption(x, y, t, rng)
    measured = t.describe(x)  # measured on the digits as written, before transforming
    for text, f, m, label in zip(texts, facts, measured, y.tolist()):
        words = split_words(text)
        assert f["label"] == label and (cap.NUMBER_WORDS[label] in words or str(label) in words)
        assert f["thickness"] == m["thickness"] and f["slant"] == m["slant"]
        for word in ("thin", "thick"):
            assert word not in words or f["thickness"] == word, text
        if f["slant"] is None:
            assert "slanted" not in words, text
        else:
            assert "slanted to the " + {"left": "right", "right": "left"}[f["slant"]] not in text
        for name, phrase in (("upside_down", "upside-down"), ("inverted", "black on white"),
                             ("shift_left", "shifted to the left"), ("shift_right", "shifted to the right"),
                             ("small", "small")):
            assert (phrase in text) == (name in f["transforms"]), (text, f)
        assert ("upright" in words) <= ("upside_down" not in f["transforms"])
        assert ("large" in words) <= ("small" not in f["transforms"])
        assert ("white on black" in text) <= ("inverted" not in f["transforms"])
    # the transformations were applied to the returned images
    for i, f in enumerate(facts):
        assert torch.equal(images[i:i + 1], cap.transform_images(x[i:i + 1], [f["transforms"]]))
    assert len(set(texts)) > 200  # the templates vary the wording


def test_held_out_combinations_never_occur_in_training_captions():
    rng = random.Random(1)
    labels = [k for _, k in cap.HELD_OUT] * 500
    drawn = cap.sample_transforms(labels, rng)
    assert not any(cap.is_held_out(t, k) for t, k in zip(drawn, labels))
    assert any(t for t in drawn)  # the digits still get their other transformations
    allowed = cap.sample_transforms(labels, random.Random(1), allow_held_out=True)
    assert any(cap.is_held_out(t, k) for t, k in zip(allowed, labels))  # the filter is what removes them


def test_articles_and_probe_captions():
    assert cap.probe_captions("thickness", 8) == ("a thin eight", "a thick eight")
    assert cap.probe_captions("orientation", 1) == ("an upright one", "an upside-down one")
    assert cap.probe_captions("position", 8) == ("an eight, shifted to the left", "an eight, shifted to the right")
    with pytest.raises(ValueError, match="unknown attribute"):
        cap.probe_captions("colour", 1)


# -- tokenizer ------------------------------------------------------------------------------------------------

def test_tokenizer_round_trip_over_generated_captions():
    tok = Tokenizer(cap.VOCAB)
    ds = load_dataset("mnist5k")
    t = cap.AttributeThresholds.from_images(ds.images)
    _, texts, _ = cap.measure_and_caption(ds.images[::8], ds.labels[::8], t, random.Random(2))
    ids = tok.encode(texts, unknown="error")  # every word a template uses is in the vocabulary
    assert ids.shape == (500, tok.context_length) and ids.dtype == torch.long
    assert tok.decode(ids) == [" ".join(split_words(s)).replace(" ,", ",") for s in texts]
    assert torch.all(ids[:, 0] == tok.start_id)
    ends = tok.end_positions(ids)
    assert torch.all(ids[torch.arange(500), ends] == tok.end_id)
    assert torch.all((ids == tok.pad_id) == (torch.arange(tok.context_length)[None] > ends[:, None]))


def test_longest_possible_caption_fits_the_default_context():
    facts = {"label": 8, "thickness": "thin", "slant": "left", "orientation": "upside-down",
             "colours": "black on white", "position": "left", "size": "small",
             "transforms": ("small", "shift_left", "upside_down", "inverted")}

    class Always(random.Random):  # every optional phrase said, the longest template (the listing one)
        def random(self):
            return 0.0

        def randrange(self, n):
            return 1

    text = cap.caption(facts, Always())
    assert text.startswith("the digit 8, small, thin, upside-down, ") and len(split_words(text)) == 23
    assert len(split_words(text)) + 2 <= Tokenizer(cap.VOCAB).context_length


def test_tokenizer_unknown_words_and_limits():
    tok = Tokenizer(cap.VOCAB)
    ids = tok.encode("A purple seven.")
    assert ids[0, :4].tolist() == [tok.start_id, tok.stoi["a"], tok.unk_id, tok.stoi["seven"]]
    assert tok.decode(ids[0]) == "a <unk> seven"
    assert tok.unknown_words("a purple seven on a cat") == ["purple", "cat"]
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        tok.encode("a purple seven", unknown="error")
    with pytest.raises(ValueError, match="unknown="):
        tok.encode("a seven", unknown="ignore")
    with pytest.raises(ValueError, match="context length 32"):
        tok.encode(" ".join(["seven"] * 31))
    assert tok.encode(START)[0, 1] == tok.unk_id  # special tokens typed as words are not special
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer(["a", END])
    with pytest.raises(ValueError, match="repeated"):
        Tokenizer(["a", "a"])
    with pytest.raises(TypeError, match="str"):
        tok.encode([7])
