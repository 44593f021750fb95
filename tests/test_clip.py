"""CLIP (ddpm_lite.clip): the InfoNCE loss, encoders, zero-shot use, probes, training, checkpoints, CLI."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddpm_lite import captions as cap
from ddpm_lite import checkpoint as ckpt
from ddpm_lite.__main__ import main
from ddpm_lite.clip import CLIP, MAX_LOGIT_SCALE, ClipObjective, clip_loss, contrastive_loss, probe_attribute, probe_set
from ddpm_lite.data import load_dataset
from ddpm_lite.train import TrainConfig, Trainer

TINY = dict(embed_dim=16, image_channels=(8, 8, 16), image_width=32, text_width=32, text_layers=1, text_heads=2)


def tiny_clip(size=8, **kw):
    return CLIP(image_size=size, in_channels=1, **{**TINY, **kw})


def digits():
    ds = load_dataset("digits")
    return ds.images[:256], ds.labels[:256]


def clip_config(out=None, **kw):
    return TrainConfig(**{**dict(dataset="digits", objective="clip", max_steps=4, batch_size=32, lr=1e-3,
                                 out_dir=None if out is None else str(out), progress=False, log_every=2, sample_every=0, save_every=0,
                                 model_kwargs=TINY), **kw})


# -- the loss ---------------------------------------------------------------------------------------------------

def test_info_nce_against_a_hand_computed_case():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # already unit length
    scale = 2.0
    # logits = 2 * [[1, 0.6], [0, 0.8]]; rows: image -> text, columns: text -> image
    l_i = [-math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2))),
           -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))]
    l_t = [-math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0))),
           -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))]
    expected = 0.5 * (sum(l_i) / 2 + sum(l_t) / 2)
    assert float(clip_loss(image, text, scale)) == pytest.approx(expected, rel=1e-6)
    # the embeddings are normalised inside: scaling them changes nothing
    assert float(clip_loss(3 * image, 0.5 * text, scale)) == pytest.approx(expected, rel=1e-6)
    # one direction only, or no temperature, gives other numbers (what the exercise checks catch)
    assert abs(sum(l_i) / 2 - expected) > 1e-3 and abs(float(clip_loss(image, text, 1.0)) - expected) > 1e-3


def test_contrastive_loss_is_low_when_pairs_match_and_checks_shapes():
    e = F.normalize(torch.randn(8, 4), dim=-1)
    assert float(contrastive_loss(100 * e @ e.t())) < float(contrastive_loss(100 * e @ e.roll(1, 0).t()))
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        clip_loss(torch.zeros(3, 4), torch.zeros(3, 5), 1.0)


# -- the model --------------------------------------------------------------------------------------------------

def test_embeddings_are_normalised_and_shapes_right(gen):
    model = tiny_clip().eval()
    x = torch.rand(5, 1, 8, 8, generator=gen) * 2 - 1
    texts = ["a seven", "the digit 3, slanted to the left", "a thick one", "an upside-down two", "a small nine"]
    img, txt = model.encode_image(x), model.encode_text(texts)
    assert img.shape == txt.shape == (5, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(5)) and torch.allclose(txt.norm(dim=-1), torch.ones(5))
    assert torch.allclose(model(x, texts), model.clamped_logit_scale() * img @ txt.t(), atol=1e-6)
    assert model.temperature() == pytest.approx(0.07, rel=1e-5)
    states, mask = model.encode_text_states(texts)
    assert states.shape == (5, 32, 32) and mask.shape == (5, 32)
    assert mask[:, 0].all() and mask.sum(1).tolist() == [len(t.replace(",", " ,").split()) + 2 for t in texts]
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        model.encode_image(torch.zeros(2, 1, 28, 28))


def test_text_embedding_ignores_padding_and_trimming_is_exact():
    model = tiny_clip().eval()
    ids = model.tokenize(["a seven", "the digit 7, thick, slanted to the right"])
    full_states = model.text_encoder(ids)  # all 32 positions
    pooled = full_states[torch.arange(2), model.tokenizer.end_positions(ids)]
    assert torch.allclose(model.text_features(ids), model.text_projection(pooled), atol=1e-5)
    alone = model.text_features(["a seven"])  # batched with a long caption or alone: the same embedding
    assert torch.allclose(alone[0], model.text_features(ids)[0], atol=1e-5)


def test_logit_scale_is_clamped_at_100():
    model = tiny_clip()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert float(model.clamped_logit_scale().detach()) == MAX_LOGIT_SCALE


def test_zero_shot_and_clip_score_shapes_and_ranges(gen):
    model = tiny_clip().eval()
    x = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    probs = model.zero_shot_classify(x)
    assert probs.shape == (6, 10) and torch.allclose(probs.sum(1), torch.ones(6))
    scores = model.clip_score(x, ["a seven"] * 6)
    assert scores.shape == (6,) and torch.all((scores >= 0) & (scores <= 100))
    with pytest.raises(ValueError, match="pairs image i with text i"):
        model.clip_score(x, ["a seven"])
    with pytest.raises(ValueError, match="templates"):
        model.class_embeddings(cap.NUMBER_WORDS, templates=["no placeholder"])
    # prompt ensembling: the normalised mean of the per-template embeddings
    per = torch.stack([model.encode_text([t.format(n) for n in cap.NUMBER_WORDS]) for t in cap.ZERO_SHOT_TEMPLATES])
    assert torch.allclose(model.class_embeddings(cap.NUMBER_WORDS), F.normalize(per.mean(0), dim=-1), atol=1e-6)


def test_probe_sets_leave_out_or_keep_only_the_held_out_pairs():
    test = load_dataset("mnist5k", split="test")  # sorted by class: every fifth digit covers all ten
    x, y = test.images[::5], test.labels[::5]
    model = CLIP(image_size=28, **TINY, caption_thresholds=cap.AttributeThresholds.from_images(x).to_dict())
    images, labels, truth = probe_set(model, x, y, "orientation")
    assert 7 not in labels.tolist() and len(labels) == 2 * int((y != 7).sum())
    assert truth.tolist().count(0) == truth.tolist().count(1)
    upside = images[truth == 1]
    assert torch.equal(upside, torch.rot90(x[y != 7], 2, (-2, -1)))
    _, only, _ = probe_set(model, x, y, "orientation", held_out="only")
    assert set(only.tolist()) == {7}
    imgs, _, truth = probe_set(model, x, y, "thickness")
    described = model.thresholds.describe(imgs)
    assert [d["thickness"] for d in described] == [("thin", "thick")[int(t)] for t in truth]
    assert all(d["thickness"] is not None for d in described) and 0 < len(imgs) < len(x)
    r = probe_attribute(model.eval(), x, y, "position")
    assert r["n"] == 400 and 0.0 <= r["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="measured attributes have none"):
        probe_set(model, x, y, "slant", held_out="only")


# -- training through the Trainer ------------------------------------------------------------------------------

def test_clip_objective_captions_with_the_models_thresholds(gen):
    x, y = digits()
    model = tiny_clip()
    objective = ClipObjective()
    with pytest.raises(ValueError, match="set_thresholds"):
        objective.training_losses(model, x[:8], y[:8], generator=gen)
    model.set_thresholds(cap.AttributeThresholds.from_images(x))
    loss = objective.training_losses(model, x[:8], y[:8], generator=gen)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and len(objective.last_captions) == 8
    loss.backward()
    assert model.logit_scale.grad is not None  # the temperature is learned


def test_training_never_shows_a_held_out_combination():
    x, y = digits()
    held_labels = torch.tensor([k for _, k in cap.HELD_OUT]).repeat(86)[:256]  # only the digits that have one
    trainer = Trainer(clip_config(max_steps=40), dataset=(x, held_labels))
    seen = []
    for _ in range(40):
        trainer.train_step()
        seen += trainer.objective.last_facts
    assert len(seen) == 40 * 32
    assert not any(cap.is_held_out(f["transforms"], f["label"]) for f in seen)
    assert sum(bool(f["transforms"]) for f in seen) > 200  # transformations do occur, just not those pairs


def test_clip_training_learns_and_resumes_exactly(tmp_path):
    x, y = digits()
    straight = Trainer(clip_config(), dataset=(x, y))
    assert straight.raw_model.thresholds == cap.AttributeThresholds.from_images(x)
    straight.train()
    assert straight.history[0]["loss"] > 0 and "zero_shot_accuracy" in straight.samples[-1]
    with pytest.raises(ValueError, match="no samples"):
        straight.sample(2)
    first = Trainer(clip_config(tmp_path / "run"), dataset=(x, y))
    first.train(steps=2)
    torch.manual_seed(123)
    resumed = Trainer.resume(tmp_path / "run", dataset=(x, y))
    assert resumed.config.objective == "clip" and resumed.step == 2
    resumed.train()
    for a, b in ((straight.raw_model, resumed.raw_model), (straight.ema.module, resumed.ema.module)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


def test_clip_learns_digits_in_a_few_hundred_steps(one_thread):
    x, y = digits()
    small = dict(embed_dim=32, image_channels=(8, 16, 16), image_width=32, text_width=32, text_layers=2, text_heads=2)
    trainer = Trainer(clip_config(max_steps=200, batch_size=64, lr=2e-3, model_kwargs=small), dataset=(x, y))
    before = trainer.zero_shot_accuracy(256)
    trainer.train()  # ~3 s; 0.82 zero-shot accuracy on these training digits (chance: 0.1)
    assert trainer.history[-1]["loss"] < 0.7 * trainer.history[0]["loss"]
    assert trainer.zero_shot_accuracy(256) > max(0.6, before + 0.4)


def test_checkpoint_round_trip(tmp_path, gen):
    x, _ = digits()
    model = tiny_clip(caption_thresholds=cap.AttributeThresholds.from_images(x).to_dict()).eval()
    ckpt.save_pretrained(tmp_path / "clip", model)
    loaded = ckpt.load_model(tmp_path / "clip")
    assert isinstance(loaded, CLIP) and loaded.config == model.config
    assert loaded.thresholds == model.thresholds and loaded.tokenizer.vocab == model.tokenizer.vocab
    texts = ["a thin seven", "the digit 3"]
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(texts), model.encode_text(texts))
        assert torch.equal(loaded.encode_image(x[:3]), model.encode_image(x[:3]))
    with pytest.raises(ckpt.CheckpointError, match="without a diffusion"):
        ckpt.from_pretrained(tmp_path / "clip")


@pytest.mark.parametrize("bad, message", [
    (dict(hflip=True), "hflip"),
    (dict(preset="digits"), "model_kwargs"),
    (dict(autoencoder="somewhere"), "do not apply"),
])
def test_bad_clip_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"objective": "clip", "out_dir": None, "progress": False, **bad}).resolved().validate()


def test_clip_needs_labels_and_a_clip_model():
    x, y = digits()
    with pytest.raises(ValueError, match="no labels"):
        Trainer(clip_config(), dataset=x)
    from ddpm_lite.unet import UNet

    with pytest.raises(ValueError, match="trains a ddpm_lite.clip.CLIP"):
        Trainer(clip_config(), dataset=(x, y), model=UNet(image_size=8, in_channels=1, base_channels=8,
                                                          channel_mults=(1,), attention_resolutions=(), num_groups=8))


def test_cli_train_clip_then_sample_refuses(tmp_path, capsys):
    out = tmp_path / "clip"
    code = main(["train-clip", "--dataset", "digits", "--max-steps", "2", "--max-seconds", "none",
                 "--batch-size", "16", "--model-kwargs", '{"embed_dim": 16, "text_layers": 1, "text_width": 32, '
                 '"text_heads": 2, "image_channels": [8, 8, 16], "image_width": 32}', "--out", str(out),
                 "--no-progress", "--save-every", "0", "--sample-every", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "zero-shot accuracy on training digits" in printed and "benchmarks/clip.py" in printed
    assert ckpt.load_config(out, diffusion=False)["model_class"] == "CLIP"
    assert main(["sample", "--checkpoint", str(out), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds a CLIP" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "shared"), "--ema-only", "--fp16"]) == 0
    assert isinstance(ckpt.load_model(tmp_path / "shared"), CLIP)


def test_cli_train_clip_help_lists_only_flags_that_apply(capsys):
    with pytest.raises(SystemExit):
        main(["train-clip", "--help"])
    text = capsys.readouterr().out
    assert "--max-seconds" in text and "--model-kwargs" in text
    for flag in ("--timesteps", "--kl-weight", "--hflip", "--sample-guidance"):
        assert flag not in text, flag
