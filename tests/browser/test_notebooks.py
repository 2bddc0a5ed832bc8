"""Every notebook in a real browser: Run All in JupyterLab, no errors, every plotly figure drawn
(3-D ones turn when dragged, kernel-free sliders change the plotted data), every widget
rendered, and every enabled control of every widget changes its figure. Screenshots of each widget before and after go to `shots_dir`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUN_ALL_TIMEOUT = 900.0
REDRAW_TIMEOUT = 60.0

pytestmark = pytest.mark.slow

NOTEBOOK_STATE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.sessionContext || !w.context) return null;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  const outputs = cells.flatMap(c => c.model.outputs.toJSON());
  return {
    path: w.context.path,
    kernel: kernel ? kernel.status : null,
    code: cells.length,
    executed: cells.filter(c => c.model.executionCount !== null).length,
    running: cells.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
    errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
    widgets: outputs.filter(o => o.data && o.data['application/vnd.jupyter.widget-view+json']).length,
    plotly: outputs.filter(o => o.data && o.data['application/vnd.plotly.v1+json']).length,
  };
}"""

# a figure's identity: the pixels of its images and the data and title of its plotly plots
SIGNATURE = """el => {
  const hash = s => { let x = 0; for (let i = 0; i < s.length; i++) x = (x * 31 + s.charCodeAt(i)) | 0; return x; };
  const parts = [];
  el.querySelectorAll('img').forEach(img => parts.push('img' + hash(img.src)));
  el.querySelectorAll('.js-plotly-plot').forEach(p => parts.push('plot' + hash(
    JSON.stringify((p.data || []).map(t => [t.x, t.y, t.z, t.marker && t.marker.color]))
    + JSON.stringify(p.layout && p.layout.title))));
  return parts.join(' ');
}"""

CONTROL_SELECTOR = ".widget-slider, .widget-dropdown, .widget-toggle-buttons, .widget-checkbox, .widget-button"
CONTROLS = """el => [...el.querySelectorAll('%s')]
  .map((c, index) => {
    const kind = ['slider', 'dropdown', 'toggle-buttons', 'checkbox', 'button']
      .find(k => c.classList.contains('widget-' + k));
    const label = c.querySelector('.widget-label');
    const target = c.querySelector('.noUi-target, select, button, input') || c;
    const disabled = c.tagName === 'BUTTON' ? c.disabled
      : target.hasAttribute('disabled') || [...c.querySelectorAll('button')].some(b => b.disabled);
    return {index, kind, disabled,
            label: (label ? label.textContent : c.textContent).trim() || kind};
  })""".replace("%s", CONTROL_SELECTOR)

PLOTS = """nb => [...nb.querySelectorAll('.js-plotly-plot')]
  .filter(p => !p.closest('.jupyter-widgets'))
  .map(p => ({drawn: !!(p._fullData && p._fullData.length && p.querySelector('.main-svg')),
              gl3d: !!(p._fullLayout && p._fullLayout._subplots && p._fullLayout._subplots.gl3d
                       && p._fullLayout._subplots.gl3d.length),
              webgl: !!p.querySelector('canvas')}))"""

# where the first 3-D scene's middle sits in the figure, in pixels from its top left
SCENE_MIDDLE = """p => { const size = p._fullLayout._size;
  const domain = p._fullLayout[p._fullLayout._subplots.gl3d[0]].domain;
  return [size.l + size.w * (domain.x[0] + domain.x[1]) / 2,
          size.t + size.h * (1 - (domain.y[0] + domain.y[1]) / 2)]; }"""
# the eye of every 3-D scene of a figure (a drag turns the scene under the mouse)
CAMERA = """p => JSON.stringify(p._fullLayout._subplots.gl3d.map(id => {
  const scene = p._fullLayout[id]._scene;
  return scene ? scene.getCamera().eye : p._fullLayout[id].camera.eye; }))"""


def _wait(page, predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        page.wait_for_timeout(interval * 1000)


def _state(page) -> dict | None:
    return page.evaluate(NOTEBOOK_STATE)


def _run_all(page, name: str) -> dict:
    _wait(page, lambda: (s := _state(page)) and s["path"] == name and s["kernel"] == "idle",
          180, f"{name} to open with an idle kernel")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    settled = 0

    def finished() -> dict | None:
        nonlocal settled
        state = _state(page)
        done = state["kernel"] == "idle" and not state["running"]
        settled = settled + 1 if done else 0
        return state if settled >= 3 else None

    return _wait(page, finished, RUN_ALL_TIMEOUT, f"Run All of {name}", interval=1.0)


def _widget_outputs(page):
    # top-level outputs only: an Output widget holds output areas of its own
    return page.locator(".jp-Notebook .jp-Cell-outputArea > .jp-OutputArea-child > "
                        ".jp-OutputArea-output:has(> .jupyter-widgets)")


def _signature(element) -> str:
    return element.evaluate(SIGNATURE)


def _await_redraw(page, element, before: str, what: str) -> str:
    def changed() -> str | None:
        now = _signature(element)
        return now if now and now != before else None

    after = _wait(page, changed, REDRAW_TIMEOUT, what, interval=0.25)
    while True:  # let a redraw in progress finish (clear_output(wait=True) then the new image)
        page.wait_for_timeout(500)
        now = _signature(element)
        if now == after and _state(page)["kernel"] == "idle":
            return now
        after = now


def _readout(control) -> str:
    readout = control.locator(".widget-readout")
    return readout.first.inner_text() if readout.count() else ""


def _move(page, control, kind: str) -> str:
    """Move one control to another value; returns a description of the move."""
    if kind == "slider":
        handle = control.locator(".noUi-handle").first
        start = _readout(control)
        for key in ("End", "Home"):
            handle.focus()
            handle.press(key)
            page.wait_for_timeout(200)
            if _readout(control) != start:
                return f"{start} -> {_readout(control)}"
        raise AssertionError(f"the slider's readout stayed at {start} after End and Home")
    if kind == "dropdown":
        select = control.locator("select")
        options = select.evaluate("s => [...s.options].map(o => o.value)")
        current = select.input_value()
        assert len(options) > 1, f"a dropdown with one option: {options}"
        choice = options[(options.index(current) + 1) % len(options)]
        select.select_option(choice)
        return f"{current} -> {choice}"
    if kind == "toggle-buttons":
        button = control.locator("button:not(.mod-active)").first
        text = button.inner_text()
        button.click()
        return f"-> {text}"
    if kind == "checkbox":
        control.locator("input").first.click()
        return "toggled"
    raise AssertionError(f"no way to move a {kind}")


def _check_train_panel(page, element, shots: Path, stem: str) -> None:
    """Press Train: at least two live frames arrive, while the panel shows it is busy."""
    element.screenshot(path=shots / f"{stem}-before.png")
    element.locator("button", has_text="Train").click()
    clicked = time.monotonic()
    titles: list[str] = []
    busy = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        poll = element.evaluate("""el => ({
          titles: [...el.querySelectorAll('.js-plotly-plot')].map(p =>
            p._fullLayout && p._fullLayout.title && p._fullLayout.title.text),
          disabled: [...el.querySelectorAll('button')].some(b => b.disabled && b.textContent.includes('Train')),
          text: el.innerText})""")
        busy = busy or poll["disabled"]
        for title in poll["titles"]:
            if title and (not titles or titles[-1] != title):
                titles.append(title)
                print(f"train panel: {title!r} drawn {time.monotonic() - clicked:.1f} s after the click")
        if "test accuracy" in poll["text"] or "failed" in poll["text"]:
            break
        if len(titles) == 1 and not (shots / f"{stem}-first-frame.png").exists():
            element.screenshot(path=shots / f"{stem}-first-frame.png")
        page.wait_for_timeout(100)
    page.wait_for_timeout(1000)
    element.screenshot(path=shots / f"{stem}-after.png")
    text = element.inner_text()
    assert "test accuracy" in text, f"training did not finish: {text[-500:]}"
    frames = [t for t in titles if t.startswith("epoch")]
    assert len(frames) >= 2, f"live frames seen: {titles}"
    assert busy, "the Train button was never disabled while training"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_the_browser(lab_page, lab_server, shots_dir, plotly_checks, name):
    page = lab_page
    base, token, working_copy = lab_server
    stored = (REPO / "notebooks" / name).read_bytes()
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}")
    try:
        state = _run_all(page, name)
        assert not state["errors"], f"{name}: cells raised {state['errors']}"
        assert state["executed"] == state["code"], f"{name}: only {state['executed']} of {state['code']} cells ran"

        notebook = page.locator(".jp-Notebook").first
        text = notebook.inner_text()
        for bad in ("Error displaying widget", "Loading widget", "model not found",
                    "Plotly is not defined", "Traceback"):  # a traceback: a widget's callback raised
            assert bad not in text, f"{name}: the page shows {bad!r}"
        reprs = re.findall(r"\b[A-Z]\w*\(children=", text)
        assert not reprs, f"{name}: widgets shown as text: {reprs}"

        plots = notebook.evaluate(PLOTS)
        assert len(plots) == state["plotly"], f"{name}: {len(plots)} plotly plots in the page for {state['plotly']} outputs"
        assert all(p["drawn"] for p in plots), f"{name}: undrawn plotly figures: {plots}"
        stem = name.removesuffix(".ipynb")[:2]
        figures = page.locator(".jp-Notebook .js-plotly-plot:not(.jupyter-widgets .js-plotly-plot)")
        for i, plot in enumerate(plots):
            if not plot["gl3d"]:
                continue
            assert plot["webgl"], f"{name}: 3-D figure {i} has no WebGL canvas"
            figure = figures.nth(i)
            figure.scroll_into_view_if_needed()
            figure.screenshot(path=shots_dir / f"{stem}-plot{i}-before.png")
            eye = figure.evaluate(CAMERA)
            # the middle of the first scene's domain: with several scenes the shared
            # .gl-container can have no height
            box = figure.bounding_box()
            middle = figure.evaluate(SCENE_MIDDLE)
            x, y = box["x"] + middle[0], box["y"] + middle[1]
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + 60, y + 20, steps=8)
            page.mouse.move(x + 120, y + 40, steps=8)
            page.mouse.up()
            page.wait_for_timeout(300)
            figure.screenshot(path=shots_dir / f"{stem}-plot{i}-after-drag.png")
            assert figure.evaluate(CAMERA) != eye, f"{name}: dragging 3-D figure {i} left its camera at {eye}"
        # the kernel-free sliders: their frames play in JupyterLab's plotly renderer
        plotly_checks.play_sliders(page, notebook, shots_dir, stem)

        outputs = _widget_outputs(page)
        # the model holds more widget outputs than the page: a closed widget (a finished tqdm
        # bar) leaves its output behind with nothing to show
        assert outputs.count() <= state["widgets"]
        for w in range(outputs.count()):
            element = outputs.nth(w)
            element.scroll_into_view_if_needed()
            controls = element.evaluate(CONTROLS)
            if not controls and element.locator(".progress").count():
                continue  # a progress bar (tqdm) of a cell that trained
            if not controls:
                element.screenshot(path=shots_dir / f"{stem}-widget{w}-no-controls.png")
                raise AssertionError(f"{name}: widget {w} has no controls: {element.inner_html()[:600]}")
            wstem = f"{stem}-widget{w}"
            if any(c["kind"] == "button" and c["label"] == "Train" for c in controls):
                _check_train_panel(page, element, shots_dir, wstem)
                continue
            assert _signature(element), f"{name}: widget {w} shows no figure"
            element.screenshot(path=shots_dir / f"{wstem}-before.png")
            moved = 0
            for control in controls:
                if control["disabled"] or control["kind"] == "button":
                    continue
                before = _signature(element)
                locator = element.locator(CONTROL_SELECTOR).nth(control["index"])
                move = _move(page, locator, control["kind"])
                what = f"{name}: widget {w}'s {control['label']!r} ({move}) to redraw its figure"
                label = re.sub(r"\W+", "_", control["label"]).strip("_") or control["kind"]
                try:
                    _await_redraw(page, element, before, what)
                finally:
                    element.screenshot(path=shots_dir / f"{wstem}-after-{label}.png")
                shown = element.inner_text()
                assert "Traceback" not in shown, \
                    f"{name}: widget {w}'s {control['label']!r} ({move}) raised:\n{shown[-3000:]}"
                moved += 1
            assert moved, f"{name}: widget {w} has no enabled control"
        assert not page.blocked, f"{name}: requests off the local server: {page.blocked[:5]}"
        # what JupyterLab saves goes to the working copy, never to the repository
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        _wait(page, lambda: (working_copy / name).read_bytes() != stored, 30, f"{name} to be saved")
        assert (REPO / "notebooks" / name).read_bytes() == stored
    finally:
        page.evaluate("() => window.jupyterapp && window.jupyterapp.serviceManager.sessions.shutdownAll()")
