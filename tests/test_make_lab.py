"""`make lab`, the README's first command, starts a JupyterLab server, also for a user who runs as root.

The test asks make for the command line of the `lab` target (``make -n``, without rebuilding the venv), runs
exactly that command with a port, a token and a private configuration appended, waits until the server
answers, then stops its process group.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import browser_helpers as bh

REPO = Path(__file__).resolve().parents[1]


def lab_command() -> list[str]:
    venv = Path(sys.executable).parent.parent
    out = subprocess.run(["make", "-n", "-s", "-o", f"{venv}/.installed", "lab", f"VENV={venv}"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if "jupyter lab" in line]
    assert len(lines) == 1, f"expected one `jupyter lab` line from `make -n lab`, got:\n{out}"
    return shlex.split(lines[0])


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_starts_jupyterlab_as_this_user(tmp_path):
    cmd = lab_command()
    assert Path(cmd[0]).name == "jupyter" and cmd[1] == "lab" and cmd[-1] == "notebooks/"
    if os.geteuid() == 0:
        assert "--allow-root" in cmd, "as root, JupyterLab refuses to start without --allow-root"
    # make's command, less its trailing folder argument (the server's root_dir is set instead)
    server = bh.LabServer(root_dir=REPO / "notebooks", base=tmp_path, command=cmd[:-1])
    try:
        server.start(timeout_s=120, attempts=2)
        status = server.api("GET", "/api/status")
        assert "started" in status
        listing = server.api("GET", "/api/contents")
        assert any(item["name"] == "01_forward_noising.ipynb" for item in listing["content"])
        # the notebook opens through jupytext's pairing with its .py (no "is more recent than" error)
        nb = server.api("GET", "/api/contents/01_forward_noising.ipynb")
        assert nb["type"] == "notebook" and len(nb["content"]["cells"]) > 10
    finally:
        server.stop()
    assert not server.group_alive()
