"""Build notebooks/NN_name.ipynb from its percent-format source notebooks/src/NN_name.py.

The .py source is what we review and edit; the .ipynb is generated, then executed with the
`lab` profile (`labkit reproduce --inplace`) so the committed notebook carries real outputs.
Cells start with `# %%` (code) or `# %% [markdown]` (markdown lines are written as `# text`).

usage: python tools/make_notebook.py [--prose] notebooks/src/01_regular_polytope_networks.py [...]

--prose rewrites only the markdown cells of an existing executed notebook and keeps its outputs;
it refuses when the code cells differ from the source (then rebuild and re-execute).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

_MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?\s*$")


def parse_cells(text: str) -> list[tuple[str, str]]:
    """Split percent-format source into (kind, source) pairs, kind in {"code", "markdown"}."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _MARKER.match(line)
        if match:
            cells.append(("markdown" if match.group("md") else "code", []))
        elif cells:
            cells[-1][1].append(line)
    parsed = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        source = "\n".join(lines).strip("\n")
        if source:
            parsed.append((kind, source))
    return parsed


def build(source: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, text in parse_cells(source.read_text()):
        maker = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        notebook.cells.append(maker(text))
    target = source.parent.parent / (source.stem + ".ipynb")
    nbformat.write(notebook, target)
    return target


def sync_prose(source: Path) -> Path:
    """Replace the markdown of the executed notebook by the source's, keeping every output."""
    target = source.parent.parent / (source.stem + ".ipynb")
    notebook = nbformat.read(target, as_version=4)
    cells = parse_cells(source.read_text())
    old_code = [c.source for c in notebook.cells if c.cell_type == "code"]
    new_code = [text for kind, text in cells if kind == "code"]
    if old_code != new_code:
        padded = max(len(old_code), len(new_code))
        old_code += [""] * (padded - len(old_code))
        new_code += [""] * (padded - len(new_code))
        changed = next(i for i, (a, b) in enumerate(zip(old_code, new_code, strict=True)) if a != b)
        raise SystemExit(f"{target}: code cell {changed} differs from {source}; rebuild and "
                         f"re-execute instead of --prose")
    code = iter(c for c in notebook.cells if c.cell_type == "code")
    old_prose = [c for c in notebook.cells if c.cell_type == "markdown"]
    new_prose = [text for kind, text in cells if kind == "markdown"]
    if len(old_prose) == len(new_prose):  # same cells, new text: keep their ids (small diffs)
        for cell, text in zip(old_prose, new_prose, strict=True):
            cell.source = text
        prose = iter(old_prose)
    else:
        prose = iter(nbformat.v4.new_markdown_cell(text) for text in new_prose)
    notebook.cells = [next(code) if kind == "code" else next(prose) for kind, _ in cells]
    nbformat.write(notebook, target)
    return target


if __name__ == "__main__":
    args = sys.argv[1:]
    prose = "--prose" in args
    for arg in (a for a in args if a != "--prose"):
        print(sync_prose(Path(arg)) if prose else build(Path(arg)))
