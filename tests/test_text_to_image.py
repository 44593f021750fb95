"""Text-to-image: cross-attention, conditioning objects, the frozen text encoder, training, pipelines, CLI."""

import numpy as np
import pytest
import torch

from ddpm_lite import captions as cap
from ddpm_lite import checkpoint as ckpt
from ddpm_lite.__main__ import main
from ddpm_lite.clip import CLIP
from ddpm_lite.conditioning import SuperResCondition, TextCondition, call_model
from ddpm_lite.data import load_dataset
from ddpm_lite.diffusion import GaussianDiffusion
from ddpm_lite.pipeline import TextToImage, save_cascade
from ddpm_lite.text_encoder import CLIPTextEncoder
from ddpm_lite.text_to_image import augment_low_res, low_res_view
from ddpm_lite.train import TrainConfig, Trainer
from ddpm_lite.transformer import CrossAttention, SpatialTransformer
from ddpm_lite.unet import UNet

TINY_CLIP = dict(embed_dim=16, image_channels=(8, 8, 16), image_width=32, text_width=32, text_layers=1, text_heads=2)
TINY_UNET = dict(model_kwargs={"base_channels": 16, "num_heads": 2})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    x = load_dataset("digits").images
    model = CLIP(image_size=8, **TINY_CLIP, caption_thresholds=cap.AttributeThresholds.from_images(x).to_dict())
    path = tmp_path_factory.mktemp("clip") / "clip"
    ckpt.save_pretrained(path, model)
    return path


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return ckpt.load_text_encoder(clip_dir)


def text_config(clip_dir, out=None, **kw):
    return TrainConfig(**{**dict(dataset="digits", text_encoder=str(clip_dir), max_steps=4, batch_size=16, lr=1e-3,
                                 out_dir=None if out is None else str(out), progress=False, log_every=2,
                                 sample_every=0, save_every=0, sample_n=4, sample_steps=3), **TINY_UNET, **kw})


def text_unet(context_dim=32, **kw):
    torch.manual_seed(0)
    return UNet(**{**dict(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), num_heads=2, dropout=0.0, num_groups=8,
                          context_dim=context_dim), **kw})


def perturb(model, scale=0.05):
    """Untrained zero-initialised layers hide the conditioning: give every weight a little noise."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


# -- cross-attention ---------------------------------------------------------------------------------------------

def test_cross_attention_shapes_and_padding_gets_no_attention(gen):
    attn = CrossAttention(16, 8, num_heads=2)
    x, ctx = torch.randn(3, 5, 16, generator=gen), torch.randn(3, 4, 8, generator=gen)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    attn.store_attention = True
    out = attn(x, ctx, mask)
    assert out.shape == (3, 5, 16) and attn.attention.shape == (3, 2, 5, 4)
    assert torch.all(attn.attention[~mask[:, None, None, :].expand_as(attn.attention)] == 0)
    assert torch.allclose(attn.attention.sum(-1), torch.ones(3, 2, 5))
    # padded tokens' values cannot matter, and the fused path gives the same result as the explicit one
    ctx2 = ctx.clone()
    ctx2[~mask] = 100.0
    attn.store_attention = False
    assert torch.allclose(attn(x, ctx2, mask), out, atol=1e-5)
    self_attn = CrossAttention(16, None, num_heads=2)
    assert self_attn(x).shape == (3, 5, 16)


def test_spatial_transformer_starts_as_the_identity(gen):
    block = SpatialTransformer(16, 8, num_heads=2, num_groups=8)
    h = torch.randn(2, 16, 4, 4, generator=gen)
    assert torch.equal(block(h, torch.randn(2, 3, 8, generator=gen)), h)


def test_unet_with_context_uses_it_and_checks_its_inputs(gen):
    model = perturb(text_unet()).eval()
    x, t = torch.randn(2, 1, 8, 8, generator=gen), torch.tensor([10, 500])
    a, b = torch.randn(2, 5, 32, generator=gen), torch.randn(2, 5, 32, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert not torch.allclose(model(x, t, context=a, context_mask=mask), model(x, t, context=b, context_mask=mask))
    with pytest.raises(ValueError, match="text-conditioned"):
        model(x, t)
    with pytest.raises(ValueError, match=r"\[B, L, context_dim\]"):
        model(x, t, context=torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="no cross-attention"):
        text_unet(context_dim=None)(x, t, context=a)
    assert "context_dim" not in text_unet(context_dim=None).config  # old configs stay as they were


def test_super_resolution_unet_inputs(gen):
    model = perturb(text_unet(context_dim=None, low_res_channels=1, aug_conditioning=True)).eval()
    x, t = torch.randn(2, 1, 8, 8, generator=gen), torch.tensor([3, 700])
    low = torch.randn(2, 1, 8, 8, generator=gen)
    out = model(x, t, low_res=low, aug_level=torch.tensor([0, 0]))
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, t, low_res=low, aug_level=torch.tensor([200, 200])))
    with pytest.raises(ValueError, match="low_res of shape"):
        model(x, t, aug_level=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="aug_level"):
        model(x, t, low_res=low)


# -- conditioning objects ----------------------------------------------------------------------------------------

def test_text_condition_null_cat_index_dropout(encoder):
    cond = encoder.encode(["a seven", "the digit 3, slanted to the left", "a thin one"])
    assert len(cond) == 3 and cond.context.shape == (3, 32, 32) and cond.mask.sum(1).tolist() == [4, 10, 5]
    null = cond.null()
    empty = encoder.encode([""])
    assert torch.equal(null.context[1], empty.context[0]) and torch.equal(null.mask[2], empty.mask[0])
    both = cond.cat(null)
    assert len(both) == 6 and both.prompts[3:] == ["", "", ""]
    assert cond[1:].prompts == ["the digit 3, slanted to the left", "a thin one"] and len(cond[0]) == 1
    dropped = cond.dropped(torch.tensor([False, True, False]))
    assert torch.equal(dropped.context[1], empty.context[0]) and torch.equal(dropped.context[0], cond.context[0])
    assert dropped.prompts == ["a seven", "", "a thin one"]
    sr = SuperResCondition(torch.zeros(3, 1, 8, 8), torch.tensor([0, 5, 9]), cond)
    assert torch.equal(sr.null().low_res, sr.low_res) and sr.null().text.prompts == ["", "", ""]
    assert len(sr.cat(sr.null())) == 6 and sr[1:].aug_level.tolist() == [5, 9]


def test_guidance_with_the_empty_prompt_changes_nothing(encoder, gen):
    # ε̃ = (1 + w) ε(x, c) − w ε(x, ∅): with c = ∅ the guided prediction is the plain one, for any w
    model = perturb(text_unet()).eval()
    diffusion = GaussianDiffusion(timesteps=100)
    x, t = torch.randn(2, 1, 8, 8, generator=gen), torch.tensor([5, 80])
    empty = encoder.encode(["", ""])
    plain = diffusion.model_output(model, x, t, empty, guidance=0.0)
    assert torch.allclose(diffusion.model_output(model, x, t, empty, guidance=4.0), plain, atol=1e-5)
    prompt = encoder.encode(["a seven", "a two"])
    guided = diffusion.model_output(model, x, t, prompt, guidance=2.0)
    cond, uncond = call_model(model, x, t, prompt), call_model(model, x, t, prompt.null())
    assert torch.allclose(guided, 3.0 * cond - 2.0 * uncond, atol=1e-5)


# -- the frozen text encoder -------------------------------------------------------------------------------------

def test_text_encoder_is_clips_text_tower_frozen_and_cached(clip_dir, encoder):
    clip = ckpt.load_model(clip_dir)
    prompts = ["a thick seven", "a small two, shifted to the left"]
    states, mask = clip.encode_text_states(prompts)
    cond = encoder.encode(prompts)
    assert torch.allclose(cond.context, states, atol=1e-6) and torch.equal(cond.mask, mask)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training  # frozen: stays in eval mode
    again = encoder.encode(list(reversed(prompts)))  # from the cache, in the new order
    assert torch.equal(again.context[0], cond.context[1])
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        encoder.encode(["a purple seven"])
    assert encoder.encode(["a purple seven"], unknown="unk").mask.sum() == 5


# -- training --------------------------------------------------------------------------------------------------

def test_low_res_view_and_noise_augmentation(gen):
    x = load_dataset("mnist5k", split="test").images[:3]
    low = low_res_view(x, 14)
    assert low.shape == x.shape
    assert torch.allclose(low.mean((-2, -1)), x.mean((-2, -1)), atol=0.02)  # blurrier, same ink
    d = GaussianDiffusion(timesteps=1000)
    assert torch.allclose(augment_low_res(d, low, torch.zeros(3, dtype=torch.long), gen), low, atol=0.05)
    noisy = augment_low_res(d, low, torch.full((3,), 999), gen)
    assert float((noisy - low).std()) > 0.9


def test_text_training_captions_drops_and_resumes_exactly(clip_dir, tmp_path):
    straight = Trainer(text_config(clip_dir, caption_dropout=0.5, max_steps=6))
    assert straight.raw_model.config["context_dim"] == 32 and straight.raw_model.config["num_classes"] is None
    seen = []
    for _ in range(6):
        straight.train_step()
        seen += straight.objective.last_captions
    assert 0.3 < seen.count("") / len(seen) < 0.7  # caption dropout ~ 50% here
    assert not any(cap.is_held_out(f["transforms"], f["label"]) for f in straight.objective.last_facts)
    straight = Trainer(text_config(clip_dir))
    straight.train()
    first = Trainer(text_config(clip_dir, tmp_path / "run"))
    first.train(steps=2)
    torch.manual_seed(5)
    resumed = Trainer.resume(tmp_path / "run")
    resumed.train()
    for (name, a), b in zip(straight.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.sample(n=3).shape == (3, 1, 8, 8)


def test_checkpoint_round_trip_and_pipeline_determinism(clip_dir, tmp_path):
    trainer = Trainer(text_config(clip_dir, tmp_path / "run"))
    trainer.train()
    assert (tmp_path / "run" / "checkpoint" / "text_encoder" / "config.json").exists()
    pipe = TextToImage.from_pretrained(tmp_path / "run")
    assert pipe.image_shape == (1, 8, 8) and "pixel" in repr(pipe)
    a = pipe(["a seven", "a thin two"], guidance=2, steps=3, generator=torch.Generator().manual_seed(0))
    b = pipe(["a seven", "a thin two"], guidance=2, steps=3, generator=torch.Generator().manual_seed(0))
    c = pipe(["a seven", "a thin two"], guidance=2, steps=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(ckpt.load_text_encoder(tmp_path / "run").encode("a seven").context,
                          trainer.text_encoder.encode("a seven").context)
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        pipe(["a purple seven"], steps=2)


def test_cascade_base_and_super_resolution(clip_dir, tmp_path):
    base = Trainer(text_config(clip_dir, tmp_path / "base", resolution=4))
    base.train()
    assert base.sample_shape == (1, 4, 4)
    sr = Trainer(TrainConfig(dataset="digits", low_res=4, max_steps=3, batch_size=16, lr=1e-3,
                             out_dir=str(tmp_path / "sr"), progress=False, sample_every=0, save_every=0, sample_n=4,
                             sample_steps=2, **TINY_UNET))
    sr.train()
    assert sr.raw_model.config["low_res_channels"] == 1 and "context_dim" not in sr.raw_model.config
    assert sr.sample(n=2).shape == (2, 1, 8, 8)
    cascade = tmp_path / "cascade"
    assert main(["cascade", "--base", str(tmp_path / "base"), "--super-resolution", str(tmp_path / "sr"),
                 "--out", str(cascade), "--aug-level", "30", "--fp16"]) == 0
    assert main(["cascade", "--base", str(tmp_path / "sr"), "--super-resolution", str(tmp_path / "base"),
                 "--out", str(tmp_path / "wrong")]) == 2
    with pytest.raises(ckpt.CheckpointError, match="export the stage there first"):
        save_cascade(tmp_path / "wrong", "base", "sr")
    pipe = TextToImage.from_pretrained(cascade)
    out = pipe(["a seven", "a two"], steps=2, generator=torch.Generator().manual_seed(0), return_stages=True)
    assert out["base"].shape == (2, 1, 4, 4) and out["images"].shape == (2, 1, 8, 8) and pipe.aug_level == 30
    assert "cascade" in repr(pipe)


@pytest.mark.parametrize("bad, message", [
    (dict(resolution=14), "set text_encoder too"),
    (dict(text_encoder="x", objective="clip"), "objective='diffusion'"),
    (dict(text_encoder="x", hflip=True), "hflip"),
    (dict(low_res=14, resolution=7, text_encoder="x"), "no resolution or autoencoder"),
    (dict(text_encoder="x", caption_transforms="upside_down,sideways"), "unknown transformations"),
    (dict(text_encoder="x", caption_dropout=1.0), "caption_dropout"),
])
def test_bad_text_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"out_dir": None, "progress": False, **bad}).resolved().validate()


# -- the command line --------------------------------------------------------------------------------------------

def test_cli_samples_from_prompts_and_names_unknown_words(clip_dir, tmp_path, capsys):
    Trainer(text_config(clip_dir, tmp_path / "run")).train()
    arr = tmp_path / "x.npz"
    code = main(["sample", "--checkpoint", str(tmp_path / "run"), "--prompt", "a thin seven", "--prompt", "a two",
                 "--n", "3", "--steps", "2", "--guidance", "1", "--out", str(tmp_path / "x.png"),
                 "--save-array", str(arr)])
    assert code == 0
    with np.load(arr) as f:
        assert f["images"].shape == (3, 1, 8, 8) and list(f["prompts"]) == ["a thin seven", "a two", "a thin seven"]
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--prompt", "a purple seven",
                 "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "unknown word 'purple'" in err and err.count("\n") == 1
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "y.png")]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--prompt", "a seven", "--labels", "1",
                 "--out", str(tmp_path / "y.png")]) == 2
    assert "--labels does not apply" in capsys.readouterr().err


def test_text_encoder_cache_evicts_least_recently_used_and_stays_exact(clip_dir):
    enc = ckpt.load_text_encoder(clip_dir)
    enc.cache_size = 3
    words = ["a zero", "a one", "a two", "a three", "a four"]
    fresh = {w: enc(w)[0][0] for w in words + [""]}
    for i in range(20):  # more distinct prompts than the cache holds, the empty prompt in every call
        batch = [words[i % 5], words[(i * 3) % 5]]
        cond = enc.encode(batch)
        assert len(enc._cache) <= 3
        for w, states in zip(batch, cond.context):
            assert torch.allclose(states, fresh[w], atol=1e-6)
        assert torch.allclose(cond.null_context, fresh[""], atol=1e-6)


def test_super_resolution_warns_above_its_training_range(clip_dir, tmp_path):
    from ddpm_lite.pipeline import SuperResolutionStage

    model = text_unet(context_dim=None, low_res_channels=1, aug_conditioning=True).eval()
    stage = SuperResolutionStage(model, GaussianDiffusion(timesteps=100), aug_max=20)
    low = torch.zeros(1, 1, 4, 4)
    with pytest.warns(UserWarning, match="above the largest augmentation level"):
        stage(low, aug_level=50, steps=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stage(low, aug_level=20, steps=1).shape == (1, 1, 8, 8)


def test_text_states_embeddings_have_no_context_and_both_stacks_the_two(clip_dir, tmp_path):
    final = ckpt.load_text_encoder(clip_dir)
    words = CLIPTextEncoder.from_clip(ckpt.load_model(clip_dir), states="embeddings")
    both = CLIPTextEncoder.from_clip(ckpt.load_model(clip_dir), states="both")
    a, b = words.encode(["a thick seven", "an upside-down seven"]), final.encode(["a thick seven"])
    # "seven" (token 3 of both prompts) is the same vector whatever precedes it; the final states differ
    assert torch.equal(a.context[0, 3], a.context[1, 3])
    assert not torch.allclose(final.encode(["an upside-down seven"]).context[0, 3], b.context[0, 3])
    assert torch.allclose(a.context.norm(dim=-1)[a.mask], torch.full_like(a.context[..., 0][a.mask], 32 ** 0.5),
                          atol=1e-3)  # LayerNorm'd, as the final states are
    c = both.encode(["a thick seven"])
    L = b.context.shape[1]
    assert c.context.shape[1] == 2 * L and torch.equal(c.mask, torch.cat([b.mask, b.mask], 1))
    assert torch.allclose(c.context[:, :L], b.context, atol=1e-6)
    assert torch.allclose(c.context[:, L:], words.encode(["a thick seven"]).context, atol=1e-6)
    with pytest.raises(ValueError, match="states='last'"):
        CLIPTextEncoder(["a"], states="last")
    # training with --text-states: the checkpoint's text encoder keeps the choice, the pipeline reads it
    trainer = Trainer(text_config(clip_dir, tmp_path / "run", text_states="both"))
    trainer.train()
    assert trainer.raw_model.config["context_dim"] == 32
    pipe = TextToImage.from_pretrained(tmp_path / "run")
    assert pipe.text_encoder.states == "both" and pipe(["a seven"], steps=2).shape == (1, 1, 8, 8)
