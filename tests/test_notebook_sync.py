"""Every notebook is a jupytext pair: notebooks/NN_name.ipynb (executed, with outputs) and notebooks/NN_name.py
(percent format, the readable source). The two must hold the same cells: same types, same sources (trailing
whitespace aside). Fix a mismatch with `make sync` (jupytext --sync: the more recently modified file wins).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
IPYNBS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb) -> list[tuple[str, str]]:
    """(cell_type, source) per cell, trailing whitespace of each line and of the cell ignored."""
    return [(c.cell_type, "\n".join(line.rstrip() for line in c.source.rstrip().splitlines())) for c in nb.cells]


def pair_mismatch(ipynb: Path, py: Path) -> str | None:
    """None if the .py and the .ipynb hold the same cells, else a message naming the first difference."""
    if not py.exists():
        return f"{ipynb.name} has no paired {py.name}; create it with: jupytext --sync {ipynb.relative_to(ipynb.parents[1])}"
    nb = nbformat.read(ipynb, as_version=4)
    a, b = _cells(nb), _cells(jupytext.read(py))
    fix = f"fix: make sync   (or: jupytext --sync notebooks/{ipynb.name}; the more recently modified file wins)"
    for i, (ca, cb) in enumerate(zip(a, b)):
        if ca != cb:
            la, lb = ca[1].splitlines(), cb[1].splitlines()
            j = next((k for k, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
            line_a = la[j] if j < len(la) else "<end of cell>"
            line_b = lb[j] if j < len(lb) else "<end of cell>"
            return (f"{ipynb.name} and {py.name} disagree at cell {i} (id {nb.cells[i].get('id')}; {ca[0]} in the "
                    f".ipynb, {cb[0]} in the .py), line {j + 1}:\n  .ipynb: {line_a!r}\n  .py:    {line_b!r}\n{fix}")
    if len(a) != len(b):
        return (f"{ipynb.name} has {len(a)} cells, {py.name} has {len(b)} (the first {min(len(a), len(b))} agree)"
                f"\n{fix}")
    return None


def test_every_notebook_found():
    assert len(IPYNBS) >= 7, f"expected the course notebooks in {NOTEBOOKS}"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_py_and_ipynb_agree(ipynb):
    msg = pair_mismatch(ipynb, ipynb.with_suffix(".py"))
    if msg:
        pytest.fail(msg, pytrace=False)


def test_no_orphan_py():
    orphans = [p.name for p in NOTEBOOKS.glob("*.py") if not p.with_suffix(".ipynb").exists()]
    assert not orphans, (f"{orphans} in notebooks/ have no .ipynb: create it with "
                         "jupytext --sync notebooks/NN_name.py, then execute it (make notebooks)")


def test_mismatch_is_reported(tmp_path):
    """The check itself: an edited .py, a missing cell and a missing .py are all caught and named."""
    src = IPYNBS[0]
    ipynb = tmp_path / src.name
    ipynb.write_bytes(src.read_bytes())
    py = ipynb.with_suffix(".py")
    nb = jupytext.read(src.with_suffix(".py"))
    assert pair_mismatch(ipynb, py) is not None and "no paired" in pair_mismatch(ipynb, py)

    jupytext.write(nb, py, fmt="py:percent")
    assert pair_mismatch(ipynb, py) is None
    py.write_text(py.read_text() + "\n   \n")                  # trailing whitespace only: still in sync
    assert pair_mismatch(ipynb, py) is None

    k = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    edited = nbformat.from_dict(nb)
    edited.cells[k].source += "\nprint('edited')"
    jupytext.write(edited, py, fmt="py:percent")
    msg = pair_mismatch(ipynb, py)
    assert msg is not None and f"cell {k}" in msg and src.name in msg and "edited" in msg and "make sync" in msg

    shorter = nbformat.from_dict(nb)
    shorter.cells = shorter.cells[:-1]
    jupytext.write(shorter, py, fmt="py:percent")
    msg = pair_mismatch(ipynb, py)
    assert msg is not None and "cells" in msg and "make sync" in msg
