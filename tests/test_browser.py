"""End-to-end: the course's widgets work in a real JupyterLab in a real browser.

One JupyterLab server (this environment's Python, 127.0.0.1, a free port, a random token, its own process
group, private Jupyter settings) serves a temporary copy of notebooks/ with outputs cleared; one headless
Debian Chromium (fresh profile) driven by Playwright opens each notebook in its own page, runs all its cells
from the menu (Run → Run All Cells), waits for the kernel to be idle, checks that no cell failed, moves a
widget's slider with the keyboard and checks that the widget's picture changed (a new <img> blob URL, i.e.
new PNG bytes from the kernel, and different pixels in an element screenshot):

* notebook 01 (all cells): the noise-step explorer, ``ddpm-noise-explorer``;
* notebook 06 (its cells up to the scrubber's; nbval runs the rest): the sampling scrubber,
  ``ddpm-sampling-scrubber``;
* notebook 11 (its settings, its setup cell and the prompt box's cell only): the prompt explorer,
  ``ddpm-prompt-explorer``: a prompt is typed into its text box instead of moving a slider;
* a planted broken copy of notebook 01 (its setup cell, the explorer's cell, then a cell that disconnects
  the slider's callback): the same check must report "slider moved, picture unchanged", so the test can
  see a broken widget.

The notebooks run side by side (each kernel uses one thread), the longest first. Screenshots, the
server's log and the timings go to test-output/browser/. The server and the browser are shared by the
module (1–2.5 minutes in all on a busy 2-core machine) and always stopped at the end; the teardown
fails if any process they started is still alive.

Needs /usr/bin/chromium (apt-get install chromium) and the playwright package; without them the tests skip,
except in CI (environment variable CI set), where they fail.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import browser_helpers as bh

pytestmark = pytest.mark.browser

NB01 = "01_forward_noising.ipynb"
NB06 = "06_sampling_visualisation.ipynb"
NB01_BROKEN = "01_forward_noising_BROKEN_slider.ipynb"
NB11 = "11_text_to_image.ipynb"
NB11_PROMPT = "11_text_to_image_prompt_box.ipynb"  # its first two code cells and the widget's cell
# The browser runs these only up to (and including) the cell that builds their widget: nothing after it
# can change what the widget test sees, and nbval runs every cell of every notebook anyway. Notebook 06's
# later sections (DDIM timings, seeds, ...) would add about a third to its run in the browser, the longest one.
RUN_THROUGH = {NB06: "SamplingScrubber("}
EXPLORER = "ddpm-noise-explorer"
SCRUBBER = "ddpm-sampling-scrubber"
PROMPT_BOX = "ddpm-prompt-explorer"
TYPED_PROMPT = "a small four, shifted to the right"  # differs from the notebook's initial prompt

# Generous: the first kernel start and the notebooks' own work on a busy 2-core machine.
OPEN_TIMEOUT_S = 180
RUN_ALL_TIMEOUT_S = 420
UPDATE_TIMEOUT_S = 60  # a working widget: kernel round trip + re-render of one PNG
BROKEN_WAIT_S = 5  # a broken widget: how long to wait for an update that must not come


def _require_prerequisites() -> None:
    missing = bh.missing_prerequisites()
    if not missing:
        return
    msg = "browser test prerequisites missing: " + ", ".join(missing) + "\n" + bh.INSTALL_HINT
    if os.environ.get("CI"):
        pytest.fail(msg + "\n(CI is set: CI must install them, see .ci/run)", pytrace=False)
    pytest.skip(msg)


def test_missing_prerequisites_skip_with_a_hint_and_fail_in_ci(monkeypatch):
    """Without Chromium or playwright the browser tests skip and say how to install them; in CI they fail."""
    monkeypatch.setattr(bh, "missing_prerequisites", lambda: ["Chromium (/usr/bin/chromium or `chromium` on PATH)"])
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install chromium[\s\S]*pip install playwright"):
        _require_prerequisites()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _require_prerequisites()


@dataclass
class NotebookRun:
    name: str
    page: object
    t_open: float  # when its page load began
    t_run: float | None = None  # when Run All was clicked


class LabSession:
    """One JupyterLab server and one Chromium for the module; every notebook gets its own page (its own
    JupyterLab workspace and kernel). `start` loads a notebook's page without waiting; `run_all` waits for its
    kernel and clicks Run All, again without waiting. The module fixture starts all the selected tests'
    notebooks at once: each kernel runs on one thread, so on two cores two notebooks run side by side, and
    the browser's work overlaps the kernels'."""

    def __init__(self, server: bh.LabServer, context, root: Path, janitor: bh.ProcessJanitor):
        self.server, self.context, self.root, self.janitor = server, context, root, janitor
        self.runs: dict[str, NotebookRun] = {}
        self.prepared: set[str] = set()
        self.timings: dict[str, float] = {}

    def prepare(self, name: str) -> None:
        """Make sure ``name`` exists in the served folder (writing the planted broken copy if it is that) and
        is cut after its widget's cell if `RUN_THROUGH` says so."""
        if name == NB01_BROKEN and not (self.root / name).exists() and (self.root / NB01).is_file():
            bh.write_broken_copy(self.root / NB01, self.root / NB01_BROKEN, "NoiseStepExplorer", minimal=True)
        if name == NB11_PROMPT and not (self.root / name).exists() and (self.root / NB11).is_file():
            try:
                dropped = bh.write_widget_copy(self.root / NB11, self.root / NB11_PROMPT, "PromptExplorer(")
            except ValueError as err:
                pytest.fail(f"{err} (the browser test looks for the prompt box there)", pytrace=False)
            self.timings[f"{NB11}: cells not run here (only settings, setup and the prompt box)"] = dropped
        if not (self.root / name).is_file():
            pytest.fail(f"{name} not found in notebooks/", pytrace=False)
        if name in RUN_THROUGH and name not in self.prepared:
            try:
                dropped = bh.truncate_after(self.root / name, RUN_THROUGH[name])
            except ValueError as err:
                pytest.fail(f"{err} (the browser test looks for the widget there)", pytrace=False)
            self.timings[f"{name}: cells after the widget's cell, not run here"] = dropped
        self.prepared.add(name)

    def start(self, name: str) -> NotebookRun:
        if name not in self.runs:
            self.prepare(name)
            page = self.context.new_page()
            page.set_default_timeout(30_000)
            workspace = "ddpm-" + "".join(c if c.isalnum() else "-" for c in Path(name).stem)
            self.runs[name] = NotebookRun(name, page, time.monotonic())
            bh.open_notebook(page, self.server.notebook_url(name, workspace=workspace), name, wait=False,
                             timeout_s=OPEN_TIMEOUT_S)
        return self.runs[name]

    def run_all(self, run: NotebookRun) -> None:
        """Once its kernel is idle, Run → Run All Cells (returns at once)."""
        if run.t_run is None:
            bh.wait_notebook_ready(run.page, run.name, OPEN_TIMEOUT_S - (time.monotonic() - run.t_open))
            self.timings[f"{run.name}: open, kernel idle"] = round(time.monotonic() - run.t_open, 1)
            bh.click_run_all(run.page)
            run.t_run = time.monotonic()
            self.janitor.record()

    def start_all(self, names: list[str]) -> None:
        """Start every notebook now, each Run All as soon as its kernel is idle: the first (the longest run)
        alone, so that JupyterLab's start in the browser does not slow it down, then the others side by side.
        A notebook that cannot be started here is dropped: its test starts it again and reports the error."""
        for group in (names[:1], names[1:]):
            for name in group:
                try:
                    self.start(name)
                except (Exception, pytest.fail.Exception):  # e.g. not there: its test reports it
                    pass
            pending = [self.runs[n] for n in group if n in self.runs]
            deadline = time.monotonic() + OPEN_TIMEOUT_S
            while pending and time.monotonic() < deadline:
                for run in list(pending):
                    try:
                        if bh.notebook_ready(run.page, run.name):
                            self.run_all(run)
                            pending.remove(run)
                    except Exception:
                        pending.remove(run)
                        self.close(run.name)
                time.sleep(0.25)
            for run in pending:
                self.close(run.name)

    def close(self, name: str) -> None:
        run = self.runs.pop(name, None)
        if run is None:
            return
        self.janitor.record()
        with contextlib.suppress(Exception):
            run.page.bring_to_front()  # a tab in the back is slow to screenshot
            run.page.screenshot(path=str(bh.OUTPUT_DIR / f"{Path(name).stem}_final_page.png"))
        with contextlib.suppress(Exception):
            run.page.close()
        with contextlib.suppress(Exception):
            self.server.shutdown_kernels(path=name)

    @contextlib.contextmanager
    def notebook(self, name: str):
        """The page of ``name`` after Run All has finished; on exit the page is closed (nothing saved) and the
        notebook's kernel shut down."""
        run = self.start(name)
        try:
            self.run_all(run)
            bh.wait_run_all_done(run.page, RUN_ALL_TIMEOUT_S)
            self.timings[f"{name}: Run All Cells, until its test saw it done"] = round(
                time.monotonic() - run.t_run, 1)
            yield run.page
        finally:
            self.close(name)


# which notebook each browser test drives (the fixture starts those of the selected tests at once)
NOTEBOOK_OF_TEST = {  # the longest run first
    "test_sampling_scrubber_updates_in_browser": NB06,
    "test_noise_step_explorer_updates_in_browser": NB01,
    "test_prompt_explorer_updates_in_browser": NB11_PROMPT,
    "test_check_detects_disconnected_slider": NB01_BROKEN,
}


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory):
    _require_prerequisites()
    from playwright.sync_api import sync_playwright

    bh.OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    base = tmp_path_factory.mktemp("browser")
    janitor = bh.ProcessJanitor(str(base))
    server = pw = context = session = None
    setup_ok = False
    t_module = time.monotonic()
    try:
        root = bh.prepare_lab_root(base)
        server = bh.LabServer(root_dir=root, base=base)
        atexit.register(server.stop)  # also on an interrupted run; a no-op once stopped
        server.launch()  # the server and the browser start side by side
        janitor.record()
        pw = sync_playwright().start()
        context = pw.chromium.launch_persistent_context(
            str(base / "chromium-profile"), executable_path=bh.find_chromium(), headless=True,
            args=bh.CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000}, accept_downloads=False,
        )
        janitor.record()
        server.wait_ready()
        janitor.record()
        session = LabSession(server, context, root, janitor)
        session.timings["start JupyterLab + Chromium"] = round(time.monotonic() - t_module, 1)
        tests_here = {getattr(item, "originalname", item.name) for item in request.session.items
                      if getattr(item, "module", None) is not None and item.module.__name__ == __name__}
        selected = [nb for test, nb in NOTEBOOK_OF_TEST.items() if test in tests_here]
        session.start_all(selected)
        setup_ok = True
        yield session
    finally:
        janitor.record()
        t_stop = time.monotonic()
        if session is not None:
            for name in list(session.runs):
                session.close(name)
        for close in (lambda: context and context.close(), lambda: pw and pw.stop(),
                      lambda: server and server.stop()):
            with contextlib.suppress(Exception):
                close()
        janitor.kill_leftovers()
        if session is not None:
            session.timings["stop everything"] = round(time.monotonic() - t_stop, 1)
            session.timings["whole module"] = round(time.monotonic() - t_module, 1)
            (bh.OUTPUT_DIR / "timings.json").write_text(json.dumps(session.timings, indent=1) + "\n")
        shutil.rmtree(base / "chromium-profile", ignore_errors=True)
        if server is not None and server.log_path and server.log_path.exists():
            shutil.copy(server.log_path, bh.OUTPUT_DIR / "jupyter-server.log")
        leftovers = [bh.describe(p) for p in janitor.leftovers()]
        group_alive = server is not None and server.group_alive()
        if setup_ok:  # do not hide a setup error behind this one
            assert not leftovers and not group_alive, (
                f"processes left running after the browser tests: {leftovers} (server group alive: {group_alive})")


def _assert_no_errors(page, name: str) -> None:
    errors = bh.notebook_errors(page)
    assert not errors, f"{name}: cells failed in JupyterLab:\n" + "\n".join(errors)


def _check_slider(lab: LabSession, page, name: str, css_class: str, shot: str, wait_s: float) -> bh.SliderCheck:
    t0 = time.monotonic()
    check = bh.check_slider_changes_image(page, css_class, bh.OUTPUT_DIR, shot, update_timeout_s=wait_s)
    lab.timings[f"{name}: move slider, compare"] = round(time.monotonic() - t0, 1)
    lab.timings[f"{name}: move slider, compare (steps)"] = check.phases
    return check


def _assert_widget_updates(check: bh.SliderCheck, what: str) -> None:
    assert check.slider_moved, (
        f"{what}: the slider did not move (readout {check.readout_before!r} before and after the key press)")
    assert check.image_changed, (
        f"{what}: the slider moved ({check.readout_before} -> {check.readout_after}) but the picture did not "
        f"change (new src: {check.src_changed}, differing pixels: {check.pixels_changed}); see {check.shots}")


def test_noise_step_explorer_updates_in_browser(lab):
    with lab.notebook(NB01) as page:
        _assert_no_errors(page, NB01)
        check = _check_slider(lab, page, NB01, EXPLORER, "01_noise_explorer", UPDATE_TIMEOUT_S)
        _assert_widget_updates(check, f"{NB01} noise-step explorer")


def test_sampling_scrubber_updates_in_browser(lab):
    with lab.notebook(NB06) as page:
        _assert_no_errors(page, NB06)
        check = _check_slider(lab, page, NB06, SCRUBBER, "05_sampling_scrubber", UPDATE_TIMEOUT_S)
        _assert_widget_updates(check, f"{NB06} sampling scrubber")


def test_prompt_explorer_updates_in_browser(lab):
    """Notebook 11's prompt box: typing a new prompt (and Enter) makes the kernel sample and send new images."""
    with lab.notebook(NB11_PROMPT) as page:
        _assert_no_errors(page, NB11_PROMPT)
        t0 = time.monotonic()
        check = bh.check_text_changes_image(page, PROMPT_BOX, TYPED_PROMPT, bh.OUTPUT_DIR, "10_prompt_explorer",
                                            update_timeout_s=UPDATE_TIMEOUT_S)
        lab.timings[f"{NB11_PROMPT}: type a prompt, compare"] = round(time.monotonic() - t0, 1)
        lab.timings[f"{NB11_PROMPT}: type a prompt, compare (steps)"] = check.phases
        assert check.value_after == TYPED_PROMPT != check.value_before, (
            f"the text box did not take the prompt: {check.value_before!r} -> {check.value_after!r}")
        assert check.image_changed, (
            f"typed {TYPED_PROMPT!r} but the picture did not change (new src: {check.src_changed}, differing "
            f"pixels: {check.pixels_changed}); see {check.shots}")


def test_check_detects_disconnected_slider(lab):
    """The check above must fail when the front end shows a slider that no longer drives the picture: a copy
    of notebook 01 (its setup cell and the explorer's cell) gets a cell that disconnects the slider's callback."""
    with lab.notebook(NB01_BROKEN) as page:
        _assert_no_errors(page, NB01_BROKEN)
        check = _check_slider(lab, page, NB01_BROKEN, EXPLORER, "01_BROKEN_noise_explorer", BROKEN_WAIT_S)
        assert check.slider_moved, "the planted fault should leave the slider itself working"
        assert not check.src_changed and check.pixels_changed == 0, (
            f"the slider callback was disconnected, yet the picture changed: {check}")
        with pytest.raises(AssertionError, match="the picture did not change"):
            _assert_widget_updates(check, "broken explorer")
