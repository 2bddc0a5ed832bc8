"""`labkit lab`: open JupyterLab on a working copy of the notebooks.

JupyterLab autosaves what it runs. Opened on `notebooks/`, it would write the user's executed
notebooks over the stored ones (and their widgets, with no saved state, then read "model not
found"). A working copy keeps the repository's notebooks as they are.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from labkit.cli.reproduce import NOTEBOOK_DIR

DEFAULT_COPY = NOTEBOOK_DIR.parent / "labkit-lab"


def working_copy(dest: Path = DEFAULT_COPY, fresh: bool = False,
                 source: Path = NOTEBOOK_DIR) -> list[Path]:
    """Copy the numbered notebooks of `source` into `dest`; returns the copies.

    A notebook already in `dest` is kept (it may hold the user's work) unless `fresh`.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"no notebooks folder at {source}: run from a source checkout")
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for notebook in sorted(source.glob("[0-9][0-9]_*.ipynb")):
        target = dest / notebook.name
        if fresh or not target.exists():
            shutil.copy2(notebook, target)
        copies.append(target)
    return copies


def main(dest: Path, fresh: bool, jupyter_args: list[str]) -> int:
    copies = working_copy(dest, fresh)
    print(f"labkit lab: {len(copies)} notebooks in {dest} (a working copy: edit and run freely; "
          f"`labkit lab --fresh` restores the stored ones)", flush=True)
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [str(jupyter) if jupyter.exists() else "jupyter", "lab", str(dest), *jupyter_args]
    os.execvp(command[0], command)
    return 0  # not reached
