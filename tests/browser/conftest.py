"""Fixtures of the browser test: a JupyterLab server on a copy of the notebooks and headless
Chromium driven by Playwright, with every request off 127.0.0.1 blocked.

Where no browser can be had the tests skip with the reason; with CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_shots: list[Path] = []


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser test must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def find_browser() -> str | None:
    """The Chromium to drive: $LABKIT_BROWSER, else the first of BROWSERS on PATH."""
    explicit = os.environ.get("LABKIT_BROWSER")
    if explicit:
        return explicit
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lab_settings(settings_dir: Path) -> None:
    """Settings that keep a test session quiet and every output in the DOM."""
    choices = {
        # all cells rendered, so every output can be found without scrolling
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                         "checkForUpdates": False},
    }
    for plugin, values in choices.items():
        package, name = plugin.rsplit("/", 1)
        folder = settings_dir / package
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    """Where the screenshots go: $LABKIT_BROWSER_SHOTS, else a new temporary folder."""
    folder = Path(os.environ.get("LABKIT_BROWSER_SHOTS") or tempfile.mkdtemp(prefix="labkit-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    _shots.append(folder)
    return folder


def pytest_terminal_summary(terminalreporter) -> None:
    for folder in _shots:
        count = len(list(folder.glob("*.png")))
        terminalreporter.write_line(f"browser test: {count} screenshots in {folder}")


# module scope: Playwright's sync API keeps an asyncio loop running in this thread until it
# stops, and tests of asyncio code that run later need none to be running
@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    """(base url, token, working copy) of JupyterLab started the README's way, `labkit lab`,
    on a working copy in a temporary folder."""
    pytest.importorskip("jupyterlab")
    root = tmp_path_factory.mktemp("lab")
    notebooks = root / "notebooks"
    for name in ("settings", "workspaces", "runtime", "config", "data"):
        (root / name).mkdir()
    _lab_settings(root / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, LABKIT_PROFILE="quick", JUPYTERLAB_SETTINGS_DIR=str(root / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), JUPYTER_CONFIG_DIR=str(root / "config"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    env.setdefault("LABKIT_CACHE", str(root / "cache"))  # the test session's cache when it has one
    command = [sys.executable, "-m", "labkit.cli.main", "lab", "--dir", str(notebooks), "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start; its log: {root / 'server.log'}\n"
                            + (root / "server.log").read_text()[-3000:], pytrace=False)
            time.sleep(0.5)
    yield base, token, notebooks
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the system's), via Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[test]')")
    executable = find_browser()
    if executable is None:
        _unavailable("no Chromium found (apt-get install chromium, or set LABKIT_BROWSER)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True,
            args=["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                  # nothing but the local server resolves
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"])
        yield chromium
        chromium.close()


def allow_only(context, prefixes: tuple[str, ...]) -> list[str]:
    """Abort every request of `context` whose URL starts with none of `prefixes`; returns the
    list the refused URLs are appended to."""
    blocked: list[str] = []

    def route(request_route) -> None:
        url = request_route.request.url
        if url.startswith(prefixes):
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort()

    context.route("**/*", route)
    return blocked


@pytest.fixture
def offline_page(browser):
    """A page that may load file:// and data: URLs only; `page.blocked` lists the rest and
    `page.errors` the scripts' uncaught errors."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.blocked = allow_only(context, ("file://", "data:", "blob:"))
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


@pytest.fixture
def lab_page(browser, lab_server):
    """A new page logged in to the server; `page.blocked` lists the requests that were refused."""
    base, token, _ = lab_server
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.blocked = allow_only(context, ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))
    page.console = []
    page.on("console", lambda message: page.console.append(f"{message.type}: {message.text}"))
    page.goto(f"{base}/lab?token={token}")
    yield page
    context.close()


# every plotly figure under a root: drawn or not, its slider's steps and active step
PLOTLY_FIGURES = """(root) => [...root.querySelectorAll('.js-plotly-plot')].map(gd => ({
  drawn: !!gd._fullLayout && gd.querySelectorAll('.main-svg').length > 0,
  steps: ((gd.layout.sliders || [])[0] || {steps: []}).steps.length,
  active: ((gd.layout.sliders || [])[0] || {}).active || 0,
}))"""
DATA_HASH = """(gd) => {
  const text = JSON.stringify(gd.data, (key, value) => ArrayBuffer.isView(value) ? Array.from(value) : value);
  let hash = 0;
  for (let i = 0; i < text.length; i++) hash = (hash * 31 + text.charCodeAt(i)) | 0;
  return text.length + ':' + hash;
}"""


def play_sliders(page, root, shots: Path, stem: str) -> int:
    """Move the slider of every plotly figure under `root` (a locator) to another step, by a
    click on its rail, and check that the plotted data change; returns how many it moved."""
    plots = root.evaluate(PLOTLY_FIGURES)
    figures = root.locator(".js-plotly-plot")
    moved = 0
    for i, plot in enumerate(plots):
        if not plot["steps"]:
            continue
        assert plot["steps"] > 1, f"{stem}: figure {i}'s slider has a single step"
        figure = figures.nth(i)
        figure.scroll_into_view_if_needed()
        before = figure.evaluate(DATA_HASH)
        target = 0 if plot["active"] != 0 else plot["steps"] - 1
        box = figure.locator(".slider-rail-touch-rect").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] * (target + 0.5) / plot["steps"],
                         box["y"] + box["height"] / 2)
        try:
            page.wait_for_function(f"([gd, before]) => ({DATA_HASH})(gd) !== before",
                                   arg=[figure.element_handle(), before], timeout=10_000)
        finally:
            figure.screenshot(path=shots / f"{stem}-slider{i}-step{target}.png")
        active = figure.evaluate("gd => gd.layout.sliders[0].active")
        assert active == target, f"{stem}: figure {i}'s slider went to step {active}, not {target}"
        moved += 1
    return moved


@pytest.fixture
def plotly_checks():
    """`figures(root)` (PLOTLY_FIGURES under a locator) and `play_sliders`, for the tests: a
    fixture, because test modules do not import conftest under importlib mode."""
    return SimpleNamespace(figures=lambda root: root.evaluate(PLOTLY_FIGURES), play_sliders=play_sliders)
