"""Tests for labkit.cli.lab: the working copy JupyterLab opens instead of notebooks/."""

from __future__ import annotations

import pytest

from labkit.cli import lab


def test_working_copy_keeps_user_work(tmp_path):
    source = tmp_path / "notebooks"
    source.mkdir()
    (source / "00_tour.ipynb").write_text("stored 00")
    (source / "01_x.ipynb").write_text("stored 01")
    (source / "scratch.ipynb").write_text("not a lab notebook")
    dest = tmp_path / "copy"
    copies = lab.working_copy(dest, source=source)
    assert [p.name for p in copies] == ["00_tour.ipynb", "01_x.ipynb"]
    assert (dest / "00_tour.ipynb").read_text() == "stored 00"
    (dest / "00_tour.ipynb").write_text("the user's run")
    lab.working_copy(dest, source=source)
    assert (dest / "00_tour.ipynb").read_text() == "the user's run"
    assert (source / "00_tour.ipynb").read_text() == "stored 00"
    lab.working_copy(dest, fresh=True, source=source)
    assert (dest / "00_tour.ipynb").read_text() == "stored 00"


def test_default_copy_is_ignored_by_git():
    root = lab.NOTEBOOK_DIR.parent
    ignore = (root / ".gitignore").read_text().split()
    assert f"/{lab.DEFAULT_COPY.name}/" in ignore


def test_lab_command_passes_jupyter_options_on(monkeypatch, tmp_path):
    from labkit.cli import main as cli

    calls = []
    monkeypatch.setattr(lab, "main", lambda *args: calls.append(args) or 0)
    assert cli.main(["lab", "--dir", str(tmp_path), "--no-browser", "--ServerApp.port=8899"]) == 0
    assert calls == [(tmp_path, False, ["--no-browser", "--ServerApp.port=8899"])]
    with pytest.raises(SystemExit):
        cli.main(["download", "mnist", "--no-browser"])
