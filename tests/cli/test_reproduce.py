"""Tests for labkit.cli.reproduce: notebook selection and figure extraction."""

from __future__ import annotations

import base64
import io

import nbformat
import numpy as np
import pytest
from PIL import Image

from labkit.cli import reproduce


@pytest.fixture
def folder(tmp_path):
    for name in ("00_tour.ipynb", "01_polytopes.ipynb", "02_fdl.ipynb", "notes.ipynb", "03_draft.txt"):
        (tmp_path / name).write_text("{}")
    return tmp_path


def test_find_notebooks_by_prefix(folder):
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(reproduce.find_notebooks([], folder)) == ["00_tour.ipynb", "01_polytopes.ipynb",
                                                           "02_fdl.ipynb"]
    assert names(reproduce.find_notebooks(["01"], folder)) == ["01_polytopes.ipynb"]
    assert names(reproduce.find_notebooks(["02", "00_t"], folder)) == ["00_tour.ipynb", "02_fdl.ipynb"]


def test_find_notebooks_unknown(folder):
    with pytest.raises(ValueError) as info:
        reproduce.find_notebooks(["01", "07"], folder)
    assert "07" in str(info.value) and "00_tour.ipynb" in str(info.value)
    with pytest.raises(ValueError):
        reproduce.find_notebooks(["notes"], folder)  # not a numbered notebook


def test_find_notebooks_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebooks"):
        reproduce.find_notebooks([], tmp_path / "nope")


def test_repository_notebooks_are_found():
    if not reproduce.NOTEBOOK_DIR.is_dir():
        pytest.skip("not a source checkout")
    assert reproduce.find_notebooks(["00"])[0].name.startswith("00_")


def _png(color) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), color).save(buffer, format="PNG")
    raw = buffer.getvalue()
    return base64.b64encode(raw).decode(), raw


def test_save_figures(tmp_path):
    red, red_raw = _png((255, 0, 0))
    blue, _ = _png((0, 0, 255))
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("plot()", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
            nbformat.v4.new_output("display_data", data={"image/png": red, "text/plain": "<Figure>"}),
        ]),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("fig", outputs=[
            nbformat.v4.new_output("execute_result", data={"image/png": blue}, execution_count=3),
            nbformat.v4.new_output("display_data", data={"text/html": "<b>no image</b>"}),
        ]),
    ]
    nbformat.validate(nb)
    # round trip through the on-disk format, as reproduce does
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    nb = nbformat.read(path, as_version=4)
    out = tmp_path / "figures"
    assert reproduce.save_figures(nb, out) == 2
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cell01_01.png", "cell03_02.png"]
    assert (out / "cell01_01.png").read_bytes() == red_raw
    with Image.open(out / "cell03_02.png") as image:
        assert image.size == (3, 2)
        assert np.asarray(image.convert("RGB"))[0, 0].tolist() == [0, 0, 255]


def test_save_figures_without_images(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    assert reproduce.save_figures(nb, tmp_path / "figs") == 0
    assert not (tmp_path / "figs").exists()


def test_run_collects_notebooks_and_figures(tmp_path, monkeypatch, capsys):
    source = tmp_path / "src"
    source.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), source / "00_a.ipynb")
    red, _ = _png((255, 0, 0))
    executed = []

    def fake_execute(path, target, profile, timeout):
        executed.append((path.name, target, profile))
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("f", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": red})])])
        return nb, 0.5

    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", source)
    monkeypatch.setattr(reproduce.find_notebooks, "__defaults__", (source,))
    monkeypatch.setattr(reproduce, "execute", fake_execute)
    out = tmp_path / "out"
    assert reproduce.run([], out, "quick", inplace=False, timeout=10) == 0
    assert executed == [("00_a.ipynb", out / "notebooks" / "00_a.ipynb", "quick")]
    assert (out / "figures" / "00_a" / "cell00_01.png").exists()
    table = capsys.readouterr().out.split("notebook ")[-1]
    assert "00_a.ipynb" in table and "quick" in table and " 1  ok" in table


class _FlakyClient:
    """Stands in for nbclient.NotebookClient: the first `hangs` runs time out, the rest finish."""

    runs = 0
    hangs = 1

    def __init__(self, notebook, **options):
        self.notebook, self.options = notebook, options

    def execute(self):
        from nbclient.exceptions import CellTimeoutError

        type(self).runs += 1
        if type(self).runs <= type(self).hangs:
            raise CellTimeoutError("no reply")
        self.notebook.cells[0].outputs = [nbformat.v4.new_output("stream", text="done\n")]


def test_execute_runs_a_timed_out_notebook_again(tmp_path, monkeypatch, capsys):
    from nbclient.exceptions import CellTimeoutError

    source = tmp_path / "00_x.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('done')")]
    nbformat.write(nb, source)
    monkeypatch.setattr(reproduce, "_client_class", lambda: _FlakyClient)
    monkeypatch.setattr(_FlakyClient, "runs", 0)
    executed, _ = reproduce.execute(source, tmp_path / "out.ipynb", "quick", timeout=5)
    assert _FlakyClient.runs == 2 and executed.cells[0].outputs[0]["text"] == "done\n"
    assert "running the notebook again" in capsys.readouterr().out
    assert (tmp_path / "out.ipynb").exists()
    monkeypatch.setattr(_FlakyClient, "runs", 0)
    monkeypatch.setattr(_FlakyClient, "hangs", 2)
    with pytest.raises(CellTimeoutError):
        reproduce.execute(source, tmp_path / "out.ipynb", "quick", timeout=5)


def test_default_timeout_by_profile():
    assert reproduce.default_timeout("quick") < reproduce.default_timeout("lab")
    assert reproduce.default_timeout("full") == reproduce.default_timeout("lab")


def _write_notebook(path, *sources):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]),
                   path)


def test_run_goes_on_after_a_failing_notebook(tmp_path, capsys):
    """Real kernels: the middle notebook raises; the others still run, the table says FAILED
    for it, its partial output is written, and the exit code is 1."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _write_notebook(folder / "00_first.ipynb", "print('first ran')")
    _write_notebook(folder / "01_broken.ipynb", "print('before')", "raise ValueError('planted')")
    _write_notebook(folder / "02_last.ipynb", "print('last ran')")
    out = tmp_path / "out"
    assert reproduce.run([], out, "quick", inplace=False, timeout=60, folder=folder) == 1
    printed = capsys.readouterr().out
    table = printed[printed.index("status\n"):]
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("0")}
    assert rows["00_first.ipynb"].endswith("ok") and rows["02_last.ipynb"].endswith("ok")
    assert "FAILED" in rows["01_broken.ipynb"] and "planted" in rows["01_broken.ipynb"]
    assert "1 of 3 notebooks FAILED: 01_broken.ipynb" in printed
    last = nbformat.read(out / "notebooks" / "02_last.ipynb", as_version=4)
    assert last.cells[0].outputs[0]["text"] == "last ran\n"
    broken = nbformat.read(out / "notebooks" / "01_broken.ipynb", as_version=4)
    assert broken.cells[0].outputs[0]["text"] == "before\n"
    assert broken.cells[1].outputs[0]["output_type"] == "error"


class _SilentChannel:
    """A channel whose message is ready but whose waits return only when they time out, as when
    the socket's read event is lost."""

    def __init__(self, ready_after: int) -> None:
        self.calls, self.ready_after, self.timeouts = 0, ready_after, []

    async def get_msg(self, timeout=None):
        import asyncio
        from queue import Empty

        self.calls += 1
        self.timeouts.append(timeout)
        await asyncio.sleep(timeout)
        if self.calls <= self.ready_after:
            raise Empty
        return {"msg_type": "execute_reply"}


def test_polled_channel_finds_a_message_without_a_read_event(monkeypatch):
    import asyncio
    from queue import Empty

    monkeypatch.setattr(reproduce, "POLL_SLICE_S", 0.01)
    channel = reproduce._PolledChannel(_SilentChannel(ready_after=2))
    assert asyncio.run(channel.get_msg(timeout=None))["msg_type"] == "execute_reply"
    assert channel.channel.calls == 3 and channel.recovered == 1
    assert all(t <= 0.01 for t in channel.channel.timeouts)  # never one long wait
    late = reproduce._PolledChannel(_SilentChannel(ready_after=10**6))
    with pytest.raises(Empty):
        asyncio.run(late.get_msg(timeout=0.05))
    assert 3 <= late.channel.calls <= 6  # the overall timeout still holds


def _printing(*texts, profile=None):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"print({text!r})", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=text + "\n")]) for text in texts])
    if profile:
        nb.metadata["labkit"] = {"profile": profile}
    return nb


def test_printed_differences_list_changed_lines_but_not_timings():
    stored = _printing("accuracy 95.7%", "trained in 12.3 s", "done")
    fresh = _printing("accuracy 94.9%", "trained in 8.0 s", "done")
    fresh.cells.append(nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
        "execute_result", data={"text/plain": "<Figure>", "image/png": "x"}, execution_count=1)]))
    assert reproduce.printed_lines(stored)[1] == "trained in <time>"
    assert reproduce.printed_differences(stored, fresh) == ["-accuracy 95.7%", "+accuracy 94.9%"]
    assert reproduce.printed_differences(stored, stored) == []
    timed = _printing("apfs/baseline: 0.99x")
    timed.cells[0].source = "# timing cell\nprint(ratio)"
    assert reproduce.printed_lines(timed) == []


def test_write_records_the_profile_and_replaces_stateless_widgets_by_their_pictures(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("w", outputs=[
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                         "version_minor": 0},
            "image/png": "iVBORw0KGgo=", "text/plain": "a widget"})])])
    nb.metadata["widgets"] = {"state": "big"}
    reproduce._write(nb, tmp_path / "nb.ipynb", "quick")
    stored = nbformat.read(tmp_path / "nb.ipynb", as_version=4)
    assert reproduce.stored_profile(stored) == "quick" and "widgets" not in stored.metadata
    assert set(stored.cells[0].outputs[0].data) == {"image/png", "text/plain"}
    assert reproduce.stored_profile(nbformat.v4.new_notebook()) == "lab"


def test_check_reexecutes_in_the_stored_profile_and_reports_differences(tmp_path, capsys):
    """Real kernels: one stored notebook still prints what it stored, one does not."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    same = _printing("profile quick", profile="quick")
    same.cells[0].source = "import os; print('profile', os.environ['LABKIT_PROFILE'])"
    nbformat.write(same, folder / "00_same.ipynb")
    changed = _printing("stored 1", profile="quick")
    changed.cells[0].source = "print('stored', 2)"
    nbformat.write(changed, folder / "01_changed.ipynb")
    out = tmp_path / "out"
    assert reproduce.run([], out, None, inplace=False, timeout=60, folder=folder, check=True) == 1
    printed = capsys.readouterr().out
    assert "-stored 1" in printed and "+stored 2" in printed
    table = printed[printed.index("status\n"):]
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("0")}
    assert rows["00_same.ipynb"].endswith("ok") and " quick " in rows["00_same.ipynb"]
    assert "DIFFERS (2 printed lines)" in rows["01_changed.ipynb"]
    assert nbformat.read(folder / "01_changed.ipynb", as_version=4).cells[0].outputs[0].text == "stored 1\n"
    assert (out / "site" / "index.html").is_file() and (out / "site" / "01_changed.html").is_file()


def test_check_refuses_to_overwrite_the_stored_notebooks(capsys):
    from labkit.cli.main import main

    with pytest.raises(SystemExit):
        main(["reproduce", "--check", "--inplace"])
    assert "cannot overwrite" in capsys.readouterr().err
