"""Tests for labkit.widgets.fdl: widgets build, callbacks re-render, bad indices are rejected."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.widgets import fdl as wfdl  # noqa: E402


def fake_records(images: int = 4, members: int = 3) -> list[dict]:
    out = []
    for scale in (0.0, 1.0):
        out.append({"lambda_cos": scale, "lambda_euc": 10 * scale,
                    "cams": torch.rand(members, images, 8, 8),
                    "preds": torch.randint(0, 3, (members, images)),
                    "metrics": {"iou_map": 0.7 - 0.5 * scale, "iou_cam": 0.3, "mean_member": 0.8,
                                "soft_vote": 0.85, "fusion": 0.86}})
    return out


def test_cam_explorer_renders_rows_per_record_and_follows_the_slider():
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explorer = wfdl.CamExplorer(images, labels, fake_records())
    fig = explorer.render(2)
    assert [ax.get_ylabel() for ax in fig.axes[::4]] == ["classical", "FDL (1, 10)"]
    assert fig._suptitle.get_text() == "true class 2"
    plt.close(fig)
    explorer.slider.value = 3  # fires the observer, which re-draws into the Output
    assert explorer.slider.value == 3
    with pytest.raises(ValueError, match="0..3"):
        explorer.render(4)
    with pytest.raises(ValueError, match="records hold CAMs of 4 images"):
        wfdl.CamExplorer(torch.rand(5, 1, 8, 8), labels, fake_records())


def test_lambda_explorer_marks_the_chosen_weight():
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explorer = wfdl.LambdaExplorer(images, labels, fake_records())
    trade, grid = explorer.render(1, 0)
    marker = trade.axes[0].lines[-1]  # the axvline of the selected record
    assert list(marker.get_xdata()) == [10.0, 10.0]
    assert grid.axes[0].get_ylabel() == "FDL (1, 10)"
    plt.close("all")
    explorer.weight.value = 1
    explorer.image.value = 2
    with pytest.raises(ValueError, match="record index"):
        explorer.render(2, 0)
    with pytest.raises(ValueError, match="records is empty"):
        wfdl.LambdaExplorer(images, labels, [])


@pytest.mark.parametrize("explorer_class, name", [(wfdl.CamExplorer, "member Grad-CAM explorer"),
                                                  (wfdl.LambdaExplorer, "FDL weight explorer")])
def test_explorers_display_a_picture_of_their_first_state_not_their_repr(explorer_class, name):
    import base64
    import io

    plt.close("all")
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explorer = explorer_class(images, labels, fake_records())
    bundle = explorer.widget._repr_mimebundle_()
    picture = plt.imread(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert picture.ndim == 3 and min(picture.shape[:2]) > 50
    assert bundle["text/plain"].startswith(f"{name}: an interactive widget")
    assert "VBox" not in bundle["text/plain"] and "children" not in bundle["text/plain"]
    assert not plt.get_fignums()  # the picture's figures are closed, so none shows twice


def test_lambda_explorer_picture_holds_both_first_state_figures():
    import base64
    import io

    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explorer = wfdl.LambdaExplorer(images, labels, fake_records())
    picture = plt.imread(io.BytesIO(base64.b64decode(explorer.widget._repr_mimebundle_()["image/png"])))
    heights = []
    for fig in explorer.render(0, 0):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
        plt.close(fig)
        buffer.seek(0)
        heights.append(plt.imread(buffer).shape[0])
    assert picture.shape[0] == sum(heights)
