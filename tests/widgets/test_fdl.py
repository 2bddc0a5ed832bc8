"""Tests for labkit.widgets.fdl: widgets build, draw their static counterparts, follow their
controls, and carry a picture of their first state."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.methods import fdl_experiments as fx  # noqa: E402
from labkit.viz import fdl as vfdl  # noqa: E402
from labkit.widgets import fdl as wfdl  # noqa: E402


def records(images: int = 4, members: int = 3) -> list[fx.CamRecord]:
    """Typed records of a classical and an FDL (1, 10) ensemble with known CAMs and metrics."""
    gen = torch.Generator().manual_seed(0)
    return [fx.CamRecord(fx.Settings(lambda_cos=s, lambda_euc=10 * s),
                         {"iou_map": 0.7 - 0.5 * s, "iou_cam": 0.3, "mean_member": 0.8,
                          "soft_vote": 0.85, "fusion": 0.86},
                         torch.rand(members, images, 8, 8, generator=gen),
                         torch.randint(0, 3, (members, images), generator=gen),
                         torch.rand(members, images, 2, 2, generator=gen))
            for s in (0.0, 1.0)]


def _same_picture(a, b) -> bool:
    import io

    pictures = []
    for fig in (a, b):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        pictures.append(buffer.getvalue())
    return pictures[0] == pictures[1]


def test_cam_explorer_draws_cam_figure_and_follows_the_slider(monkeypatch):
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explorer = wfdl.CamExplorer(images, labels, records())
    fig = explorer.figure(2)
    assert [ax.get_ylabel() for ax in fig.axes[::4]] == ["classical", "FDL (1, 10)"]
    assert fig._suptitle.get_text() == "true class 2"
    assert _same_picture(fig, vfdl.cam_figure(images, labels, records(), 2))
    drawn = []
    monkeypatch.setattr(explorer, "figure", lambda index: drawn.append(index) or plt.figure())
    explorer.slider.value = 3  # fires the observer, which re-draws into the Output
    assert drawn == [3]
    with pytest.raises(ValueError, match="0..3"):
        wfdl.CamExplorer(images, labels, records()).figure(4)
    with pytest.raises(ValueError, match="do not match 5 images"):
        wfdl.CamExplorer(torch.rand(5, 1, 8, 8), torch.zeros(5), records())


def test_lambda_explorer_marks_the_chosen_weight_and_follows_both_sliders(monkeypatch):
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explorer = wfdl.LambdaExplorer(images, labels, records())
    assert explorer.weight.options == (("classical", 0), ("FDL (1, 10)", 1))
    fig = explorer.figure(1, 0)
    trade, grid = fig.subfigs
    assert list(trade.axes[0].lines[-1].get_xdata()) == [10.0, 10.0]  # the chosen weight
    assert grid.axes[0].get_ylabel() == "FDL (1, 10)"
    plt.close(fig)
    drawn = []
    monkeypatch.setattr(explorer, "figure", lambda *args: drawn.append(args) or plt.figure())
    explorer.weight.value = 1
    explorer.image.value = 2
    assert drawn == [(1, 0), (1, 2)]
    with pytest.raises(ValueError, match="record index"):
        wfdl.LambdaExplorer(images, labels, records()).figure(2, 0)
    with pytest.raises(ValueError, match="records is empty"):
        wfdl.LambdaExplorer(images, labels, [])


@pytest.mark.parametrize("explorer_class, name", [(wfdl.CamExplorer, "member Grad-CAM explorer"),
                                                  (wfdl.LambdaExplorer, "FDL weight explorer")])
def test_explorers_display_a_picture_of_their_first_state_not_their_repr(explorer_class, name):
    import base64
    import io

    plt.close("all")
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explorer = explorer_class(images, labels, records())
    bundle = explorer.widget._repr_mimebundle_()
    picture = plt.imread(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert picture.ndim == 3 and min(picture.shape[:2]) > 50
    assert bundle["text/plain"].startswith(f"{name}: an interactive widget")
    assert "VBox" not in bundle["text/plain"] and "children" not in bundle["text/plain"]
    assert not plt.get_fignums()  # the picture's figures are closed, so none shows twice
