"""PromptExplorer (notebook 11), driven headlessly: typing a prompt, moving w, changing the sampler, the steps or
the seed redraws the images in place (the pipeline's own output for those settings); an unknown word puts the
text encoder's message in the info line instead of raising; no pyplot figure is created."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lite import captions as cap  # noqa: E402
from ddpm_lite.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lite.pipeline import TextToImage  # noqa: E402
from ddpm_lite.text_encoder import CLIPTextEncoder  # noqa: E402
from ddpm_lite.unet import UNet  # noqa: E402
from ddpm_lite.widgets import PromptExplorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    encoder = CLIPTextEncoder(cap.VOCAB, context_length=12, width=16, layers=1, heads=2)
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0, 0.5)
    model = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=2, dropout=0.0, num_groups=4, context_dim=16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return TextToImage(model.eval(), GaussianDiffusion("linear", timesteps=40), encoder)


def _make(pipe, **kw):
    args = dict(prompt="a seven", n=3, guidance=2.0, steps=4, step_range=(2, 10))
    args.update(kw)
    return PromptExplorer(pipe, **args)


def test_builds_with_css_classes_and_draws_the_pipelines_images(pipe):
    before = plt.get_fignums()
    w = _make(pipe)
    assert PromptExplorer.CSS_CLASS == "ddpm-prompt-explorer" and "ddpm-prompt-explorer" in w._dom_classes
    for part in ("text", "slider", "sampler", "steps", "seed", "image", "info"):
        assert f"ddpm-prompt-explorer-{part}" in getattr(w, part)._dom_classes
    assert bytes(w.image.value).startswith(PNG_MAGIC) and w.image.layout.width.endswith("px")
    assert w.renders == 1 and w.generate_calls == 1 and w.error is None
    ref = pipe(["a seven"] * 3, guidance=2.0, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w.images(), ref)
    assert "&#x27;a seven&#x27;" in w.info.value and "w = 2" in w.info.value and "DDIM 4 steps" in w.info.value
    assert plt.get_fignums() == before


def test_typing_a_prompt_changes_the_picture(pipe):
    w = _make(pipe)
    before = plt.get_fignums()
    first = bytes(w.image.value)
    w.text.value = "a thick upside-down two"
    assert bytes(w.image.value) != first and w.renders == 2 and w.generate_calls == 2
    assert not torch.equal(w.images("a seven"), w.images())
    assert "upside-down two" in w.info.value and "upside-down two" in w._title.get_text()
    w.text.value = "a seven"                                      # back: from the cache, same picture
    assert bytes(w.image.value) == first and w.generate_calls == 2 and "cached" in w.info.value
    assert plt.get_fignums() == before


def test_guidance_sampler_steps_and_seed_redraw(pipe):
    w = _make(pipe)
    frames = {bytes(w.image.value)}
    for control, value in ((w.slider, 6.0), (w.sampler, "dpmpp2m"), (w.steps, 7), (w.seed, 3)):
        control.value = value
        frames.add(bytes(w.image.value))
    assert len(frames) == 5 and w.generate_calls == 5 and w.renders == 5
    assert w.settings() == ("a seven", 6.0, "dpmpp2m", 7, 3)
    ref = pipe(["a seven"] * 3, guidance=6.0, steps=7, sampler="dpmpp2m", generator=torch.Generator().manual_seed(3))
    assert torch.equal(w.images(), ref)
    assert "DPMPP2M 7 steps" in w.info.value and "seed 3" in w.info.value


def test_unknown_word_shows_the_message_and_keeps_the_images(pipe):
    w = _make(pipe)
    frame, calls = bytes(w.image.value), w.generate_calls
    w.text.value = "a purple seven"                               # no exception reaches the caller
    assert w.error is not None and "purple" in w.error
    assert "unknown word" in w.info.value and "&#x27;purple&#x27;" in w.info.value and "⚠" in w.info.value
    assert "not drawn" in w._title.get_text() and w.generate_calls == calls and w.renders == 2
    assert bytes(w.image.value) != frame                          # the title says so; the images stay
    w.text.value = "a seven"
    assert w.error is None and bytes(w.image.value) == frame


def test_an_unknown_first_prompt_and_the_empty_prompt(pipe):
    w = _make(pipe, prompt="a zebra")
    assert w.error is not None and "zebra" in w.info.value and w.generate_calls == 0
    w.text.value = ""
    assert w.error is None and "empty prompt" in w._title.get_text() and w.images().shape == (3, 1, 8, 8)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(samplers=("ddim", "ddpm")), "ancestral"),
        (dict(sampler="dpmpp2m", samplers=("ddim",)), "one of samplers"),
        (dict(n=0), "n must be"),
        (dict(steps=20), "step_range"),
        (dict(guidance=12.0), "max_guidance"),
    ],
)
def test_rejects_bad_arguments(pipe, kw, message):
    with pytest.raises(ValueError, match=message):
        _make(pipe, **kw)
