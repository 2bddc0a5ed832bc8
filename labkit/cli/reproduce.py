"""`labkit reproduce`: execute the notebooks headless and collect them with their figures."""

from __future__ import annotations

import base64
import difflib
import os
import re
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
                _write(notebook, target, profile)
                raise
            print(f"  {path.name}: a cell got no reply within {timeout} s; running the notebook "
                  f"again ({attempt + 1} of {attempts})", flush=True)
        except Exception:
            _write(notebook, target, profile)
            raise
        finally:
            if getattr(client, "recovered", 0):
                print(f"  {path.name}: {client.recovered} kernel messages arrived without a "
                      "read event (found by the 1-s poll check)", flush=True)
    _write(notebook, target, profile)
    return notebook, time.perf_counter() - started


def _write(notebook, target: Path, profile: str) -> None:
    import nbformat

    from labkit.widgets.picture import picture_only

    # Widget state (tqdm bars, sliders) has no front end here; stored, it only bloats the file,
    # and a widget view without it can only be reported missing: its picture stands instead.
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            picture_only(output)
    notebook.metadata["labkit"] = {"profile": profile}
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)


def stored_profile(notebook) -> str:
    """The profile a stored notebook was executed with (`lab` for one written before
    `labkit reproduce` recorded it)."""
    return notebook.metadata.get("labkit", {}).get("profile", "lab")


_TIMING = re.compile(r"\d+(?:\.\d+)?\s*(?:ms|s|sec|seconds|min|it/s|s/it)\b")
TIMING_CELL = "# timing cell"  # first line of a cell whose whole output is measured time


def printed_lines(notebook) -> list[str]:
    """What the notebook printed: its stdout and its plain-text results, line by line, with
    every timing replaced by `<time>` (they differ from run to run). Cells that start with
    `# timing cell` (speed ratios, verdicts on them) are left out."""
    lines = []
    for cell in notebook.cells:
        if cell.get("cell_type") == "code" and cell.source.lstrip().startswith(TIMING_CELL):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                text = output.get("text", "")
            elif output.get("output_type") == "execute_result" and set(output.get("data", {})) == {"text/plain"}:
                text = output["data"]["text/plain"]
            else:
                continue
            lines.extend(_TIMING.sub("<time>", line) for line in text.splitlines())
    return lines


def printed_differences(stored, fresh) -> list[str]:
    """The printed lines that differ, as `- stored` / `+ now` lines (empty when none)."""
    diff = difflib.unified_diff(printed_lines(stored), printed_lines(fresh), lineterm="", n=0)
    return [line for line in diff if line[:1] in "-+" and line[:3] not in ("---", "+++")]


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


def run(names: list[str], out: Path, profile: str | None, inplace: bool, timeout: int | None,
        folder: Path | None = None, check: bool = False) -> int:
    """Execute the chosen notebooks one after the other; a failing notebook does not stop the
    rest. Writes the static site to `out`/site. With `check`, each notebook runs in the
    profile it was stored with (unless `profile` is given) and every printed line that differs
    from the stored notebook is listed. Prints a summary table; returns 1 if any notebook
    failed or differed, else 0."""
    import nbformat

    from labkit.cli.site import build_site

    notebooks = find_notebooks(names, folder or NOTEBOOK_DIR)
    mode = "checking against the stored outputs" if check else f"profile={profile}"
    print(f"labkit reproduce: {len(notebooks)} notebooks, {mode}", flush=True)
    rows, written = [], []
    for path in notebooks:
        stored = nbformat.read(path, as_version=4)
        run_profile = profile or stored_profile(stored)
        target = path if inplace and not check else out / "notebooks" / path.name
        started = time.perf_counter()
        try:
            notebook, seconds = execute(path, target, run_profile,
                                        timeout or default_timeout(run_profile))
            status = "ok"
        except Exception as error:  # noqa: BLE001 - reported in the table, the others still run
            notebook, seconds, status = None, time.perf_counter() - started, f"FAILED ({_failure(error)})"
        if notebook is not None and check:
            differences = printed_differences(stored, notebook)
            if differences:
                status = f"DIFFERS ({len(differences)} printed lines)"
                print(f"  {path.name}: printed lines that differ from the stored notebook:\n    "
                      + "\n    ".join(differences), flush=True)
        figures = save_figures(notebook, out / "figures" / path.stem) if notebook and not inplace else 0
        rows.append(dict(notebook=path.name, profile=run_profile, seconds=seconds, figures=figures,
                         status=status))
        written.append((target, status))
        print(f"  {path.name}: {seconds:6.1f} s, {status} -> {target}", flush=True)
    print("\n" + summary_table(rows), flush=True)
    index = build_site(written, out / "site", profile or "stored")
    print(f"\nThe static site (no kernel, no network needed): {index}", flush=True)
    bad = [row["notebook"] for row in rows if row["status"] != "ok"]
    if not inplace:
        print(f"Executed notebooks and figures are in {out}/. Explore them interactively with:\n"
              f"  labkit lab  (a working copy of the notebooks; the stored ones stay as they are)")
    if bad:
        verb = "FAILED or DIFFER" if check else "FAILED"
        print(f"\n{len(bad)} of {len(rows)} notebooks {verb}: {', '.join(bad)}", flush=True)
        return 1
    if check:
        print("\nEvery printed line matches the stored notebooks (timings excepted).", flush=True)
    return 0
