"""`make student` (tools/make_student.py): every course notebook gets a student copy in which each exercise
solution is replaced by `raise NotImplementedError()`, no solution line survives, and exercise outputs are gone."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTION = re.compile(r"### BEGIN SOLUTION\s*\n(.*?)\n\s*### END SOLUTION", re.S)


def _make_student():
    spec = importlib.util.spec_from_file_location("make_student", REPO / "tools" / "make_student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_has_no_solutions(path, tmp_path):
    original = nbformat.read(path, as_version=4)
    blocks = [m.group(1) for c in original.cells if c.cell_type == "code" for m in SOLUTION.finditer(c.source)]
    assert len(blocks) >= 2, f"{path.name}: a notebook needs at least two exercises, found {len(blocks)}"

    n = _make_student().make_student_copy(path, tmp_path / path.name)
    assert n == len(blocks)
    student = nbformat.read(tmp_path / path.name, as_version=4)
    text = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert text.count("raise NotImplementedError()") >= n
    for block in blocks:  # no solution survives: each block's distinctive lines are gone from the copy
        distinctive = [ln.strip() for ln in block.splitlines()
                       if len(ln.strip()) > 25 and not ln.strip().startswith("#")]
        for line in distinctive:
            assert line not in text, f"{path.name}: solution line left in the student copy: {line!r}"
    for orig, stud in zip(original.cells, student.cells):
        if orig.cell_type == "code" and SOLUTION.search(orig.source):
            assert stud.outputs == [] and stud.execution_count is None


def test_strip_rejects_an_unclosed_block():
    with pytest.raises(ValueError, match="no matching"):
        _make_student().strip_solutions("x = 1\n### BEGIN SOLUTION\ny = 2\n")
