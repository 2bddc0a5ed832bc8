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


POLL_SLICE_S = 1.0


class _PolledChannel:
    """A jupyter_client async channel whose waits are cut into `POLL_SLICE_S` slices.

    Why: in a headless run the nbclient process sometimes never wakes up for a message that is
    already in its socket (zmq's edge-triggered FD fires no read event, so the asyncio reader
    never runs). pyzmq's poll checks the socket synchronously when its timeout fires, which is
    how such a reply showed up exactly one cell timeout late. Short slices make that check run
    every second, so a lost wake-up costs at most a slice instead of a cell timeout.
    """

    def __init__(self, channel) -> None:
        self.channel, self.recovered = channel, 0

    def __getattr__(self, name: str):
        return getattr(self.channel, name)

    async def get_msg(self, timeout: float | None = None):
        from queue import Empty

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_S if deadline is None else min(POLL_SLICE_S, deadline - time.monotonic())
            if left <= 0:
                raise Empty
            started = time.monotonic()
            try:
                message = await self.channel.get_msg(timeout=left)
            except Empty:
                continue
            if time.monotonic() - started >= left * 0.999:
                self.recovered += 1  # found by the timeout's check, not by a read event
            return message


def _client_class():
    from nbclient import NotebookClient

    class SlicedPollClient(NotebookClient):
        """nbclient with `_PolledChannel` shell and iopub channels; `recovered` counts messages
        that only the periodic check found."""

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            self.polled = [_PolledChannel(kc.shell_channel), _PolledChannel(kc.iopub_channel)]
            kc._shell_channel, kc._iopub_channel = self.polled
            return kc

        @property
        def recovered(self) -> int:
            return sum(channel.recovered for channel in getattr(self, "polled", []))

    return SlicedPollClient


def execute(path: Path, target: Path, profile: str, timeout: int,
            attempts: int = 2) -> tuple[object, float]:
    """Run the notebook at `path` in a fresh kernel and write it to `target`.

    A cell that times out gets the whole notebook run again (up to `attempts` runs; cached
    training is reused): a safety net kept behind the sliced polling of `_PolledChannel`.
    A notebook whose cell fails is still written to `target` with its error before the error
    is raised, so the failure can be read in place.
    """
    import nbformat
    from nbclient.exceptions import CellTimeoutError

    os.environ["LABKIT_PROFILE"] = profile  # the kernel inherits both
    os.environ["LABKIT_PROGRESS"] = "0"  # a bar frozen in a stored output says nothing
    started = time.perf_counter()
    client_class = _client_class()
    for attempt in range(1, attempts + 1):
        notebook = nbformat.read(path, as_version=4)
        client = client_class(notebook, timeout=timeout, kernel_name="python3",
                              resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
            break
        except CellTimeoutError:
            if attempt == attempts:
                _write(notebook, target)
                raise
            print(f"  {path.name}: a cell got no reply within {timeout} s; running the notebook "
                  f"again ({attempt + 1} of {attempts})", flush=True)
        except Exception:
            _write(notebook, target)
            raise
        finally:
            if getattr(client, "recovered", 0):
                print(f"  {path.name}: {client.recovered} kernel messages arrived without a "
                      "read event (found by the 1-s poll check)", flush=True)
    _write(notebook, target)
    return notebook, time.perf_counter() - started


def _write(notebook, target: Path) -> None:
    import nbformat

    # Widget state (tqdm bars, sliders) has no front end here; stored, it only bloats the file.
    notebook.metadata.pop("widgets", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)


def _failure(error: BaseException) -> str:
    """One line on why a notebook failed: the exception type and its last meaningful line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if "Error" in line or "error" in line),
                  lines[-1] if lines else "")
    return f"{type(error).__name__}: {detail}"[:160]


def summary_table(rows: list[dict]) -> str:
    """The closing table of `run`: notebook, profile, seconds, figures, status."""
    header = f"{'notebook':40s} {'profile':7s} {'seconds':>8s} {'figures':>7s}  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['notebook']:40s} {row['profile']:7s} {row['seconds']:8.1f} "
                     f"{row['figures']:7d}  {row['status']}")
    return "\n".join(lines)


def run(names: list[str], out: Path, profile: str, inplace: bool, timeout: int,
        folder: Path | None = None) -> int:
    """Execute the chosen notebooks one after the other; a failing notebook does not stop the
    rest. Prints a summary table; returns 1 if any notebook failed, else 0."""
    notebooks = find_notebooks(names, folder or NOTEBOOK_DIR)
    print(f"labkit reproduce: {len(notebooks)} notebooks, profile={profile}", flush=True)
    rows = []
    for path in notebooks:
        target = path if inplace else out / "notebooks" / path.name
        started = time.perf_counter()
        try:
            notebook, seconds = execute(path, target, profile, timeout)
            status = "ok"
        except Exception as error:  # noqa: BLE001 - reported in the table, the others still run
            notebook, seconds, status = None, time.perf_counter() - started, f"FAILED ({_failure(error)})"
        figures = save_figures(notebook, out / "figures" / path.stem) if notebook and not inplace else 0
        rows.append(dict(notebook=path.name, profile=profile, seconds=seconds, figures=figures,
                         status=status))
        print(f"  {path.name}: {seconds:6.1f} s, {status} -> {target}", flush=True)
    print("\n" + summary_table(rows), flush=True)
    failed = [row["notebook"] for row in rows if row["status"] != "ok"]
    if not inplace:
        print(f"\nExecuted notebooks and figures are in {out}/. Explore them interactively with:\n"
              f"  labkit lab  (a working copy of the notebooks; the stored ones stay as they are)")
    if failed:
        print(f"\n{len(failed)} of {len(rows)} notebooks FAILED: {', '.join(failed)}", flush=True)
        return 1
    return 0
