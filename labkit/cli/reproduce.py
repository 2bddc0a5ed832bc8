"""`labkit reproduce`: execute the notebooks headless and collect them with their figures."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


def find_notebooks(names: list[str], folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks in `folder` whose file name starts with any of `names` (all when empty)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebooks folder at {folder}: run from a source checkout")
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    chosen = [nb for nb in every if any(nb.name.startswith(n) for n in names)]
    unknown = [n for n in names if not any(nb.name.startswith(n) for nb in every)]
    if unknown:
        raise ValueError(f"no notebook matches {unknown}; available: {[nb.name for nb in every]}")
    return chosen


def save_figures(notebook, folder: Path) -> int:
    """Write every PNG output of an executed notebook to `folder`; returns how many."""
    count = 0
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                folder.mkdir(parents=True, exist_ok=True)
                count += 1
                (folder / f"cell{index:02d}_{count:02d}.png").write_bytes(
                    base64.b64decode(data["image/png"]))
    return count


def default_timeout(profile: str) -> int:
    """Seconds a cell may run: quick cells take under a minute here, lab/full ones can train."""
    return 900 if profile == "quick" else 3600


def execute(path: Path, target: Path, profile: str, timeout: int,
            attempts: int = 2) -> tuple[object, float]:
    """Run the notebook at `path` in a fresh kernel and write it to `target`.

    A cell that times out gets the whole notebook run again (up to `attempts` runs; cached
    training is reused). The reason: now and then the kernel finishes a cell and sits idle while
    the client still waits for its reply (seen with ipykernel 7.4 and 6.31, on notebooks 03 and
    05, in about one fresh-cache run in three here); the cell timeout is then the only way out.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    os.environ["LABKIT_PROFILE"] = profile  # the kernel inherits both
    os.environ["LABKIT_PROGRESS"] = "0"  # a bar frozen in a stored output says nothing
    started = time.perf_counter()
    for attempt in range(1, attempts + 1):
        notebook = nbformat.read(path, as_version=4)
        try:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            break
        except CellTimeoutError:
            if attempt == attempts:
                raise
            print(f"  {path.name}: a cell got no reply within {timeout} s; running the notebook "
                  f"again ({attempt + 1} of {attempts})", flush=True)
    # Widget state (tqdm bars, sliders) has no front end here; stored, it only bloats the file.
    notebook.metadata.pop("widgets", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    return notebook, time.perf_counter() - started


def run(names: list[str], out: Path, profile: str, inplace: bool, timeout: int) -> int:
    notebooks = find_notebooks(names)
    print(f"labkit reproduce: {len(notebooks)} notebooks, profile={profile}")
    for path in notebooks:
        target = path if inplace else out / "notebooks" / path.name
        notebook, seconds = execute(path, target, profile, timeout)
        figures = save_figures(notebook, out / "figures" / path.stem) if not inplace else 0
        print(f"  {path.name}: {seconds:6.1f} s -> {target}" + (f" ({figures} figures)" if figures else ""))
    if not inplace:
        print(f"\nExecuted notebooks and figures are in {out}/. Explore them interactively with:\n"
              f"  jupyter lab {out / 'notebooks'}")
    return 0
