"""Write student copies of the course notebooks: every solution replaced by `raise NotImplementedError()`.

Solutions sit between nbgrader's markers `### BEGIN SOLUTION` and `### END SOLUTION` in code cells; the lines
between them (and the markers) are replaced by one `raise NotImplementedError()` at the same indentation.
Outputs of exercise cells are cleared, so no solution leaks through a printed result.

    python tools/make_student.py [--src notebooks] [--out student]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")


def strip_solutions(source: str) -> tuple[str, int]:
    """Replace every solution block in `source`; returns the new source and the number of blocks."""
    out, inside, count = [], False, 0
    for line in source.splitlines():
        begin = BEGIN.match(line)
        if begin and not inside:
            inside, count = True, count + 1
            out.append(f"{begin.group(1)}raise NotImplementedError()")
        elif END.match(line) and inside:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("a '### BEGIN SOLUTION' has no matching '### END SOLUTION'")
    return "\n".join(out), count


def make_student_copy(src: Path, dst: Path) -> int:
    nb = nbformat.read(src, as_version=4)
    total = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.source, count = strip_solutions(cell.source)
        if count:
            total += count
            cell.outputs, cell.execution_count = [], None
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="notebooks", help="folder of the solution notebooks (default: notebooks)")
    parser.add_argument("--out", default="student", help="folder to write the student copies to (default: student)")
    args = parser.parse_args(argv)
    src = Path(args.src)
    notebooks = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print(f"no numbered notebooks found in {src}/", file=sys.stderr)
        return 2
    for nb_path in notebooks:
        n = make_student_copy(nb_path, Path(args.out) / nb_path.name)
        print(f"{nb_path.name}: {n} exercise(s) stripped -> {Path(args.out) / nb_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
