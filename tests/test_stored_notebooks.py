"""The stored notebooks read well without a kernel: every widget output is a picture of its first
state, nbconvert's HTML (no kernel, no widget state) shows no widget repr, no plotly.js is copied
into them, and they were executed in the `lab` profile. Also: the repository stands alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
STORED = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET_REPR = re.compile(r"\b[A-Z]\w*\(children=")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _outputs(notebook):
    for cell in notebook.cells:
        yield from cell.get("outputs", [])


@pytest.mark.parametrize("path", STORED, ids=lambda path: path.stem)
def test_stored_notebook_shows_pictures_not_widget_reprs(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata.get("labkit", {}).get("profile") == "lab", \
        f"{path.name} is not stored executed in the lab profile (labkit reproduce --inplace)"
    pictures = 0
    for output in _outputs(notebook):
        data = output.get("data", {})
        assert WIDGET_VIEW not in data, f"{path.name}: a stateless widget view was stored"
        assert not WIDGET_REPR.search(data.get("text/plain", "")), f"{path.name}: a widget repr was stored"
        if output.get("metadata", {}).get("labkit", {}).get("widget_picture"):
            assert "image/png" in data
            pictures += 1
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    if "widgets" in source:  # the notebook displays widgets: each one left a picture
        assert pictures, f"{path.name} displays widgets but stores no picture of them"
    text = path.read_text()
    assert "plotly.js v" not in text and "window.PlotlyConfig" not in text, \
        f"{path.name} carries a copy of plotly.js"


@pytest.mark.parametrize("path", STORED, ids=lambda path: path.stem)
def test_nbconvert_html_without_kernel_shows_no_widget_repr(path):
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(path, as_version=4))
    assert not WIDGET_REPR.search(body), f"{path.name}: nbconvert shows a widget's text repr"


def test_no_tracked_file_points_outside_the_repository():
    outside = "shared" + "/"  # spelled apart so that this file does not match itself
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    hits = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if path.suffix in {".png", ".jpg"} or not path.is_file():
            continue
        if outside in path.read_text(errors="ignore"):
            hits.append(name)
    assert not hits, f"files that refer to {outside!r}: {hits}"
