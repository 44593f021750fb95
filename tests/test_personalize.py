"""DreamBooth (ddpm_lite.personalize), its subject (ddpm_lite.subjects) and the `dreambooth` CLI command."""

import math

import numpy as np
import pytest
import torch

from ddpm_lite import captions as cap
from ddpm_lite import checkpoint as ckpt
from ddpm_lite import personalize as P
from ddpm_lite import subjects as S
from ddpm_lite.__main__ import main
from ddpm_lite.clip import CLIP
from ddpm_lite.conditioning import TextCondition
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.pipeline import TextToImage
from ddpm_lite.unet import UNet

TINY_CLIP = dict(embed_dim=16, image_channels=(8, 8, 16), image_width=32, text_width=32, text_layers=1, text_heads=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny pixel-space text-to-image checkpoint on 8×8 digits (random weights, a little perturbed so that the
    text matters) with its text encoder: enough to run DreamBooth end to end in a second."""
    torch.manual_seed(0)
    x = load_dataset("digits").images
    clip = CLIP(image_size=8, **TINY_CLIP, caption_thresholds=cap.AttributeThresholds.from_images(x).to_dict())
    clip_dir = tmp_path_factory.mktemp("clip") / "clip"
    ckpt.save_pretrained(clip_dir, clip)
    encoder = ckpt.load_text_encoder(clip_dir)
    model = UNet(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=2, dropout=0.0, num_groups=8, context_dim=32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    diffusion = GaussianDiffusion(timesteps=100, min_snr_gamma=5.0)
    path = tmp_path_factory.mktemp("t2i") / "tiny"
    ckpt.save_pretrained(path, model, diffusion, text_encoder=encoder,
                         extra={"dataset": "digits", "sample_shape": [1, 8, 8], "image_shape": [1, 8, 8]})
    return path


@pytest.fixture
def pipe(tiny_dir):
    return TextToImage.from_pretrained(tiny_dir)


def subject8(n=3):
    """Three 8×8 "subject" images: hollow sevens of the 8×8 digits."""
    x, y = load_dataset("digits", "test").tensors
    return S.outline(x[y == 7][:n], grow=1)


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


# -- the loss ----------------------------------------------------------------------------------------------------

class Affine(torch.nn.Module):
    """ε̂ = a·x_t + b·mean(context) + c·t/1000: simple enough to compute the loss by hand."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Parameter(torch.tensor(v)) for v in (0.3, -0.5, 0.2))

    def forward(self, x, t, context=None, context_mask=None):
        return self.a * x + self.b * context.mean() + self.c * (t.float() / 1000).view(-1, 1, 1, 1)


def _cond(value, n):
    ctx = torch.full((n, 2, 3), float(value))
    mask = torch.ones(n, 2, dtype=torch.bool)
    return TextCondition(ctx, mask, torch.zeros(2, 3), mask[0])


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_prior_preservation_loss_matches_a_hand_computed_case(gamma):
    diffusion = GaussianDiffusion(timesteps=1000, min_snr_gamma=gamma)
    model = Affine()
    g = torch.Generator().manual_seed(0)
    x, xp = torch.randn(2, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    e, ep = torch.randn(2, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    t, tp = torch.tensor([10, 700]), torch.tensor([0, 300, 999])
    lam = 0.7
    out = P.prior_preservation_loss(model, diffusion, x, _cond(1.0, 2), xp, _cond(-2.0, 3), lam, t, e, tp, ep)

    ab = diffusion.schedule.alphas_cumprod.double()

    def by_hand(x0, eps, ts, ctx_mean):
        total = 0.0
        for i in range(x0.shape[0]):
            a_bar = float(ab[ts[i]])
            xt = math.sqrt(a_bar) * x0[i].double() + math.sqrt(1 - a_bar) * eps[i].double()
            pred = 0.3 * xt - 0.5 * ctx_mean + 0.2 * float(ts[i]) / 1000
            mse = float(((pred - eps[i].double()) ** 2).mean())
            if gamma is not None:  # min-SNR-γ for ε-prediction: min(SNR, γ) / SNR
                snr = a_bar / (1 - a_bar)
                mse *= min(snr, gamma) / snr
            total += mse
        return total / x0.shape[0]

    inst, prior = by_hand(x, e, t, 1.0), by_hand(xp, ep, tp, -2.0)
    assert out["instance"].item() == pytest.approx(inst, rel=1e-5)
    assert out["prior"].item() == pytest.approx(prior, rel=1e-5)
    assert out["loss"].item() == pytest.approx(inst + lam * prior, rel=1e-5)
    # λ = 0 or no class images: plain fine-tuning
    assert P.prior_preservation_loss(model, diffusion, x, _cond(1.0, 2), None, None, 1.0, t, e)["loss"].item() == \
        pytest.approx(inst, rel=1e-5)
    assert P.prior_preservation_loss(model, diffusion, x, _cond(1.0, 2), xp, _cond(-2.0, 3), 0.0, t, e, tp,
                                     ep)["prior"].item() == 0.0
    with pytest.raises(ValueError, match="prior_weight"):
        P.prior_preservation_loss(model, diffusion, x, _cond(1.0, 2), xp, _cond(-2.0, 3), -1.0)


# -- the identifier token ---------------------------------------------------------------------------------------------

def test_with_tokens_adds_a_weak_prior_word_and_keeps_old_prompts(pipe):
    te = pipe.text_encoder
    new = te.with_tokens(["sks"])
    assert "sks" not in te.tokenizer.stoi and new.tokenizer.stoi["sks"] == len(te.tokenizer)
    for p in ("a seven", "a thick two, shifted to the left", ""):
        assert torch.equal(new.encode(p).context, te.encode(p).context)
    emb = new.text_encoder.token_embedding.weight
    assert torch.equal(emb[new.tokenizer.stoi["sks"]], emb[new.tokenizer.unk_id])
    # initialised from <unk>: the new word reads exactly as any unknown word did
    assert torch.allclose(new.encode("a sks seven").context, te.encode("a zzz seven", unknown="unk").context)
    assert not new.text_encoder.token_embedding.weight.requires_grad
    thick = te.with_tokens("qqq", init_from="thick")
    assert torch.allclose(thick.encode("a qqq seven").context, te.encode("a thick seven").context)
    with pytest.raises(ValueError, match="already in the vocabulary"):
        te.with_tokens(["seven"])
    with pytest.raises(ValueError, match="not one word"):
        te.with_tokens(["two words"])
    with pytest.raises(ValueError, match="init_from"):
        te.with_tokens(["sks"], init_from="purple")


# -- fine-tuning --------------------------------------------------------------------------------------------------

def test_dreambooth_trains_a_copy_and_leaves_the_frozen_model_untouched(pipe):
    before_model, before_text = state(pipe.model), state(pipe.text_encoder)
    calls = []
    res = P.dreambooth(pipe, subject8(), steps=4, batch_size=2, prior_batch_size=2, num_class_images=4,
                       sample_steps=2, lr=1e-2, progress=False, callback=lambda step, p: calls.append(step))
    # the frozen model (that drew the class images) is bit-for-bit what it was, its encoder without [V]
    assert all(torch.equal(v, before_model[k]) for k, v in pipe.model.state_dict().items())
    assert all(torch.equal(v, before_text[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert "sks" not in pipe.text_encoder.tokenizer.stoi
    # the copy trained, is frozen again afterwards, and knows [V]
    tuned = res.pipe
    assert tuned.model is not pipe.model
    assert any(not torch.equal(v, before_model[k]) for k, v in tuned.model.state_dict().items())
    assert not any(p.requires_grad for p in tuned.model.parameters()) and not tuned.model.training
    assert "sks" in tuned.text_encoder.tokenizer.stoi
    assert res.class_images.shape == (4, 1, 8, 8) and calls == [1, 2, 3, 4]
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]
    assert all(h["prior"] > 0 and math.isfinite(h["loss"]) for h in res.history)
    images = tuned(["a sks seven", "a seven"], steps=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    # without prior preservation no class images are drawn and the prior term is 0
    plain = P.dreambooth(pipe, subject8(), steps=2, batch_size=2, prior_weight=0.0, progress=False)
    assert plain.class_images is None and all(h["prior"] == 0 for h in plain.history)


def test_which_weights_train(pipe):
    before = state(pipe.model)
    emb = P.dreambooth(pipe, subject8(), steps=3, batch_size=2, prior_weight=0.0, train="embedding", lr=0.1,
                       progress=False)
    assert all(torch.equal(v, before[k]) for k, v in emb.pipe.model.state_dict().items())  # U-Net frozen
    w_old = pipe.text_encoder.text_encoder.token_embedding.weight
    w_new = emb.pipe.text_encoder.text_encoder.token_embedding.weight
    row = emb.pipe.text_encoder.tokenizer.stoi["sks"]
    assert torch.equal(w_new[:row], w_old) and not torch.equal(w_new[row], w_old[pipe.text_encoder.tokenizer.unk_id])
    # the learned row is what the prompt now reads (no stale cache)
    fresh = emb.pipe.text_encoder.text_encoder(emb.pipe.text_encoder.tokenizer.encode(["a sks seven"]))
    assert torch.allclose(emb.pipe.text_encoder.encode("a sks seven").context, fresh)

    xat = P.dreambooth(pipe, subject8(), steps=2, batch_size=2, prior_weight=0.0, train="cross_attention",
                       lr=1e-2, progress=False)
    changed = {k for k, v in xat.pipe.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("cross_attn.to_k" in k or "cross_attn.to_v" in k for k in changed)
    with pytest.raises(ValueError, match="train="):
        P.DreamBoothConfig(train="lora")


def test_bad_subject_images_are_named(pipe):
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        P.dreambooth(pipe, torch.zeros(3, 1, 28, 28), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        P.dreambooth(pipe, torch.full((3, 1, 8, 8), 255.0), steps=1, progress=False)


def test_personalized_checkpoint_saves_loads_and_samples_from_the_cli(pipe, tiny_dir, tmp_path, capsys):
    res = P.dreambooth(pipe, subject8(), steps=2, batch_size=2, num_class_images=2, sample_steps=2, progress=False)
    out = P.save_personalized(tmp_path / "sks", res, subject_source="test")
    loaded = TextToImage.from_pretrained(out)
    assert "sks" in loaded.text_encoder.tokenizer.stoi
    cfg = ckpt.load_config(out)["extra"]["dreambooth"]
    assert cfg["instance_prompt"] == "a sks seven" and cfg["prior_weight"] == 1.0 and cfg["steps"] == 2
    a = res.pipe(["a sks seven"] * 2, steps=2, generator=torch.Generator().manual_seed(3))
    b = loaded(["a sks seven"] * 2, steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-5)

    # the CLI: subject PNGs in, checkpoint out, then `sample --prompt "a sks seven"`
    S.save_subject(subject8(), tmp_path / "subject")
    capsys.readouterr()
    assert main(["dreambooth", "--checkpoint", str(tiny_dir), "--subject", str(tmp_path / "subject"),
                 "--out", str(tmp_path / "cli"), "--steps", "2", "--num-class-images", "2", "--batch-size", "2",
                 "--no-progress"]) == 0
    assert "a sks seven" in capsys.readouterr().out
    arr = tmp_path / "x.npz"
    assert main(["sample", "--checkpoint", str(tmp_path / "cli"), "--prompt", "a sks seven", "--n", "2", "--steps",
                 "2", "--out", str(tmp_path / "x.png"), "--save-array", str(arr)]) == 0
    with np.load(arr) as f:
        assert f["images"].shape == (2, 1, 8, 8)
    # the original model does not know the word; bad input is one line
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tiny_dir), "--prompt", "a sks seven", "--out",
                 str(tmp_path / "y.png")]) == 2
    assert "unknown word 'sks'" in capsys.readouterr().err
    assert main(["dreambooth", "--checkpoint", str(tiny_dir), "--subject", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dreambooth", "--checkpoint", str(tiny_dir), "--subject", str(tmp_path / "subject"),
                 "--class-noun", "dragon", "--out", str(tmp_path / "z")]) == 2
    assert "unknown word 'dragon'" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


# -- measures ---------------------------------------------------------------------------------------------------------

def test_feature_distance_and_diversity():
    from ddpm_lite import metrics

    x, y = load_dataset("digits", "test").tensors
    clf = metrics.resolve_classifier(like=x)
    sevens, ones = x[y == 7][:20], x[y == 1][:20]
    assert P.feature_distance(sevens[:5], sevens[5:], clf).mean() < P.feature_distance(ones[:5], sevens[5:], clf).mean()
    assert P.diversity(sevens[:1].repeat(4, 1, 1, 1), clf) == pytest.approx(0.0, abs=1e-9)
    assert P.diversity(x[:20], clf) > P.diversity(sevens[:20], clf) * 0.5 > 0
    with pytest.raises(ValueError, match="two images"):
        P.diversity(x[:1], clf)


# -- the subject ----------------------------------------------------------------------------------------------------

def test_shipped_subject_is_reproducible_and_not_in_the_training_data():
    from pathlib import Path

    shipped = S.load_subject(Path(__file__).resolve().parents[1] / "assets" / "subjects" / "hollow-seven")
    assert shipped.shape == (4, 1, 28, 28)
    made = S.make_hollow_sevens(4, anchor=0)
    assert (shipped - made).abs().max() <= 1 / 255 + 1e-6  # the PNGs are the recorded command's output
    train = load_dataset("mnist5k", "train").tensors[0]
    held_out = load_dataset("mnist5k", "test").tensors[0]
    nv = S.novelty(shipped, train, held_out)
    assert (nv.pixel_percentile >= 0.98).all() and (nv.feature_percentile >= 0.99).all()
    # an ordinary held-out seven is not novel by the same test
    ordinary = S.novelty(held_out[:4], train, held_out)
    assert (ordinary.feature_percentile < 0.99).all()


def test_outline_and_same_hand():
    img = -torch.ones(1, 1, 12, 12)
    img[..., 4:8, 4:8] = 1  # a filled square
    hollow = S.outline(img, grow=1)
    assert hollow[0, 0, 5, 5] == -1 and hollow[0, 0, 3, 3] == 1  # its inside empty, an outline around it
    assert hollow[0, 0, 0, 0] == -1
    x = torch.randn(10, 1, 4, 4)
    idx = S.same_hand(x, 3, 4)
    assert idx[0] == 3 and len(set(idx.tolist())) == 4
    with pytest.raises(FileNotFoundError, match="does not exist"):
        S.load_subject("/nonexistent/subject")
