"""Img2ImgExplorer (notebook 09), driven headlessly: the slider swaps precomputed SDEdit results in place, uses
the same noise at every strength, matches `editing`/`latent`'s img2img, and never creates pyplot figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lite import editing, latent  # noqa: E402
from ddpm_lite.autoencoder import AutoencoderKL  # noqa: E402
from ddpm_lite.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lite.unet import UNet  # noqa: E402
from ddpm_lite.widgets import Img2ImgExplorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STRENGTHS = (0.0, 0.5, 1.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet(channels, size, num_classes=3):
    torch.manual_seed(0)
    model = UNet(image_size=size, in_channels=channels, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_heads=1, dropout=0.0, num_groups=4, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def pixel():
    return _unet(1, 8), GaussianDiffusion("linear", timesteps=30)


@pytest.fixture(scope="module")
def lat():
    torch.manual_seed(1)
    ae = AutoencoderKL(image_size=8, channels=(8,), latent_channels=2, num_groups=4, scale_factor=0.5).eval()
    return _unet(2, 4), GaussianDiffusion("linear", timesteps=30), ae


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(2)
    return torch.rand(3, 1, 8, 8, generator=g) * 2 - 1


def _make(model, diffusion, inputs, **kw):
    args = dict(strengths=STRENGTHS, steps=4, labels=[0, 1, 2], classifier=None)
    args.update(kw)
    return Img2ImgExplorer(model, diffusion, inputs, **args)


def test_builds_with_css_class_and_png(pixel, inputs):
    before = plt.get_fignums()
    w = _make(*pixel, inputs)
    assert Img2ImgExplorer.CSS_CLASS == "ddpm-img2img-explorer"
    assert "ddpm-img2img-explorer" in w._dom_classes
    assert "ddpm-img2img-explorer-image" in w.image._dom_classes
    assert "ddpm-img2img-explorer-slider" in w.slider._dom_classes
    assert bytes(w.image.value).startswith(PNG_MAGIC)
    assert w.image.layout.width.endswith("px")
    assert w.edit_calls == len(STRENGTHS) and w.renders == 1      # all precomputed, one frame drawn
    assert sorted(w.cache) == list(STRENGTHS)
    assert [t.get_text() for t in w._tags] == ["→0", "→1", "→2"]   # the requested class over each result
    assert "strength 0" in w.info.value and "nothing runs" in w.info.value
    assert plt.get_fignums() == before


def test_slider_updates_in_place_from_the_cache(pixel, inputs):
    w = _make(*pixel, inputs)
    before = plt.get_fignums()
    frames = {0.0: bytes(w.image.value)}
    for s in (0.5, 1.0):
        w.slider.value = s
        frames[s] = bytes(w.image.value)
    assert len(set(frames.values())) == 3
    assert w.edit_calls == len(STRENGTHS) and w.renders == 3       # no new edits, one render per move
    w.slider.value = 0.5
    assert "last 2 of 4" in w.info.value
    w.slider.value = 1.0
    assert "pure noise" in w.info.value
    assert plt.get_fignums() == before


def test_strength_zero_is_the_input_and_distance_grows(pixel, inputs):
    w = _make(*pixel, inputs)
    assert torch.equal(w.results(0.0), inputs.clamp(-1, 1))
    assert w.distance(0.0) == 0.0 and w.distance(1.0) > w.distance(0.0)
    assert w.run_steps(0.0) == [] and w.run_steps(1.0) == w.timesteps and len(w.run_steps(0.5)) == 2


def test_matches_editing_img2img_with_the_fixed_noise(pixel, inputs):
    model, diffusion = pixel
    w = _make(model, diffusion, inputs)
    ref = editing.img2img(model, diffusion, inputs, 0.5, steps=4, y=torch.tensor([0, 1, 2]), noise=w.noise,
                          generator=torch.Generator().manual_seed(1))
    assert torch.allclose(w.results(0.5), ref, atol=1e-6)
    # the same ε at every strength: another seed gives other results
    other = _make(model, diffusion, inputs, seed=5)
    assert not torch.equal(other.noise, w.noise) and not torch.allclose(other.results(0.5), w.results(0.5))


def test_latent_model(lat, inputs):
    model, diffusion, ae = lat
    before = plt.get_fignums()
    w = _make(model, diffusion, inputs, autoencoder=ae)
    assert w.noise.shape == (3, 2, 4, 4)                       # the noise lives in latent space
    recon = latent.decode_latents(ae, latent.encode_images(ae, inputs))
    assert torch.allclose(w.results(0.0), recon, atol=1e-6)    # strength 0: the autoencoder's reconstruction
    ref = latent.img2img(model, diffusion, ae, inputs, 0.5, steps=4, y=torch.tensor([0, 1, 2]), noise=w.noise,
                         generator=torch.Generator().manual_seed(1))
    assert torch.allclose(w.results(0.5), ref, atol=1e-6)
    w.slider.value = 1.0
    assert "latent SDEdit" in w.info.value and w.results(1.0).shape == inputs.shape
    assert plt.get_fignums() == before


def test_lazy_without_precompute(pixel, inputs):
    w = _make(*pixel, inputs, precompute=False, strength=0.5)
    assert w.slider.value == 0.5 and set(w.cache) <= set(STRENGTHS)
    calls = w.edit_calls
    w.slider.value = 0.0
    w.slider.value = 0.5
    assert w.edit_calls == calls


def test_accuracy_read_out_with_a_classifier(pixel, inputs):
    class Always(torch.nn.Module):                              # "classifies" every image as class 1
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            out[:, 1] = 1.0
            return out

    w = _make(*pixel, inputs, classifier=Always())
    assert w.accuracy(0.5) == pytest.approx(1 / 3)
    assert "classified as the requested digit: 33%" in w.info.value


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(strengths=()), "at least one"),
        (dict(strengths=(0.0, 1.5)), r"\[0, 1\]"),
        (dict(strengths=(0.5, 0.5)), "distinct"),
        (dict(strength=0.3), "one of strengths"),
        (dict(labels=[0, 1]), "one entry per image"),
        (dict(labels=[0, 1, 7]), "classes in"),
    ],
)
def test_rejects_bad_arguments(pixel, inputs, kw, message):
    with pytest.raises(ValueError, match=message):
        _make(*pixel, inputs, **kw)


def test_rejects_images_out_of_range_and_wrong_shape(pixel, lat, inputs):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        _make(*pixel, inputs * 255)
    model, diffusion, ae = lat
    with pytest.raises(ValueError, match="autoencoder takes images"):
        _make(model, diffusion, torch.zeros(3, 1, 6, 6), autoencoder=ae)
