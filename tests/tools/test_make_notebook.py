"""Tests for tools/make_notebook.py: build from a percent source, and the --prose sync."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

_PATH = Path(__file__).resolve().parents[2] / "tools" / "make_notebook.py"
_spec = importlib.util.spec_from_file_location("make_notebook", _PATH)
make_notebook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebook)


def _source(tmp_path: Path, prose: str, code: str = "x = 1") -> Path:
    src = tmp_path / "src" / "07_demo.py"
    src.parent.mkdir(exist_ok=True)
    src.write_text(f"# %% [markdown]\n# {prose}\n\n# %%\n{code}\n")
    return src


def test_prose_sync_keeps_outputs_and_ids(tmp_path):
    src = _source(tmp_path, "old words")
    target = make_notebook.build(src)
    nb = nbformat.read(target, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="kept\n")]
    old_id = nb.cells[0].id
    nbformat.write(nb, target)
    _source(tmp_path, "new words")
    make_notebook.sync_prose(src)
    nb = nbformat.read(target, as_version=4)
    assert nb.cells[0].source == "new words" and nb.cells[0].id == old_id
    assert nb.cells[1].outputs[0].text == "kept\n"


def test_prose_sync_refuses_changed_code(tmp_path):
    src = _source(tmp_path, "words")
    make_notebook.build(src)
    _source(tmp_path, "words", code="x = 2")
    with pytest.raises(SystemExit, match="code cell 0 differs"):
        make_notebook.sync_prose(src)
