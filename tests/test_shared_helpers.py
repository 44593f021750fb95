"""The package-wide helpers: `models.sample_shape`, `models.eval_mode`, `device.model_device`,
`metrics.saturated` (the one definition of a saturated pixel), `metrics.resolve_classifier` and the sampler
names and colours of `plots.SAMPLER_STYLES`."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lite import metrics, plots  # noqa: E402
from ddpm_lite.device import model_device  # noqa: E402
from ddpm_lite.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lite.models import eval_mode, sample_shape  # noqa: E402
from ddpm_lite.toy_mlp import ToyMLP  # noqa: E402
from ddpm_lite.unet import UNet  # noqa: E402
from ddpm_lite.widgets import SamplerExplorer, SamplingScrubber  # noqa: E402


# -- sample_shape ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, shape", [
    ({"image_size": 8, "in_channels": 1}, (1, 8, 8)),
    ({"image_size": 32, "in_channels": 3}, (3, 32, 32)),
    ({"image_size": [4, 6], "in_channels": 3}, (3, 4, 6)),   # non-square: (H, W), as UNet.config stores it
    ({"image_size": (4, 6)}, (1, 4, 6)),                      # in_channels defaults to 1
    ({"dim": 2}, (2,)),                                       # the 2D toys
])
def test_sample_shape_from_a_config_dict(config, shape):
    assert sample_shape(config) == shape


def test_sample_shape_from_models():
    unet = UNet(image_size=(4, 8), in_channels=3, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(), num_groups=4)
    assert sample_shape(unet) == (3, 4, 8)
    assert sample_shape(ToyMLP(dim=2)) == (2,)
    with pytest.raises(ValueError, match="image_shape"):
        sample_shape(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="image_shape"):
        sample_shape({"base_channels": 8})


class _NonSquare(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = {"image_size": [4, 6], "in_channels": 1}

    def forward(self, x, t, y=None):
        return 0.5 * x


def test_the_scrubber_samples_non_square_images():
    """The scrubber used to read image_size as an int only (a tuple size gave a wrong shape)."""
    w = SamplingScrubber(model=_NonSquare(), diffusion=GaussianDiffusion("linear", 20), n=2, sampler="ddim", steps=3)
    assert w.frames[-1]["x"].shape == (2, 1, 4, 6)


# -- eval_mode ---------------------------------------------------------------------------------------------------

def _net():
    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode(training):
    net = _net().train(training)
    with eval_mode(net) as inside:
        assert inside is net and not any(m.training for m in net.modules())
    assert all(m.training == training for m in net.modules())


def test_eval_mode_restores_the_mode_when_the_block_raises():
    net = _net().train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert all(m.training for m in net.modules())


def test_eval_mode_restores_mixed_modes_and_ignores_plain_functions():
    net = _net().train()
    net[1].eval()  # a frozen submodule stays frozen
    with eval_mode(net):
        pass
    assert [m.training for m in net.modules()] == [True, True, False, True]
    with eval_mode(len) as fn:
        assert fn is len


# -- model_device ------------------------------------------------------------------------------------------------

def test_model_device_and_its_default():
    assert model_device(_net()) == torch.device("cpu")
    assert model_device(lambda x: x) == torch.device("cpu")
    assert model_device(lambda x: x, default="meta") == torch.device("meta")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")


# -- the saturated pixel -----------------------------------------------------------------------------------------

def test_saturated_is_within_a_thousandth_of_plus_or_minus_one():
    assert metrics.SATURATION_TOL == 1e-3
    x = torch.tensor([-1.0, -0.9995, -0.998, 0.0, 0.998, 0.999, 0.9995, 1.0, 1.5])
    assert metrics.saturated(x).tolist() == [True, True, False, False, False, True, True, True, True]
    assert metrics.saturated(x, tol=0.0).tolist() == [True, False, False, False, False, False, False, True, True]
    assert metrics.saturated(x.numpy()).tolist() == metrics.saturated(x).tolist()  # arrays too (plots)
    batch = x[:8].reshape(2, 4)
    assert metrics.saturated_fraction(batch).tolist() == [0.5, 0.75]


def test_plots_and_widgets_count_saturation_the_same_way():
    x = torch.tensor([[-1.0, -0.9995, 0.5, 0.9985]])
    ax = plots.plot_value_histograms({"x": x})
    assert "50% at ±1" in ax.get_legend().get_texts()[0].get_text()
    matplotlib.pyplot.close(ax.figure)


# -- resolve_classifier ------------------------------------------------------------------------------------------

def test_resolve_classifier():
    from ddpm_lite.classifier import classifier_dir

    clf = metrics.DigitsClassifier()
    assert metrics.resolve_classifier(clf) is clf
    assert metrics.resolve_classifier("auto", image_shape=(3, 32, 32)) is None  # no shipped classifier fits
    assert metrics.resolve_classifier("auto") is None  # no images to match
    for shape, name in metrics.CLASSIFIER_FOR_SHAPE.items():
        if classifier_dir(name).joinpath("model.safetensors").is_file():
            for found in (metrics.resolve_classifier("auto", image_shape=shape),
                          metrics.resolve_classifier(None, like=torch.zeros(2, *shape))):
                assert isinstance(found, metrics.DigitsClassifier) and found.image_shape == shape
    with pytest.raises(FileNotFoundError):
        metrics.resolve_classifier("no-such-classifier")


# -- sampler names and colours -----------------------------------------------------------------------------------

def test_one_table_of_sampler_names_and_colours():
    styles = plots.SAMPLER_STYLES
    assert set(SamplerExplorer.CHOICES) == set(styles) == set(SamplerExplorer.COLORS)
    for key, style in styles.items():
        assert SamplerExplorer.CHOICES[key][0] == style["label"]
        assert SamplerExplorer.COLORS[key] == plots.SAMPLER_COLORS[style["name"]] == style["color"]
    assert plots.SAMPLER_COLORS["DDIM η=1"] == "#9467bd"  # the names notebook 07's benchmark rows use
