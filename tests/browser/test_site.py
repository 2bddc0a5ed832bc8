"""The static site of `labkit reproduce --profile quick --out OUT`, opened from disk in headless
Chromium with the network off: the index shows every notebook with its headline figure, every
page draws its plotly figures from the one local plotly.js, every kernel-free slider has more
than one step and moving it changes the plotted data, and no widget shows as its text repr.

CI passes the site its main job wrote as $LABKIT_SITE_DIR; elsewhere the test runs
`labkit reproduce --profile quick` itself (the session's cache makes a rerun cheap).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(path.stem for path in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    given = os.environ.get("LABKIT_SITE_DIR")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("reproduce")
    env = dict(os.environ, LABKIT_PROFILE="quick")
    done = subprocess.run([sys.executable, "-m", "labkit.cli.main", "reproduce", "--profile", "quick",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"labkit reproduce failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return out / "site"


def test_the_index_lists_every_notebook_with_its_figure(offline_page, site_dir, shots_dir):
    page = offline_page
    page.goto((site_dir / "index.html").as_uri())
    cards = page.locator("a.card")
    assert sorted(cards.nth(i).get_attribute("href") for i in range(cards.count())) == \
        [f"{name}.html" for name in NOTEBOOKS]
    pictures = page.evaluate("() => [...document.querySelectorAll('a.card img')].map(i => i.naturalWidth)")
    assert len(pictures) == len(NOTEBOOKS) and all(width > 0 for width in pictures), pictures
    assert "FAILED" not in page.inner_text("body")
    page.screenshot(path=shots_dir / "site-index.png", full_page=True)
    assert not page.blocked and not page.errors, (page.blocked, page.errors)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_page_plays_without_kernel_or_network(offline_page, site_dir, shots_dir, plotly_checks, name):
    page = offline_page
    page.goto((site_dir / f"{name}.html").as_uri())
    page.wait_for_load_state("load")
    text = page.inner_text("body")
    reprs = re.findall(r"\b[A-Z]\w*\(children=", text)
    assert not reprs, f"{name}: widgets shown as text: {reprs}"
    assert "Traceback" not in text, f"{name}: the page holds a traceback"
    body = page.locator("body")
    plots = plotly_checks.figures(body)
    assert all(plot["drawn"] for plot in plots), f"{name}: undrawn plotly figures {plots}"
    moved = plotly_checks.play_sliders(page, body, shots_dir, f"site-{name[:2]}")
    assert moved == sum(1 for plot in plots if plot["steps"])
    page.screenshot(path=shots_dir / f"site-{name[:2]}.png")
    assert not page.blocked, f"{name}: requests off the disk: {page.blocked[:5]}"
    assert not page.errors, f"{name}: script errors: {page.errors[:5]}"
