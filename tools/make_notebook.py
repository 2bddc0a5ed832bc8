"""Build notebooks/NN_name.ipynb from its percent-format source notebooks/src/NN_name.py.

The .py source is what we review and edit; the .ipynb is generated, then executed with the
`lab` profile (`labkit reproduce --inplace`) so the committed notebook carries real outputs.
Cells start with `# %%` (code) or `# %% [markdown]` (markdown lines are written as `# text`).

usage: python tools/make_notebook.py notebooks/src/01_regular_polytope_networks.py [...]
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


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(build(Path(arg)))
