"""Helpers for the end-to-end browser tests (tests/test_browser.py).

JupyterLab from this Python's environment, driven in Debian's headless Chromium through Playwright (Python).
Nothing here downloads anything: the browser is the system one (``/usr/bin/chromium``), never
``playwright install``.

What driving JupyterLab this way needs (each handled below): a notebook without ``metadata.kernelspec``
opens a "Select Kernel" dialog that swallows clicks and keys; keys sent before the kernel is connected
are lost, so wait for the status bar's "Python 3 (ipykernel) | Idle" and use the Run menu; notification
toasts can cover elements; an ``ipywidgets.Image`` is an ``<img>`` whose ``blob:`` src changes on every new
value; clicking a slider's handle and pressing a key moves an IntSlider.

Layout of one test session (all under one temporary directory ``base``):

    base/lab/notebooks/     a copy of the repo's notebooks/, outputs cleared (JupyterLab's root_dir; runs never
                            touch the repo)
    base/lab/<other>        symlinks to the repo's top-level entries (assets/, ddpm_lite/, ...), so that paths
                            relative to the repo (``Path.cwd().parent / "assets"``) resolve as in a checkout
    base/jupyter/...        private JUPYTER_CONFIG_DIR / DATA / RUNTIME / lab settings + workspaces / IPYTHONDIR
    base/chromium-profile/  the browser's fresh user-data dir

Every process the session starts (the server, its kernels, the Playwright driver, Chromium and its helpers)
is a descendant of the test process or names ``base`` on its command line; `ProcessJanitor` records them
and `ProcessJanitor.leftovers` says which are still alive after teardown.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT_DIR = REPO / "test-output" / "browser"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

INSTALL_HINT = (
    "The browser tests drive JupyterLab in Debian's Chromium via Playwright (Python). Install them with\n"
    "    sudo apt-get install chromium          # gives /usr/bin/chromium\n"
    "    .venv/bin/pip install playwright       # (in requirements.txt)\n"
    "Do NOT run `playwright install` (it downloads its own browser). Set CHROMIUM=/path/to/chromium to use\n"
    "another Chromium binary. With the environment variable CI set, a missing browser fails instead of skipping."
)

# JupyterLab user settings for the test session: no news toast / update check, no autosave, every cell in
# the DOM (JupyterLab 4 may otherwise detach or defer cells outside the viewport).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


# ==============================================================================================================
# prerequisites
# ==============================================================================================================


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, /usr/bin/chromium, or `chromium` / `chromium-browser` on PATH."""
    for cand in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def missing_prerequisites() -> list[str]:
    """What the browser tests need but cannot find (empty when all is there)."""
    missing = []
    if find_chromium() is None:
        missing.append("Chromium (/usr/bin/chromium or `chromium` on PATH)")
    for mod, what in (("playwright", "the Python package playwright"), ("jupyterlab", "jupyterlab"),
                      ("ipywidgets", "ipywidgets"), ("PIL", "Pillow")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(what)
    return missing


# ==============================================================================================================
# processes (Linux /proc; no psutil)
# ==============================================================================================================


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # fields from the 3rd (state) on; comm may hold spaces/parens
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> set[tuple[int, int]]:
    """(pid, starttime) of every live descendant of ``root`` (not ``root`` itself)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append((pid, st[2]))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child[0])
    return out


def mentioning(text: str) -> set[tuple[int, int]]:
    """(pid, starttime) of live processes whose command line contains ``text``."""
    out = set()
    for pid in _all_pids():
        if pid != os.getpid() and text in _cmdline(pid):
            st = _stat(pid)
            if st is not None:
                out.add((pid, st[2]))
    return out


def is_alive(proc: tuple[int, int]) -> bool:
    """True while the process (pid, starttime) runs; a zombie or a recycled pid counts as gone."""
    st = _stat(proc[0])
    return st is not None and st[2] == proc[1] and st[0] not in ("Z", "X")


def describe(proc: tuple[int, int]) -> str:
    return f"pid {proc[0]}: {_cmdline(proc[0])[:200]}"


class ProcessJanitor:
    """Remembers the processes a test session starts and makes sure none survives it.

    `record` notes new descendants of this process and anything naming ``marker`` (the session's temporary
    directory) on its command line; call it while things run (kernels and renderers come and go).
    `kill_leftovers` sends SIGTERM, then SIGKILL, to the process group and the pid of each one still alive.
    """

    def __init__(self, marker: str):
        self.marker = marker
        self.before = descendants(os.getpid())
        self.seen: set[tuple[int, int]] = set()

    def record(self) -> None:
        self.seen |= descendants(os.getpid()) - self.before
        self.seen |= mentioning(self.marker)

    def leftovers(self) -> list[tuple[int, int]]:
        self.seen |= mentioning(self.marker)
        return sorted(p for p in self.seen if is_alive(p))

    def kill_leftovers(self, grace_s: float = 5.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
            left = self.leftovers()
            if not left:
                return
            for pid, _ in left:
                _signal_group_and_pid(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(is_alive(p) for p in left):
                time.sleep(0.1)


def _signal_group_and_pid(pid: int, sig: int) -> None:
    try:
        pgid = os.getpgid(pid)
        if pgid == pid:  # a group leader we started (server with start_new_session, kernels): the whole group
            os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ==============================================================================================================
# JupyterLab server
# ==============================================================================================================


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_outputs(path: Path) -> None:
    """Remove every output, execution count and saved widget state from a notebook file, in place."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)


def prepare_lab_root(base: Path, notebooks: Path = REPO / "notebooks") -> Path:
    """Copy the notebooks (.ipynb) of ``notebooks`` to ``base/lab/notebooks`` and symlink the repo's other top-level entries beside it.

    Returns the notebooks copy (the server's root_dir). Running cells there cannot modify the committed
    notebooks (no autosave into the repo, no .ipynb_checkpoints there), and paths the notebooks build from
    their working directory (``Path.cwd().parent / "assets"``) resolve into the repo as usual.

    The copies have their outputs cleared: JupyterLab opens them faster (no committed figures and widget
    state to render first), and everything the test then sees was produced by its own Run All.
    """
    lab = base / "lab"
    lab.mkdir(parents=True)
    dst = lab / "notebooks"
    # only the .ipynb: the test runs changed copies (outputs cleared, truncated, a planted bug), which jupytext
    # would refuse to open beside their unchanged .py pairs
    shutil.copytree(notebooks, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.py",
                                                                  "jupytext.toml"))
    for nb_path in dst.glob("*.ipynb"):
        clear_outputs(nb_path)
    for entry in REPO.iterdir():
        if entry.name in ("notebooks", ".git", ".venv", "test-output") or entry.name.startswith("."):
            continue
        (lab / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return dst


def _jupyter_env(base: Path) -> dict:
    """A private Jupyter/IPython configuration: nothing from the user's ~/.jupyter, ~/.ipython or saved
    workspaces can change what the test sees; kernels come from this interpreter's environment."""
    j = base / "jupyter"
    dirs = {
        "JUPYTER_CONFIG_DIR": j / "config",
        "JUPYTER_DATA_DIR": j / "data",
        "JUPYTER_RUNTIME_DIR": j / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": j / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": j / "lab-workspaces",
        "IPYTHONDIR": j / "ipython",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for plugin, values in LAB_SETTINGS.items():
        f = dirs["JUPYTERLAB_SETTINGS_DIR"] / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    env = dict(os.environ)
    env.update({k: str(v) for k, v in dirs.items()})
    env.pop("JUPYTER_TOKEN", None)
    env.pop("JUPYTER_PATH", None)  # user kernelspecs must not shadow this environment's python3
    env["PYTHONUNBUFFERED"] = "1"
    # the same single interpreter for the server and its kernels (jupyter_client's "native" python3 spec)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@dataclass
class LabServer:
    root_dir: Path
    base: Path
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    stopped: bool = False
    command: list[str] | None = None  # how to start JupyterLab (default: this interpreter, --allow-root)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, name: str, workspace: str | None = None) -> str:
        prefix = f"/lab/workspaces/{workspace}" if workspace else "/lab"
        return f"{self.url}{prefix}/tree/{name}?token={self.token}"

    def start(self, timeout_s: float = 120.0, attempts: int = 3) -> None:
        """`launch` and `wait_ready`."""
        self.launch()
        self.wait_ready(timeout_s, attempts)

    def launch(self) -> None:
        """Start the server on a free port in its own process group; returns at once (see `wait_ready`)."""
        self.port = free_port()
        self.log_path = self.base / "jupyter-server.log"
        cmd = list(self.command or [sys.executable, "-m", "jupyterlab", "--allow-root"]) + [
            "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=None",  # no request to jupyter.org (offline) and no news toast
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the test reads the kernel's state
            "--MultiKernelManager.default_kernel_name=python3",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=_jupyter_env(self.base),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self, timeout_s: float = 120.0, attempts: int = 3) -> None:
        """Wait until the launched server answers; relaunch on another port if it exited (e.g. the port was
        taken between free_port() and bind). Stops it and raises `RuntimeError` with its log otherwise."""
        for attempt in range(attempts):
            if self._wait_ready(timeout_s):
                return
            if self.proc.poll() is None or attempt == attempts - 1:  # alive but silent, or out of attempts
                break
            self.launch()
        log_tail = self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within {timeout_s:.0f} s.\n{log_tail}")

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                self.api("GET", "/api/status", timeout=2)
                return True
            except (OSError, urllib.error.URLError):
                time.sleep(0.25)
        return False

    def api(self, method: str, path: str, timeout: float = 10):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self, path: str | None = None) -> None:
        """Shut down the kernel of the notebook ``path`` (every kernel of the server when None)."""
        if path is None:
            ids = [k["id"] for k in self.api("GET", "/api/kernels")]
        else:
            ids = [s["kernel"]["id"] for s in self.api("GET", "/api/sessions")
                   if s.get("path") == path and s.get("kernel")]
        for kernel_id in ids:
            try:
                self.api("DELETE", f"/api/kernels/{kernel_id}", timeout=30)
            except urllib.error.HTTPError:
                pass

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the server's process group (it shuts its kernels down), SIGKILL after ``grace_s``."""
        if self.proc is None or self.stopped:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; the rest of its group may not be
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # once the group is empty its id may be recycled: never signal it again
        self.stopped = not self.group_alive()

    def group_alive(self) -> bool:
        """True while a live (non-zombie) process of the server's process group remains."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        for pid in _all_pids():  # killpg(…, 0) also succeeds for zombies waiting to be reaped: look closer
            st = _stat(pid)
            if st is not None and st[0] not in ("Z", "X") and _pgid(pid) == self.proc.pid:
                return True
        return False


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# ==============================================================================================================
# notebooks
# ==============================================================================================================


def truncate_after(path: Path, marker: str) -> int:
    """Drop, in place, every cell after the first code cell that contains ``marker``; returns how many cells
    were dropped (0 when the marker's cell is the last one). Raises `ValueError` if no code cell has it."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    idx = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and marker in c.source), None)
    if idx is None:
        raise ValueError(f"{path.name}: no code cell contains {marker!r}")
    dropped = len(nb.cells) - idx - 1
    nb.cells = nb.cells[: idx + 1]
    nbformat.write(nb, path)
    return dropped


def write_broken_copy(src: Path, dst: Path, widget_class: str, minimal: bool = True) -> int:
    """Copy a notebook, adding right after the cell that builds ``widget_class`` a cell that disconnects the
    slider's callback of every such widget (``w.slider.unobserve_all("value")``): the slider still moves in
    the browser but the image never changes. With ``minimal`` the copy keeps only the notebook's first code
    cell (its imports and setup), the widget's cell and the planted one: the test only needs the widget, and
    the browser then runs a few seconds of code instead of the whole notebook. Returns the index of the
    planted cell."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    idx = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and f"{widget_class}(" in c.source),
               None)
    if idx is None:
        raise ValueError(f"{src.name}: no code cell builds {widget_class}(...)")
    if minimal:
        first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        nb.cells = [nb.cells[first]] + ([nb.cells[idx]] if idx != first else [])
        idx = len(nb.cells) - 1
    breaker = nbformat.v4.new_code_cell(
        "# planted by tests/test_browser.py: disconnect the slider from the picture\n"
        "import gc as _gc\n"
        f"from ddpm_lite.widgets import {widget_class} as _W\n"
        "_broken = [w for w in _gc.get_objects() if isinstance(w, _W)]\n"
        "for _w in _broken:\n"
        "    _w.slider.unobserve_all('value')\n"
        "assert _broken, 'no widget found to break'\n"
        "print(f'disconnected {len(_broken)} slider(s)')"
    )
    if nb.nbformat_minor < 5:
        breaker.pop("id", None)  # cell ids exist from nbformat 4.5 on
    nb.cells = nb.cells[: idx + 1] + [breaker] + nb.cells[idx + 1:]
    nbformat.write(nb, dst)
    return idx + 1


def write_widget_copy(src: Path, dst: Path, marker: str, first_code_cells: int = 2) -> int:
    """Copy a notebook keeping only its first ``first_code_cells`` code cells (settings, imports, models) and the
    code cell containing ``marker`` (the one that builds the widget): the browser test then runs a few seconds
    of code instead of the whole notebook (nbval runs every cell anyway). Returns the number of cells dropped."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    idx = next((i for i in code if marker in nb.cells[i].source), None)
    if idx is None:
        raise ValueError(f"{src.name}: no code cell contains {marker!r}")
    keep = sorted(set(code[:first_code_cells]) | {idx})
    dropped = len(nb.cells) - len(keep)
    nb.cells = [nb.cells[i] for i in keep]
    nbformat.write(nb, dst)
    return dropped


# ==============================================================================================================
# the page
# ==============================================================================================================

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the tests skip (or fail in CI) before using anything below
    PlaywrightTimeout = TimeoutError

ERROR_LINE = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception|Interrupt|Exit)\b", re.M)

# The notebook on show (each test page opens one notebook; any other panel would be hidden).
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"

# State of the current notebook as JupyterLab sees it (needs --LabApp.expose_app_in_browser).
_CURRENT_STATE_JS = """() => {
    const app = window.jupyterapp;
    const w = app && app.shell ? app.shell.currentWidget : null;
    const ctx = w && w.context, sc = w && w.sessionContext;
    const kernel = sc && sc.session ? sc.session.kernel : null;
    return {app: !!app, path: ctx ? ctx.path : null, ready: !!(sc && sc.isReady),
            kernel: kernel ? kernel.status : null, connection: kernel ? kernel.connectionStatus : null};
}"""


def dismiss_toasts(page) -> None:
    """Close any notification toast (e.g. "Would you like to get notified about official Jupyter news?")."""
    toasts = page.locator(".Toastify__toast")
    for i in range(toasts.count()):
        t = toasts.nth(i)
        try:
            no = t.get_by_role("button", name=re.compile(r"^(No|Dismiss)$"))
            if no.count():
                no.first.click(timeout=2000)
                continue
            close = t.locator(".Toastify__close-button, .jp-toast-button")
            if close.count():
                close.first.click(timeout=2000)
        except Exception:  # the toast went away by itself
            pass


def kernel_status(page) -> str:
    """The kernel item of the status bar, e.g. 'Python 3 (ipykernel) | Idle' ('' before it shows)."""
    loc = page.locator(".jp-StatusBar-Widget").filter(has_text="Python 3 (ipykernel)")
    return loc.first.inner_text().strip() if loc.count() else ""


def current_notebook_state(page) -> dict:
    """{app, path, ready, kernel, connection} of the notebook in front, from JupyterLab's own objects."""
    try:
        return page.evaluate(_CURRENT_STATE_JS)
    except Exception as err:  # the page is (re)loading
        return {"app": False, "error": str(err)[:200]}


def notebook_ready(page, path: str) -> bool:
    """True when ``path`` is the notebook in front with its kernel connected and idle and the status bar says
    so. A dialog in the way (e.g. "Select Kernel" for a notebook without metadata.kernelspec) raises
    `AssertionError` naming it."""
    state = current_notebook_state(page)
    if (state.get("path") == path and state.get("ready") and state.get("kernel") == "idle"
            and state.get("connection") == "connected"
            and page.get_by_text("Python 3 (ipykernel) | Idle").first.is_visible()):
        return True
    dialog = page.locator(".jp-Dialog").first
    if dialog.is_visible():
        raise AssertionError(f"a dialog blocks the notebook {path}: {dialog.inner_text()[:500]!r}")
    return False


def wait_notebook_ready(page, path: str, timeout_s: float = 180.0) -> None:
    """Wait until `notebook_ready`; then dismiss any notification toast."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if notebook_ready(page, path):
            dismiss_toasts(page)
            return
        time.sleep(0.25)
    raise TimeoutError(f"{path}: kernel not idle {timeout_s:.0f} s after opening it (JupyterLab: "
                       f"{current_notebook_state(page)}, status bar: {kernel_status(page)!r})")


def open_notebook(page, url: str, path: str, timeout_s: float = 180.0, wait: bool = True) -> None:
    """Load JupyterLab on a notebook and (unless ``wait`` is False) wait until its kernel is connected and
    idle (`wait_notebook_ready`)."""
    page.goto(url, wait_until="commit", timeout=timeout_s * 1000)
    if wait:
        wait_notebook_ready(page, path, timeout_s)


def code_cell_prompts(page) -> list[str]:
    """The execution prompt of every code cell of the current notebook, e.g. ['[1]:', '[2]:', '[*]:', '[ ]:']."""
    return [s.strip() for s in page.locator(f"{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]


def click_run_all(page) -> None:
    """Run → Run All Cells, from the menu (as a learner would); returns at once."""
    dismiss_toasts(page)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:not(.lm-mod-hidden) .lm-Menu-itemLabel",
                 has_text=re.compile(r"^Run All Cells$")).click()


def wait_run_all_done(page, timeout_s: float = 300.0) -> None:
    """Wait until the run has started (a cell queued, running or numbered), no cell is queued or running any
    more and the kernel has been idle for ~0.75 s (not just the gap between two cells)."""
    deadline = time.monotonic() + timeout_s
    started, stable = False, 0
    while time.monotonic() < deadline:
        prompts = code_cell_prompts(page)
        busy = any("*" in p for p in prompts)
        started = started or busy or any(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
        if started and not busy and "Idle" in kernel_status(page):
            stable += 1
            if stable >= 3:
                return
        else:
            stable = 0
        time.sleep(0.25)
    raise TimeoutError(f"cells still running after {timeout_s:.0f} s: prompts {code_cell_prompts(page)}")


def notebook_errors(page) -> list[str]:
    """Error outputs (tracebacks; failed widget renders) in the current notebook, then the code cells left
    unexecuted (a failing cell stops Run All), as short descriptions. Empty when the run was clean."""
    problems = []
    # In JupyterLab 4 an error output is rendered as text with the stderr mime type (like a stream to
    # stderr, e.g. a warning); the traceback's "...Error ... Traceback" line tells it apart.
    for text in page.locator(f'{NOTEBOOK} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
                             ).all_inner_texts():
        if "Traceback" in text or ERROR_LINE.search(text) or text.startswith("Javascript Error"):
            problems.append("error output: " + text.strip()[:1500])
    for text in page.locator(f"{NOTEBOOK} .jupyter-widgets").filter(has_text="Error displaying widget"
                                                                     ).all_inner_texts():
        problems.append("widget failed to render: " + text.strip()[:300])
    prompts = code_cell_prompts(page)
    skipped = [i for i, prompt in enumerate(prompts) if not re.fullmatch(r"\[\d+\]:", prompt)]
    if skipped:
        problems.append(f"{len(skipped)} of {len(prompts)} code cells not executed (0-based code cells "
                        f"{', '.join(map(str, skipped[:12]))}{', ...' if len(skipped) > 12 else ''}; "
                        f"prompt of the first: {prompts[skipped[0]]!r})")
    return problems


@dataclass
class SliderCheck:
    """What moving a widget's slider did in the browser."""
    readout_before: str
    readout_after: str
    src_changed: bool  # the <img>'s blob: URL changed (the kernel sent new PNG bytes)
    pixels_changed: int  # pixels that differ between the two element screenshots
    shots: list[Path]
    phases: dict = field(default_factory=dict)  # seconds per step of the check

    @property
    def slider_moved(self) -> bool:
        return self.readout_before != self.readout_after

    @property
    def image_changed(self) -> bool:
        return self.src_changed and self.pixels_changed > 0


def _pixels_differing(a: bytes, b: bytes) -> int:
    from PIL import Image, ImageChops

    ia, ib = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    if ia.size != ib.size:
        return ia.size[0] * ia.size[1]
    diff = ImageChops.difference(ia, ib).convert("L").point(lambda v: 255 if v > 8 else 0)
    return int(sum(diff.histogram()[1:]))


def find_widget(page, css_class: str, timeout_s: float = 60.0):
    """The rendered widget with ``css_class``, once its slider and its image have rendered."""
    w = page.locator(f"{NOTEBOOK} .{css_class}").first
    try:
        w.wait_for(state="attached", timeout=timeout_s * 1000)
        w.locator(".widget-slider .noUi-handle").first.wait_for(state="attached", timeout=timeout_s * 1000)
        img = w.locator("img").first
        img.wait_for(state="attached", timeout=timeout_s * 1000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                               timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"no rendered widget .{css_class} (with a slider and an image) after "
                             f"{timeout_s:.0f} s: the widget front end did not render it") from None
    return w


def _element_shot(page, element, path: Path) -> bytes:
    """A screenshot of the page region the element covers: what the browser shows there, PNG bytes."""
    element.scroll_into_view_if_needed()
    box = element.bounding_box()
    if box is None:
        raise AssertionError(f"{path.stem}: the element is not displayed")
    return page.screenshot(path=str(path), clip=box)


def check_slider_changes_image(page, css_class: str, out_dir: Path, name: str, *, update_timeout_s: float = 30.0,
                               keys: list[str] | None = None) -> SliderCheck:
    """Screenshot the widget's image, move its slider with the keyboard, wait for a new image, screenshot again.

    The slider is focused by clicking its handle; then ``keys`` are pressed (default: End, or Home when the
    slider already sits at its maximum: the biggest visual change). Waits up to ``update_timeout_s`` for the
    ``<img>`` src (a blob: URL that changes on every update) to change and then settle. Does not assert:
    the caller decides (a working widget must change, a broken one must not).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    phases, t = {}, time.monotonic()

    def lap(what: str) -> None:
        nonlocal t
        phases[what] = round(time.monotonic() - t, 2)
        t = time.monotonic()

    page.bring_to_front()  # the browser renders (and screenshots quickly) the tab in front
    widget = find_widget(page, css_class)
    dismiss_toasts(page)
    widget.scroll_into_view_if_needed()
    img = widget.locator("img").first
    slider = widget.locator(".widget-slider").first
    handle = slider.locator(".noUi-handle").first
    readout = slider.locator(".widget-readout").first

    before_png = _element_shot(page, img, out_dir / f"{name}_image_before.png")
    src_before = img.get_attribute("src")
    readout_before = readout.inner_text().strip()
    lap("find widget, screenshot")

    if keys is None:
        now, top = handle.get_attribute("aria-valuenow"), handle.get_attribute("aria-valuemax")
        keys = ["Home"] if now is not None and now == top else ["End"]
    handle.click()
    for k in keys:
        handle.press(k)
    lap("click, keys")

    try:
        page.wait_for_function("([img, src]) => img.getAttribute('src') !== src",
                               arg=[img.element_handle(), src_before], timeout=update_timeout_s * 1000,
                               polling=100)
        src_changed = True
        lap("new picture")
        # let a burst of updates (continuous_update) settle: the same src for 0.5 s
        last, since = img.get_attribute("src"), time.monotonic()
        while time.monotonic() - since < 0.5:
            time.sleep(0.1)
            cur = img.get_attribute("src")
            if cur != last:
                last, since = cur, time.monotonic()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                               timeout=10_000, polling=100)
        lap("settle")
    except PlaywrightTimeout:
        src_changed = False
        lap("no new picture")

    after_png = _element_shot(page, img, out_dir / f"{name}_image_after.png")
    lap("screenshot")
    return SliderCheck(
        readout_before=readout_before,
        readout_after=readout.inner_text().strip(),
        src_changed=src_changed,
        pixels_changed=_pixels_differing(before_png, after_png),
        shots=[out_dir / f"{name}_image_{s}.png" for s in ("before", "after")],
        phases=phases,
    )


@dataclass
class TextCheck:
    """What typing into a widget's text box did in the browser."""
    value_before: str
    value_after: str
    src_changed: bool  # the <img>'s blob: URL changed (the kernel sent new PNG bytes)
    pixels_changed: int  # pixels that differ between the two element screenshots
    shots: list[Path]
    phases: dict = field(default_factory=dict)

    @property
    def image_changed(self) -> bool:
        return self.src_changed and self.pixels_changed > 0


def check_text_changes_image(page, css_class: str, text: str, out_dir: Path, name: str, *,
                             update_timeout_s: float = 60.0) -> TextCheck:
    """Screenshot the widget's image, type ``text`` into its text box (``.<css_class>-text input``: select all,
    type, Enter, as a learner would), wait for a new image, screenshot again. Does not assert."""
    out_dir.mkdir(parents=True, exist_ok=True)
    phases, t = {}, time.monotonic()

    def lap(what: str) -> None:
        nonlocal t
        phases[what] = round(time.monotonic() - t, 2)
        t = time.monotonic()

    page.bring_to_front()
    widget = find_widget(page, css_class)
    dismiss_toasts(page)
    widget.scroll_into_view_if_needed()
    img = widget.locator("img").first
    box = widget.locator(f".{css_class}-text input").first
    before_png = _element_shot(page, img, out_dir / f"{name}_image_before.png")
    src_before = img.get_attribute("src")
    value_before = box.input_value()
    lap("find widget, screenshot")

    box.click()
    box.press("Control+a")
    box.type(text)  # key by key, as typed
    box.press("Enter")  # the Text widget (continuous_update=False) sends its value on Enter
    lap("type, Enter")
    try:
        page.wait_for_function("([img, src]) => img.getAttribute('src') !== src",
                               arg=[img.element_handle(), src_before], timeout=update_timeout_s * 1000,
                               polling=100)
        src_changed = True
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                               timeout=10_000, polling=100)
        lap("new picture")
    except PlaywrightTimeout:
        src_changed = False
        lap("no new picture")
    after_png = _element_shot(page, img, out_dir / f"{name}_image_after.png")
    lap("screenshot")
    return TextCheck(value_before=value_before, value_after=box.input_value(), src_changed=src_changed,
                     pixels_changed=_pixels_differing(before_png, after_png),
                     shots=[out_dir / f"{name}_image_{s}.png" for s in ("before", "after")], phases=phases)
