import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from labkit.viz.playable import (
    PLOTLY_MIMETYPE,
    Frame,
    add_slider,
    compact,
    figure_json,
    show,
    slider_steps,
)


def _frames(count: int = 3) -> list[Frame]:
    return [Frame(f"step {i}", [go.Scatter(x=[0.0, float(i)], y=[1.0, 2.0])],
                  {"title": {"text": f"at {i}"}}) for i in range(count)]


def test_slider_steps_name_the_frames_and_animate_to_them():
    frames = _frames(4)
    fig = add_slider(go.Figure(data=list(frames[1].traces)), frames, prefix="epoch", active=1)
    assert slider_steps(fig) == ["step 0", "step 1", "step 2", "step 3"]
    assert [frame.name for frame in fig.frames] == slider_steps(fig)
    steps = fig.layout.sliders[0].steps
    assert all(step.method == "animate" and list(step.args[0]) == [step.label] for step in steps)
    assert fig.layout.sliders[0].active == 1
    assert fig.layout.title.text == "at 1"  # the active frame's layout is the figure's
    assert list(fig.frames[3].data[0].x) == [0.0, 3.0]


def test_add_slider_refuses_mismatched_or_too_few_frames():
    frames = _frames(3)
    with pytest.raises(ValueError, match="at least two"):
        add_slider(go.Figure(data=list(frames[0].traces)), frames[:1], prefix="x")
    with pytest.raises(ValueError, match="traces"):
        add_slider(go.Figure(), frames, prefix="x")
    with pytest.raises(ValueError, match="unique"):
        add_slider(go.Figure(data=list(frames[0].traces)), [frames[0], frames[0]], prefix="x")
    with pytest.raises(ValueError, match="active"):
        add_slider(go.Figure(data=list(frames[0].traces)), frames, prefix="x", active=3)


def test_compact_rounds_to_float32_from_tensors_and_arrays():
    values = compact(torch.tensor([1.23456789, 2.0], dtype=torch.float64), decimals=3)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, [1.235, 2.0], rtol=0, atol=1e-6)
    assert compact([[1, 2]]).shape == (1, 2)


def test_show_displays_the_mimetype_with_its_frames_and_a_text_line(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append((obj, raw)))
    frames = _frames(3)
    fig = add_slider(go.Figure(data=list(frames[0].traces)), frames, prefix="epoch")
    show(fig)
    (bundle, raw), = shown
    assert raw and set(bundle) == {PLOTLY_MIMETYPE, "text/plain"}
    assert len(bundle[PLOTLY_MIMETYPE]["frames"]) == 3
    assert "3-step slider" in bundle["text/plain"]
    json.dumps(bundle)  # serialisable as stored
    assert figure_json(fig)["layout"]["sliders"][0]["steps"][2]["label"] == "step 2"
