import base64

import ipywidgets as widgets
import matplotlib.pyplot as plt

from labkit.widgets.picture import WIDGET_MIMETYPE, picture_only, with_picture


def _figure():
    fig = plt.figure(figsize=(1, 1))
    plt.plot([0, 1])
    return fig


def test_with_picture_adds_a_png_and_a_note_and_keeps_the_widget_view():
    box = widgets.VBox([widgets.IntSlider()])
    figure = _figure()
    assert with_picture(box, figure, "epoch replay") is box
    bundle = box._repr_mimebundle_()
    assert bundle[WIDGET_MIMETYPE]["model_id"] == box.model_id
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert bundle["text/plain"].startswith("epoch replay: an interactive widget")
    assert "children" not in bundle["text/plain"]
    assert not plt.fignum_exists(figure.number)  # closed: it must not show a second time


def test_with_picture_takes_png_bytes_and_leaves_other_widgets_alone():
    with_picture(widgets.HBox(), b"\x89PNG fake")
    assert "image/png" not in widgets.HBox()._repr_mimebundle_()


def test_picture_only_drops_the_stateless_view_but_only_beside_a_picture():
    box = with_picture(widgets.VBox(), _figure(), "x")
    output = {"output_type": "display_data", "data": box._repr_mimebundle_(), "metadata": {}}
    assert picture_only(output)
    assert set(output["data"]) == {"image/png", "text/plain"}
    assert output["metadata"]["labkit"] == {"widget_picture": True}
    bare = {"output_type": "display_data", "data": widgets.VBox()._repr_mimebundle_()}
    assert not picture_only(bare) and WIDGET_MIMETYPE in bare["data"]


def test_several_figures_stack_top_to_bottom_in_one_picture():
    import io

    import pytest

    from labkit.widgets.picture import figure_png

    first, _ = plt.subplots(figsize=(2, 1), dpi=50)
    second, _ = plt.subplots(figsize=(1, 1), dpi=50)
    shapes = [plt.imread(io.BytesIO(figure_png(fig))).shape for fig in
              (plt.subplots(figsize=(2, 1), dpi=50)[0], plt.subplots(figsize=(1, 1), dpi=50)[0])]
    stacked = plt.imread(io.BytesIO(figure_png([first, second])))
    assert stacked.shape[:2] == (shapes[0][0] + shapes[1][0], max(shapes[0][1], shapes[1][1]))
    assert not plt.fignum_exists(first.number) and not plt.fignum_exists(second.number)
    with pytest.raises(ValueError, match="no figure"):
        figure_png([])
