"""The static site `labkit reproduce` writes: one HTML page per executed notebook and an index.

It needs no kernel and no network: every page loads the single `plotly.min.js` beside it, the
plotly figures (kernel-free sliders included) are drawn from their stored JSON, widgets show
the picture of their first state, and nothing is fetched from a CDN. It can be opened from
disk, served by any static web server, or kept as a CI artefact.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from labkit.viz.playable import PLOTLY_MIMETYPE

HEADLINE_MARK = "# headline figure"
WHAT_YOU_WILL_SEE = "**What you will see:**"
PLOTLY_SCRIPT = "plotly.min.js"
# The lab template's CDN scripts: require.js (for classic-notebook widgets) and MathJax (the
# notebooks write their symbols in Unicode). Offline they would only fail to load.
_CDN_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
_MATHJAX_CONFIG = re.compile(r"<script type=\"text/x-mathjax-config\">.*?</script>\s*", re.S)


@dataclass(frozen=True)
class Entry:
    """One notebook on the index: its page, title, one line, headline PNG file and status."""

    page: str
    title: str
    line: str
    picture: str | None
    status: str


def plotly_script_path() -> Path:
    """The plotly.js bundle shipped inside the plotly wheel."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_SCRIPT
    if not path.is_file():
        raise FileNotFoundError(f"plotly's bundled {PLOTLY_SCRIPT} is missing at {path}")
    return path


def plotly_html(figure: dict, div_id: str) -> str:
    """A div and the script that draws `figure` (plotly's JSON: data, layout, frames) into it
    with the page's global Plotly."""
    payload = json.dumps(figure).replace("</", "<\\/")  # no early end of the script element
    return (f'<div id="{div_id}" class="labkit-plotly"></div>\n'
            f'<script type="text/javascript">Plotly.newPlot("{div_id}", {payload});</script>')


def with_plotly_html(notebook) -> int:
    """Give every plotly output of `notebook` (in place) an HTML rendering; returns how many.
    nbconvert does not render plotly's mimetype, and its own plotly HTML would embed plotly.js
    or load it from a CDN."""
    count = 0
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIMETYPE in data:
                count += 1
                data["text/html"] = plotly_html(data[PLOTLY_MIMETYPE], f"plotly-{index}-{count}")
    return count


def title_of(notebook, fallback: str) -> str:
    """The first markdown heading of the notebook."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def what_you_will_see(notebook) -> str:
    """The first sentence after the opening's "What you will see:" (empty when absent)."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and WHAT_YOU_WILL_SEE in cell.source:
            text = " ".join(cell.source.split(WHAT_YOU_WILL_SEE, 1)[1].split())
            sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
            return sentence.strip()
    return ""


def headline_png(notebook) -> bytes | None:
    """The first PNG of the cell marked `# headline figure`, else the notebook's first PNG."""
    def first_png(cells) -> bytes | None:
        for cell in cells:
            for output in cell.get("outputs", []):
                if "image/png" in output.get("data", {}):
                    return base64.b64decode(output["data"]["image/png"])
        return None

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    marked = [cell for cell in code if cell.source.lstrip().startswith(HEADLINE_MARK)]
    return first_png(marked) or first_png(code)


def notebook_page(notebook) -> str:
    """The notebook as one HTML page (nbconvert's lab template) that loads ./plotly.min.js and
    nothing from the network."""
    import copy

    from nbconvert import HTMLExporter

    notebook = copy.deepcopy(notebook)
    with_plotly_html(notebook)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    body = _MATHJAX_CONFIG.sub("", _CDN_SCRIPT.sub("", body))
    return body.replace("</head>", f'<script src="{PLOTLY_SCRIPT}"></script>\n</head>', 1)


def index_page(entries: list[Entry], profile: str) -> str:
    """The site's front page: one card per notebook with its headline figure and line."""
    cards = []
    for entry in entries:
        picture = (f'<img src="{html.escape(entry.picture)}" alt="headline figure of '
                   f'{html.escape(entry.title)}">' if entry.picture else "")
        status = "" if entry.status == "ok" else f'<p class="failed">{html.escape(entry.status)}</p>'
        cards.append(f'<a class="card" href="{html.escape(entry.page)}"><h2>{html.escape(entry.title)}'
                     f"</h2>{picture}<p>{html.escape(entry.line)}</p>{status}</a>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>labkit: the lab's notebooks</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr)); gap: 1rem; }}
.card {{ border: 1px solid #ccc; border-radius: 6px; padding: 0.8rem; color: inherit;
         text-decoration: none; }}
.card:hover {{ border-color: #555; }}
.card h2 {{ font-size: 1.05rem; margin: 0 0 0.5rem; }}
.card img {{ max-width: 100%; max-height: 16rem; display: block; margin: 0 auto; }}
.failed {{ color: #b00; }}
</style></head>
<body><h1>labkit: discriminative feature geometry, notebook by notebook</h1>
<p>Executed with the <code>{html.escape(profile)}</code> profile by <code>labkit reproduce</code>.
The pages need no kernel and no network: move the sliders of the plotly figures to replay
recorded training and precomputed grids. Open the notebooks in JupyterLab
(<code>labkit lab</code>) to train and explore beyond them.</p>
<div class="cards">
{chr(10).join(cards)}
</div></body></html>
"""


def build_site(notebooks: list[tuple[Path, str]], folder: Path, profile: str) -> Path:
    """Write `folder`/index.html, one `NN_name.html` per (executed notebook path, status) and
    one copy of plotly.js; returns the index's path. A notebook that failed to execute keeps
    its card and its page (with the error), if it was written."""
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plotly_script_path(), folder / PLOTLY_SCRIPT)
    entries = []
    for path, status in notebooks:
        if not path.is_file():
            entries.append(Entry("", path.stem, "", None, status))
            continue
        notebook = nbformat.read(path, as_version=4)
        page = f"{path.stem}.html"
        (folder / page).write_text(notebook_page(notebook), encoding="utf-8")
        png = headline_png(notebook)
        picture = f"{path.stem}.png" if png else None
        if png:
            (folder / picture).write_bytes(png)
        entries.append(Entry(page, title_of(notebook, path.stem), what_you_will_see(notebook),
                             picture, status))
    index = folder / "index.html"
    index.write_text(index_page(entries, profile), encoding="utf-8")
    return index
