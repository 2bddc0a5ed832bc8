"""A picture of a widget's first state, carried in its display output.

A stored notebook keeps no widget state, so GitHub, nbviewer, `jupyter nbconvert` and
JupyterLab before Run All could only show a widget's text repr (`VBox(children=(...`).
`with_picture` adds a PNG of the widget's first state and a one-line note to the widget's
display bundle. A live front end still prefers the widget view; the exporters fall back to
the picture. `labkit reproduce` then drops the stateless widget view from the stored output
(`picture_only`), so JupyterLab shows the picture too until the notebook is run.
"""

from __future__ import annotations

import base64
import io
from typing import Any

WIDGET_MIMETYPE = "application/vnd.jupyter.widget-view+json"
PICTURE_NOTE = ("{name}: an interactive widget; run the notebook to use it "
                "(the picture shows its first state)")


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes at the figure's own dpi, or several stacked top to
    bottom (left-aligned on white), for a widget that shows more than one; they are closed."""
    import matplotlib.pyplot as plt
    import numpy as np

    figures = list(figure) if isinstance(figure, (list, tuple)) else [figure]
    if not figures:
        raise ValueError("no figure to picture")
    pictures = []
    for fig in figures:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight", facecolor="white")
        plt.close(fig)
        pictures.append(buffer.getvalue())
    if len(pictures) == 1:
        return pictures[0]
    arrays = [plt.imread(io.BytesIO(png), format="png")[..., :3] for png in pictures]
    width = max(array.shape[1] for array in arrays)
    padded = [np.pad(array, ((0, 0), (0, width - array.shape[1]), (0, 0)), constant_values=1.0)
              for array in arrays]
    out = io.BytesIO()
    plt.imsave(out, np.concatenate(padded, axis=0), format="png")
    return out.getvalue()


def with_picture(widget: Any, picture: Any, name: str | None = None) -> Any:
    """`widget`, whose display bundle also carries `picture` (a matplotlib figure or a list of
    them, closed here, or PNG bytes) and a note naming it instead of its repr. Returns
    `widget`."""
    png = picture if isinstance(picture, bytes) else figure_png(picture)
    encoded = base64.b64encode(png).decode("ascii")
    note = PICTURE_NOTE.format(name=name or type(widget).__name__)
    plain_bundle = type(widget)._repr_mimebundle_

    def bundle(**kwargs: Any) -> dict[str, Any]:
        data = plain_bundle(widget, **kwargs) or {}
        return {**data, "image/png": encoded, "text/plain": note}

    widget._repr_mimebundle_ = bundle  # the instance's own: IPython looks it up on the object
    return widget


def picture_only(output: dict[str, Any]) -> bool:
    """Drop the widget view from a stored display output that carries a picture (its model is
    not stored, so a front end could only report it missing); True when it did."""
    data = output.get("data", {})
    if WIDGET_MIMETYPE not in data or "image/png" not in data:
        return False
    del data[WIDGET_MIMETYPE]
    output.setdefault("metadata", {})["labkit"] = {"widget_picture": True}
    return True


def show_figure(out: Any, figure: Any) -> None:
    """Replace an ipywidgets Output's content by `figure`, then close the figure (the Output
    keeps its picture; an open figure would be drawn again by the notebook at the cell's end)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    with out:
        out.clear_output(wait=True)
        display(figure)
    plt.close(figure)
