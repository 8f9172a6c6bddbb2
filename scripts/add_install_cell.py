"""Insert, or refresh, the install cell (scripts/install_cell.py) as the first code cell of every notebook.

    python scripts/add_install_cell.py [NOTEBOOK ...]     # default: notebooks/*.ipynb

Idempotent: a notebook whose first code cell is already the current install cell is left byte for byte as it
is; an older version of the cell (found by its id or its first line) is updated and moved to the front of the
code cells; otherwise a new cell is inserted before the first code cell. Execute the notebooks afterwards, so
that their committed outputs include the cell's one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CELL = (ROOT / "scripts" / "install_cell.py").read_text(encoding="utf-8").rstrip("\n")
FIRST_LINE = CELL.splitlines()[0]


def is_install_cell(cell) -> bool:
    return cell.cell_type == "code" and (str(cell.get("id", "")).endswith("-install")
                                         or cell.source.splitlines()[:1] == [FIRST_LINE])


def with_install_cell(nb, prefix: str) -> bool:
    """Make the first code cell of `nb` the current install cell (in place); True if `nb` changed.
    `prefix` names the new cell's id (`<prefix>-install`, e.g. 01-install)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    if code and is_install_cell(code[0]) and code[0].source == CELL:
        return False
    old = [c for c in nb.cells if is_install_cell(c)]
    for cell in old:
        nb.cells.remove(cell)
    cell = old[0] if old else nbformat.v4.new_code_cell(CELL)
    cell.source = CELL
    if not old:
        cell.id = f"{prefix}-install"
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first, cell)
    return True


def main(paths: list[str]) -> None:
    for path in map(Path, paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))):
        nb = nbformat.read(path, as_version=4)
        changed = with_install_cell(nb, path.name.split("_")[0])
        if changed:
            nbformat.write(nb, path)
        print(f"{path.name}: {'install cell written' if changed else 'up to date'}")


if __name__ == "__main__":
    main(sys.argv[1:])
