"""Tests for labkit.cli.site: the static pages `labkit reproduce` writes."""

import base64
import io
import re

import matplotlib.pyplot as plt
import nbformat
import plotly.graph_objects as go

from labkit.cli import site
from labkit.viz.playable import PLOTLY_MIMETYPE, Frame, add_slider, figure_json


def _png(color: str) -> str:
    fig = plt.figure(figsize=(0.5, 0.5))
    fig.patch.set_facecolor(color)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _slider_figure() -> dict:
    frames = [Frame(str(i), [go.Scatter(x=[0, i], y=[0, 1])]) for i in range(3)]
    return figure_json(add_slider(go.Figure(data=list(frames[0].traces)), frames, prefix="epoch"))


def _notebook() -> nbformat.NotebookNode:
    cells = [
        nbformat.v4.new_markdown_cell("# 07 · A lesson\n\n**What you will see:** dots that move. "
                                      "More after that."),
        nbformat.v4.new_code_cell("first()", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": _png("red"), "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("# headline figure\nsecond()", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": _png("blue"), "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("show(fig)", outputs=[nbformat.v4.new_output(
            "display_data", data={PLOTLY_MIMETYPE: _slider_figure(), "text/plain": "a figure"})]),
    ]
    return nbformat.v4.new_notebook(cells=cells)


def test_the_index_takes_title_line_and_marked_headline():
    notebook = _notebook()
    assert site.title_of(notebook, "x") == "07 · A lesson"
    assert site.what_you_will_see(notebook) == "dots that move."
    assert site.headline_png(notebook) == base64.b64decode(notebook.cells[2].outputs[0].data["image/png"])
    del notebook.cells[2]
    assert site.headline_png(notebook) == base64.b64decode(notebook.cells[1].outputs[0].data["image/png"])
    assert site.what_you_will_see(nbformat.v4.new_notebook()) == ""


def test_plotly_outputs_get_html_that_draws_them_with_their_frames():
    notebook = _notebook()
    assert site.with_plotly_html(notebook) == 1
    html = notebook.cells[3].outputs[0].data["text/html"]
    assert 'Plotly.newPlot("plotly-3-1"' in html and '"frames"' in html
    assert site.plotly_html({"data": [{"name": "</script>"}]}, "d").count("</script>") == 1


def test_build_site_writes_offline_pages_and_one_plotly_copy(tmp_path):
    executed = tmp_path / "07_lesson.ipynb"
    nbformat.write(_notebook(), executed)
    index = site.build_site([(executed, "ok"), (tmp_path / "08_missing.ipynb", "FAILED (x)")],
                            tmp_path / "site", "quick")
    folder = index.parent
    assert sorted(p.name for p in folder.iterdir()) == ["07_lesson.html", "07_lesson.png",
                                                        "index.html", "plotly.min.js"]
    page = (folder / "07_lesson.html").read_text()
    assert '<script src="plotly.min.js"></script>' in page and "Plotly.newPlot" in page
    assert not re.search(r"<script[^>]*src=\"https?://", page)  # nothing from a CDN
    front = index.read_text()
    assert 'href="07_lesson.html"' in front and 'src="07_lesson.png"' in front
    assert "dots that move." in front and "FAILED (x)" in front
