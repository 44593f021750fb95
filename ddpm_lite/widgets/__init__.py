"""Interactive ipywidgets explorers for the course notebooks.

Every widget here follows the same recipe (docs/COURSE_CONVENTIONS.md), implemented once in `_base.Explorer`:

* it *is* an ``ipywidgets.VBox`` (so a cell can end with ``w`` or ``display(w)``) with a stable CSS class
  (``add_class``) that a browser test can look for: a row of controls, one image, one info line;
* its controls and its picture are attributes (``w.slider``, ``w.dropdown``, ``w.image``, ``w.info``), so a
  test can set ``w.slider.value = 500`` headlessly and read ``w.image.value`` (PNG bytes);
* the matplotlib figure is made **once** (a bare ``matplotlib.figure.Figure``, not registered with pyplot,
  so the inline backend never shows it and ``plt.get_fignums()`` does not change), and each move only
  updates the artists (``set_data``, ``set_offsets``, …) and re-renders them with `plots.FrameRenderer`;
* the heavy work is done up front (fixed noise, every sampling step computed once), so scrubbing is
  responsive on a CPU.

One explorer per module:

    noise_step.py         NoiseStepExplorer   notebook 01: the forward process
    sampling_scrubber.py  SamplingScrubber    notebook 06: the reverse process, step by step
    guidance.py           GuidanceExplorer    notebooks 05 and 08: classifier-free guidance
    sampler.py            SamplerExplorer     notebook 07: fast samplers
    img2img.py            Img2ImgExplorer     notebook 09: image-to-image (SDEdit) strength
    prompt.py             PromptExplorer      notebook 11: text-to-image, a prompt box
"""

from .guidance import GuidanceExplorer
from .img2img import Img2ImgExplorer
from .noise_step import NoiseStepExplorer
from .prompt import PromptExplorer
from .sampler import SamplerExplorer
from .sampling_scrubber import SamplingScrubber

__all__ = ["NoiseStepExplorer", "SamplingScrubber", "GuidanceExplorer", "SamplerExplorer", "Img2ImgExplorer",
           "PromptExplorer"]
